// The demo inbox at "/", and the example to copy: everything live comes through
// sse-notify.js (connect, on, history, markRead). The publisher half (minting tokens,
// sending) is plain fetch with a publisher token, which a real app keeps on its backend.
// The Sent list follows the receipts of what this page published (GET
// /notifications/<id>/status), polling once a second while any of them is unread.
// Each message shows beside the control it is about (say(where, ...)), and the words
// name panels, never positions: the panels stack on a narrow screen.
import { connect } from "./sse-notify.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "sse-notify-demo:token"; // localStorage: every tab of the demo uses it
const MINTED_KEY = "sse-notify-demo:minted-for"; // set when the token was minted here
const PUBLISHER_KEY = "sse-notify-demo:publisher"; // sessionStorage: this tab only
const STATES = {
  connecting: "connecting…", open: "live", reconnecting: "reconnecting…",
  unauthorized: "token refused", closed: "not connected",
};
const REFUSED = "Token refused: expired, or signed with another secret. "
  + "Get a fresh one with sse-notify token USER and the server's --data-dir.";
const EMPTY = {
  idle: "Not connected. Connect with a subscriber token, or mint one under Publisher.",
  refused: "Not connected: the token was refused (see Connect).",
  connected: "No notifications yet.",
};
const MODES = { worker: "shared worker", leader: "leader tab", follower: "via leader tab", direct: "this tab" };

let client = null;
let user = null;
let nextBefore = null;
let refused = false; // the server turned this client's token down
const items = new Map(); // id -> <li>

// -- the connection --------------------------------------------------------------------

function start(token) {
  stop();
  const mintedFor = remember(localStorage, MINTED_KEY);
  client = connect({
    token,
    // A token minted on this page can be minted again when it expires.
    getToken: mintedFor ? () => mintAndKeep(mintedFor) : undefined,
    transport: $("transport").value,
  });
  client.on("status", showStatus);
  client.on("unread", showUnread);
  client.on("notification", (n) => { add(n, true); showEmpty(); });
  client.on("read", ({ ids }) => ids.forEach((id) => items.get(id)?.classList.add("read")));
  loadHistory();
}

function stop() {
  client?.close();
  client = user = nextBefore = null;
  refused = false;
  say("connect-msg", "");
  say("inbox-msg", "");
  items.clear();
  $("inbox").replaceChildren();
  $("older").hidden = true;
  $("mark-all").disabled = true;
  $("who").textContent = "";
  showStatus({ state: "closed" });
  showUnread(0);
  showEmpty();
}

async function loadHistory(before) {
  const current = client;
  try {
    const page = await current.history({ limit: 20, before });
    if (current !== client) return;
    page.notifications.forEach((n) => add(n, false));
    nextBefore = page.next_before;
    $("older").hidden = nextBefore === null;
  } catch (err) {
    if (current !== client) return;
    if (err.status === 401) refuse();
    else say("inbox-msg", `History: ${err.message}`, true);
  }
  showEmpty();
}

function refuse() {
  refused = true;
  say("connect-msg", REFUSED, true);
  showEmpty();
}

function showStatus(s) {
  $("status").dataset.state = s.state;
  if (s.state === "unauthorized") refuse();
  if (s.state === "open" && refused) { refused = false; say("connect-msg", ""); showEmpty(); }
  let text = STATES[s.state] ?? s.state;
  if (s.state === "reconnecting" && s.retryIn != null) text = `reconnecting in ${(s.retryIn / 1000).toFixed(1)} s`;
  if (s.state === "reconnecting" && s.error) text += ` (${s.error})`;
  const how = [s.transport && (s.transport === "ws" ? "WebSocket" : "SSE"), MODES[s.mode]].filter(Boolean);
  $("status-text").textContent = how.length && s.state !== "closed" ? `${text} · ${how.join(", ")}` : text;
  $("mark-all").disabled = s.state !== "open";
  if (s.user && s.user !== user) {
    user = s.user;
    $("who").textContent = `for ${user}`;
    $("send-user").placeholder = `to user (default: ${user})`;
  }
  if (s.state === "open" && s.replay === "reset") loadHistory(); // retention outran the cursor
}

function showUnread(count) {
  $("unread").textContent = count > 99 ? "99+" : String(count);
  $("unread").dataset.count = String(count);
  document.title = count ? `(${count}) sse-notify demo` : "sse-notify demo";
}

function showEmpty() {
  $("inbox-empty").hidden = items.size > 0;
  $("inbox-empty").textContent = EMPTY[!client ? "idle" : refused ? "refused" : "connected"];
}

// -- the inbox -------------------------------------------------------------------------

function add(n, live) {
  if (items.has(n.id)) return;
  const li = $("item-tpl").content.firstElementChild.cloneNode(true);
  li.dataset.id = n.id;
  li.classList.toggle("read", n.read);
  li.classList.toggle("fresh", live);
  li.querySelector(".prio").dataset.p = li.querySelector(".prio").title = n.priority;
  li.querySelector(".title").textContent = n.title; // textContent only: no HTML injection
  li.querySelector(".body").textContent = n.body ?? "";
  li.querySelector(".topic").textContent = n.topic ?? "";
  li.querySelector("time").dateTime = n.created_at;
  li.querySelector("time").textContent = new Date(n.created_at).toLocaleString();
  li.querySelector(".read-btn").addEventListener("click", () => {
    client?.markRead(n.id).catch((err) => say("inbox-msg", `Mark read: ${err.message}`, true));
  });
  items.set(n.id, li);
  const older = [...$("inbox").children].find((el) => Number(el.dataset.id) < n.id); // newest first
  $("inbox").insertBefore(li, older ?? null);
}

// -- the publisher half ----------------------------------------------------------------

/** POST `body` as JSON (or GET, with no body) with the publisher token; errors carry `status`. */
async function publisherFetch(path, body) {
  const token = $("pub-token").value.trim();
  if (!token) throw new Error("paste a publisher token first");
  const resp = await fetch(path, body === undefined ? { headers: { Authorization: `Bearer ${token}` } } : {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({})); // a proxy's error page is not JSON
  if (!resp.ok) throw Object.assign(new Error(data.message || `HTTP ${resp.status}`), { status: resp.status });
  return data;
}

async function mintAndKeep(forUser) {
  const { token } = await publisherFetch("tokens", { user: forUser, ttl: Number($("mint-ttl").value) || 3600 });
  $("token").value = token;
  remember(localStorage, TOKEN_KEY, token);
  return token;
}

// -- the Sent list: receipts of what this page published ----------------------------------

const SENT_MAX = 5;
const POLL_MS = 1000;
const sent = []; // newest first: { id, to, li, done }; done: read, or gone from the server
let pollTimer = null; // the one pending poll
let polling = false; // a poll's requests are in flight
let pollRefused = false; // the publisher token was refused: wait until it is edited

function track(id, to) {
  const li = $("sent-tpl").content.firstElementChild.cloneNode(true);
  li.dataset.id = id;
  li.querySelector(".sent-id").textContent = `#${id}`;
  li.querySelector(".sent-to").textContent = to;
  const entry = { id, to, li, done: false };
  sent.unshift(entry);
  sent.splice(SENT_MAX).forEach((old) => old.li.remove());
  $("sent").prepend(li);
  $("sent-box").hidden = false;
  showReceipt(entry, null);
  pollSoon();
}

/** Show `receipt` ({delivered_at, read_at}, or null for none yet) on the entry. */
function showReceipt(entry, receipt) {
  const { delivered_at: delivered = null, read_at: read = null } = receipt ?? {};
  entry.done = read !== null;
  entry.li.dataset.state = read ? "read" : delivered ? "delivered" : "sent";
  const parts = [["delivered", delivered], ["read", read]].filter(([, at]) => at).map(([word, at]) => {
    const span = document.createElement("span");
    const time = document.createElement("time");
    time.dateTime = at;
    time.textContent = new Date(at).toLocaleTimeString();
    time.title = new Date(at).toLocaleString();
    span.append(`${word} `, time);
    return span;
  });
  const state = parts.length ? parts.flatMap((part, i) => (i ? [", ", part] : [part])) : ["sent"];
  entry.li.querySelector(".sent-state").replaceChildren(...state);
}

/** Poll in a second if anything is unread and there is a token to ask with; else stop. */
function pollSoon() {
  const go = sent.some((e) => !e.done) && $("pub-token").value.trim() !== "" && !pollRefused;
  $("sent").dataset.polling = String(go);
  if (!go) {
    clearTimeout(pollTimer);
    pollTimer = null;
  } else if (pollTimer === null && !polling) {
    pollTimer = setTimeout(poll, POLL_MS);
  }
}

async function poll() {
  pollTimer = null;
  polling = true;
  const errors = [];
  await Promise.all(sent.filter((e) => !e.done).map(async (entry) => {
    try {
      const status = await publisherFetch(`notifications/${entry.id}/status`);
      showReceipt(entry, status.users?.[entry.to] ?? null);
    } catch (err) {
      if (err.status === 401) pollRefused = true;
      if (err.status === 404) { // removed by retention: it will not come back
        entry.done = true;
        entry.li.dataset.state = "gone";
        entry.li.querySelector(".sent-state").textContent = "gone";
      }
      errors.push(`#${entry.id}: ${err.message}`);
    }
  }));
  polling = false;
  say("sent-msg", errors.length ? `Status ${errors.join("; ")}` : "", errors.length > 0);
  pollSoon();
}

/** Show `text` in the message line `where`, beside the control it is about. */
function say(where, text, isError = false) {
  $(where).textContent = text;
  $(where).classList.toggle("error", isError);
}

/** Read `key` (no value given), or store it (null removes it); storage may be disabled. */
function remember(area, key, value) {
  try {
    if (value === undefined) return area.getItem(key);
    if (value === null) area.removeItem(key);
    else area.setItem(key, value);
  } catch { /* storage disabled: nothing is remembered */ }
  return null;
}

// -- wiring ----------------------------------------------------------------------------

$("connect-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  remember(localStorage, TOKEN_KEY, token);
  remember(localStorage, MINTED_KEY, null);
  start(token);
});

$("disconnect").addEventListener("click", stop);

$("mark-all").addEventListener("click", () => {
  client?.markRead("all").catch((err) => say("inbox-msg", `Mark all read: ${err.message}`, true));
});

$("older").addEventListener("click", () => loadHistory(nextBefore));

$("pub-token").addEventListener("change", () => {
  remember(sessionStorage, PUBLISHER_KEY, $("pub-token").value.trim() || null);
});

$("pub-token").addEventListener("input", () => {
  pollRefused = false; // another token may be accepted
  pollSoon();
});

$("mint-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const forUser = $("mint-user").value.trim();
  try {
    const token = await mintAndKeep(forUser);
    remember(localStorage, MINTED_KEY, forUser);
    say("mint-msg", `Minted a token for ${forUser}.`);
    start(token);
  } catch (err) {
    say("mint-msg", `Mint: ${err.message}`, true);
  }
});

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const to = $("send-user").value.trim() || user;
  if (!to) { say("send-msg", "Send: connect first, or name a recipient.", true); return; }
  const body = { user: to, title: $("send-title").value, priority: $("send-priority").value };
  if ($("send-body").value.trim()) body.body = $("send-body").value.trim();
  if ($("send-topic").value.trim()) body.topic = $("send-topic").value.trim();
  try {
    const { ids } = await publisherFetch("notifications", body);
    say("send-msg", `Sent #${ids[0]} to ${to}.`);
    track(ids[0], to);
  } catch (err) {
    say("send-msg", `Send: ${err.message}`, true);
  }
});

// A token may come in the URL fragment (/#token=...), which never reaches a server log.
const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
if (fromHash) {
  remember(localStorage, TOKEN_KEY, fromHash);
  remember(localStorage, MINTED_KEY, null);
  history.replaceState(null, "", location.pathname + location.search);
}
$("pub-token").value = remember(sessionStorage, PUBLISHER_KEY) ?? "";
const saved = remember(localStorage, TOKEN_KEY);
if (saved) {
  $("token").value = saved;
  start(saved);
} else {
  stop();
}
