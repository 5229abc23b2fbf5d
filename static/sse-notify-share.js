/**
 * sse-notify-share.js: how the tabs of one browser share one connection. Part of the
 * sse-notify browser client (see sse-notify.js).
 *
 * Tabs of the same origin that connect to the same service as the same user, with the same
 * topics and transport, share one key (made by sse-notify.js), and per key one Connection:
 * - WorkerLink: the Connection lives in a SharedWorker (sse-notify-worker.js) and every tab
 *   is one of its ports. When the worker cannot start (no module workers, the library
 *   loaded from another origin, the script blocked), the tab falls back to:
 * - LeaderLink: the tabs elect a leader with a Web Lock; the leader holds the Connection and
 *   relays it on a BroadcastChannel. The browser releases the lock when the leader tab goes,
 *   and the next waiting tab takes over, resuming from the shared cursor.
 * - DirectLink: one Connection per tab (`shared: false`, or neither of the above exists).
 *
 * A link passes everything to `client.deliver(kind, data, mode)`, where `mode` says where
 * the connection is: "worker", "leader", "follower" or "direct".
 */

import { Connection } from "./sse-notify-connection.js";

const TOKEN_ANSWER_TIMEOUT = 10000;

/** The best way to hold the connection for this client. */
export function openLink(client) {
  if (client.options.shared !== false) {
    if (typeof SharedWorker === "function") return new WorkerLink(client);
    if (canLead()) return new LeaderLink(client);
  }
  return new DirectLink(client);
}

function canLead() {
  return typeof BroadcastChannel === "function" && !!globalThis.navigator?.locks;
}

/** One connection for this tab alone. */
class DirectLink {
  constructor(client) {
    this.client = client;
  }

  start() {
    const c = this.client;
    this.connection = new Connection(c.connectionConfig(), {
      emit: (kind, data) => c.deliver(kind, data, "direct"),
      getToken: (reason) => c.freshToken(reason),
    });
    this.connection.start();
  }

  close() {
    this.connection?.close();
  }
}

/** The connection lives in a SharedWorker; this tab is one of its ports. */
class WorkerLink {
  constructor(client) {
    this.client = client;
  }

  start() {
    const c = this.client;
    let worker;
    try {
      worker = new SharedWorker(new URL("./sse-notify-worker.js", import.meta.url),
        { type: "module", name: "sse-notify" });
    } catch { // SecurityError: the library came from another origin than the page
      queueMicrotask(() => this.fallBack());
      return;
    }
    worker.onerror = () => this.fallBack(); // the script did not load
    this.port = worker.port;
    this.port.onmessage = (ev) => this.onMessage(ev.data);
    this.port.postMessage({ type: "attach", key: c.key, config: c.connectionConfig(), canRefresh: c.canRefresh });
  }

  fallBack() {
    if (this.closed) return;
    this.close();
    const c = this.client;
    c.replaceLink(this, canLead() ? new LeaderLink(c) : new DirectLink(c));
  }

  async onMessage(msg) {
    if (this.closed) return;
    if (msg.type === "event") {
      this.client.deliver(msg.kind, msg.data, "worker");
    } else if (msg.type === "token-request") {
      let answer;
      try { answer = { token: await this.client.freshToken(msg.reason) }; }
      catch (err) { answer = { error: String(err.message || err) }; }
      this.port?.postMessage({ type: "token", id: msg.id, ...answer });
    }
  }

  close() {
    this.closed = true;
    this.port?.postMessage({ type: "detach" });
    this.port?.close();
    this.port = null;
  }
}

/** Tabs share one connection over a BroadcastChannel, held by the tab with the Web Lock. */
class LeaderLink {
  constructor(client) {
    this.client = client;
    this.name = "sse-notify:" + client.key;
    this.id = crypto.randomUUID();
    this.pending = new Map(); // token request id -> resolve
    this.seq = 0;
  }

  start() {
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (ev) => this.onMessage(ev.data);
    this.abort = new AbortController();
    navigator.locks.request(this.name, { signal: this.abort.signal }, () => new Promise((release) => {
      this.release = release;
      if (this.closed) release();
      else this.lead();
    })).catch(() => { /* aborted: this tab closed while waiting */ });
    this.post({ type: "sync", token: this.client.token });
  }

  post(msg) {
    this.channel?.postMessage({ ...msg, from: this.id });
  }

  lead() {
    const c = this.client;
    const connection = new Connection(c.connectionConfig(), {
      emit: (kind, data) => {
        if (this.connection !== connection) return;
        c.deliver(kind, data, "leader");
        this.post({ type: "event", kind, data });
      },
      getToken: (reason) => (c.canRefresh ? c.freshToken(reason) : this.askFollowers(reason)),
    });
    this.connection = connection;
    connection.start();
  }

  askFollowers(reason) {
    const id = ++this.seq;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.post({ type: "token-request", id, reason });
      setTimeout(() => resolve(null), TOKEN_ANSWER_TIMEOUT);
    }).finally(() => this.pending.delete(id));
  }

  async onMessage(msg) {
    if (this.closed || msg.from === this.id) return;
    const c = this.client;
    const leading = !!this.connection;
    if (msg.type === "event" && !leading) {
      c.deliver(msg.kind, msg.data, "follower");
    } else if (msg.type === "sync" && leading) {
      this.post({ type: "event", kind: "status", data: this.connection.status });
      this.connection.offerToken(msg.token);
    } else if (msg.type === "token-request" && !leading && c.canRefresh) {
      const token = await c.freshToken(msg.reason).catch(() => null);
      if (token) this.post({ type: "token", id: msg.id, token });
    } else if (msg.type === "token" && leading) {
      this.pending.get(msg.id)?.(msg.token);
    }
  }

  close() {
    this.closed = true;
    const connection = this.connection;
    this.connection = null;
    connection?.close();
    this.release?.();
    this.abort.abort();
    for (const resolve of this.pending.values()) resolve(null);
    this.channel.close();
    this.channel = null;
  }
}
