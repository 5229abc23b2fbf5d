/**
 * sse-notify-worker.js: the SharedWorker of the sse-notify browser client (started by
 * sse-notify-share.js; keep it next to sse-notify.js).
 *
 * Every tab of this origin attaches its port with a key (service URL, user, topics,
 * transport). Per key there is one Connection, started with the config of the first tab and
 * relayed to every port of that key, so twenty tabs cost one connection. A tab that attaches
 * later gets the current status at once. When the Connection needs a fresh token, it asks
 * the tabs that have a `getToken`, newest first, one at a time. The Connection closes when
 * its last tab detaches.
 */

import { Connection } from "./sse-notify-connection.js";

const TOKEN_ANSWER_TIMEOUT = 10000;

const groups = new Map(); // key -> {connection, ports: Map<MessagePort, {canRefresh}>}
const pending = new Map(); // token request id -> resolve
let seq = 0;

function send(port, msg) {
  try { port.postMessage(msg); } catch { /* the tab is gone */ }
}

async function askTabs(group, reason) {
  const ports = [...group.ports].filter(([, tab]) => tab.canRefresh).map(([port]) => port).reverse();
  let failure = null;
  for (const port of ports) {
    const id = ++seq;
    const answer = await new Promise((resolve) => {
      pending.set(id, resolve);
      send(port, { type: "token-request", id, reason });
      setTimeout(() => resolve({}), TOKEN_ANSWER_TIMEOUT); // a frozen or closed tab
    });
    pending.delete(id);
    if (answer.token) return answer.token;
    failure = answer.error ?? failure;
  }
  if (failure) throw new Error(failure);
  return null;
}

function attach(port, { key, config, canRefresh }) {
  let group = groups.get(key);
  if (group) {
    group.ports.set(port, { canRefresh });
    send(port, { type: "event", kind: "status", data: group.connection.status });
    group.connection.offerToken(config.token);
    return;
  }
  group = { ports: new Map([[port, { canRefresh }]]) };
  group.connection = new Connection(config, {
    emit: (kind, data) => {
      for (const p of group.ports.keys()) send(p, { type: "event", kind, data });
    },
    getToken: (reason) => askTabs(group, reason),
  });
  groups.set(key, group);
  group.connection.start();
}

function detach(port) {
  for (const [key, group] of groups) {
    if (group.ports.delete(port) && group.ports.size === 0) {
      groups.delete(key);
      group.connection.close();
    }
  }
}

self.onconnect = (ev) => {
  const port = ev.ports[0];
  port.onmessage = ({ data: msg }) => {
    if (msg.type === "attach") attach(port, msg);
    else if (msg.type === "detach") detach(port);
    else if (msg.type === "token") pending.get(msg.id)?.(msg);
  };
  port.onclose = () => detach(port); // where MessagePort has a close event
};
