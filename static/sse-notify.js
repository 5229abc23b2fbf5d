/**
 * sse-notify.js: the browser client of sse-notify, a dependency-free ES module.
 *
 *   import { connect } from "/static/sse-notify.js";
 *
 *   const inbox = connect({
 *     getToken: () => fetch("/my-app/notify-token").then((r) => r.text()),  // or token: "..."
 *     topics: ["billing"],          // optional filter
 *     transport: "auto",            // "auto" | "sse" | "ws"
 *   });
 *   inbox.on("notification", (n) => show(n));       // each notification once, in id order
 *   inbox.on("read", ({ ids }) => markShownAsRead(ids));
 *   inbox.on("unread", (count) => (badge.textContent = count));
 *   inbox.on("status", (s) => (dot.dataset.state = s.state));
 *
 * This module owns what the page sees: the listeners, the cursor kept in localStorage (so
 * it survives a reload), dedupe by id, the unread count, and the HTTP API helpers
 * (`history`, `markRead`). The connection itself is a Connection
 * (sse-notify-connection.js), shared by the tabs of this browser as sse-notify-share.js
 * and sse-notify-worker.js arrange. Keep the four files together.
 */

import { backoffDelay } from "./sse-notify-connection.js";
import { openLink } from "./sse-notify-share.js";

const KINDS = ["notification", "read", "unread", "status"];
const TOKEN_TIMEOUT = 30000;

/**
 * Open a notification stream. Options:
 * - `url`: the service's base URL; default: where this module is served from.
 * - `token`: a subscriber token, and/or `getToken({reason})` returning a token (or a
 *   promise of one; `reason` is "initial", "expiring" or "unauthorized"). With neither, the
 *   `sse_notify_token` cookie is used (over SSE; set `withCredentials` cross-origin).
 * - `topics`: an array (or comma-separated string) of topics to filter on.
 * - `transport`: "auto" (default: SSE, WebSocket where EventSource is missing or blocked),
 *   "sse" or "ws".
 * - `shared`: false for one connection per tab instead of one per browser.
 * - `withCredentials`: send cookies cross-origin.
 * - `backoff`: `{initial, max, factor}` in ms; default `{1000, 30000, 2}`.
 */
export function connect(options = {}) {
  return new Client(options);
}

class Client {
  constructor(options) {
    this.options = options;
    const base = options.url ? new URL(options.url, globalThis.location?.href) : new URL("..", import.meta.url);
    this.url = base.href.endsWith("/") ? base.href : base.href + "/";
    this.topics = normTopics(options.topics);
    this.transport = options.transport || "auto";
    this.canRefresh = typeof options.getToken === "function";
    this.token = options.token || null;
    this.handlers = Object.fromEntries(KINDS.map((kind) => [kind, new Set()]));
    this.status = null;
    this.unread = null;
    this.lastId = null;
    this.link = null;
    this.closed = false;
    this.refreshing = null;
    this.onPageHide = () => this.stopLink();
    this.onPageShow = (ev) => { if (ev.persisted && this.key) this.startLink(); };
    globalThis.addEventListener?.("pagehide", this.onPageHide);
    globalThis.addEventListener?.("pageshow", this.onPageShow);
    this.init(0);
  }

  /** `on(kind, fn)`: "notification", "read", "unread" or "status"; returns an unsubscribe. */
  on(kind, fn) {
    if (!this.handlers[kind]) throw new Error("unknown event: " + kind);
    this.handlers[kind].add(fn);
    const now = kind === "status" ? this.status : kind === "unread" ? this.unread : null;
    if (now !== null) queueMicrotask(() => this.handlers[kind].has(fn) && fn(now)); // where things stand
    return () => this.handlers[kind].delete(fn);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.stopLink();
    clearTimeout(this.initTimer);
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    globalThis.removeEventListener?.("pageshow", this.onPageShow);
    this.report({ ...this.status, state: "closed", retryIn: null });
  }

  /** The last notification id seen: where the next connect resumes. */
  get cursor() {
    return this.lastId;
  }

  /** `GET /notifications`: `{notifications, next_before}`; params: limit, before, unread. */
  history(params = {}) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) if (value != null) query.set(name, String(value));
    return this.request("GET", "notifications?" + query);
  }

  /** Mark read: one id, an array of ids, or "all". */
  markRead(what) {
    if (what === "all") return this.request("POST", "notifications/read", { all: true });
    if (Array.isArray(what)) return this.request("POST", "notifications/read", { ids: what });
    return this.request("POST", `notifications/${encodeURIComponent(what)}/read`);
  }

  /** An API call with the token; on 401 once more with a fresh one from getToken. */
  async request(method, path, body) {
    const send = () => fetch(this.url + path, {
      method,
      headers: {
        ...(this.token ? { Authorization: "Bearer " + this.token } : {}),
        ...(body === undefined ? {} : { "Content-Type": "application/json" }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: this.options.withCredentials ? "include" : "same-origin",
    });
    const old = this.token;
    let resp = await send();
    if (resp.status === 401 && this.canRefresh) {
      const fresh = await this.freshToken("unauthorized");
      if (fresh && fresh !== old) resp = await send();
    }
    let data = null;
    try { data = JSON.parse(await resp.text()); } catch { /* empty (204), or not JSON (a proxy's page) */ }
    if (!resp.ok) {
      throw Object.assign(new Error(data?.message || "HTTP " + resp.status), { status: resp.status, body: data });
    }
    return data;
  }

  // -- internals, used by the links in sse-notify-share.js ---------------------------------

  /** Get a token if needed, work out the sharing key, load the cursor, connect. */
  async init(attempt) {
    if (!this.token && this.canRefresh) {
      try {
        await this.freshToken("initial");
      } catch (err) { // the app's token endpoint failed: try again, backing off
        const delay = backoffDelay(attempt, this.options.backoff);
        this.report({ state: "reconnecting", error: "getToken failed: " + err.message, retryIn: delay });
        this.initTimer = setTimeout(() => this.init(attempt + 1), delay);
        return;
      }
    }
    const user = this.token ? (await userOf(this.token)) ?? "token:" + fnv1a(this.token) : "cookie";
    if (this.closed) return;
    this.key = JSON.stringify([this.url, user, this.topics, this.transport, !!this.options.withCredentials]);
    this.lastId = this.loadCursor();
    this.startLink();
  }

  connectionConfig() {
    const stored = this.loadCursor();
    return {
      url: this.url, token: this.token, topics: this.topics, transport: this.transport,
      withCredentials: !!this.options.withCredentials, backoff: this.options.backoff,
      cursor: stored === null || (this.lastId !== null && this.lastId > stored) ? this.lastId : stored,
    };
  }

  startLink() {
    this.stopLink();
    this.link = openLink(this);
    this.link.start();
  }

  /** A link that could not start hands over to the next best. */
  replaceLink(failed, next) {
    if (this.link !== failed || this.closed) return;
    this.link = next;
    next.start();
  }

  stopLink() {
    const link = this.link;
    this.link = null;
    link?.close();
  }

  /** Everything from the connection, however it is shared, comes through here. */
  deliver(kind, data, mode) {
    if (this.closed) return;
    if (kind === "notification") {
      if (this.lastId !== null && data.id <= this.lastId) return; // seen already
      this.setCursor(data.id);
      this.emit("notification", data);
    } else if (kind === "status") {
      const ahead = typeof data.cursor === "number" && (this.lastId === null || data.cursor > this.lastId);
      if (ahead) this.setCursor(data.cursor); // a hello without a cursor: resume from its newest id
      this.report({ ...data, mode });
      this.setUnread(data.unread);
    } else if (kind === "read") {
      this.emit("read", data);
    } else if (kind === "unread") {
      this.setUnread(data);
    } else if (kind === "reset") {
      this.setCursor(null);
    }
  }

  report(status) {
    this.status = status;
    this.emit("status", status);
  }

  setUnread(count) {
    if (typeof count !== "number" || count === this.unread) return;
    this.unread = count;
    this.emit("unread", count);
  }

  emit(kind, data) {
    for (const fn of this.handlers[kind]) {
      try { fn(data); } catch (err) { reportError(err); } // one failing listener does not stop the rest
    }
  }

  /** A token from getToken (one call at a time); null when there is none. */
  freshToken(reason) {
    if (!this.canRefresh) return Promise.resolve(null);
    this.refreshing ??= withTimeout(Promise.resolve().then(() => this.options.getToken({ reason })), TOKEN_TIMEOUT)
      .then((token) => {
        if (typeof token !== "string" || !token) return null;
        this.token = token;
        return token;
      })
      .finally(() => { this.refreshing = null; });
    return this.refreshing;
  }

  get storageKey() {
    return "sse-notify:cursor:" + this.key;
  }

  loadCursor() {
    try {
      const value = localStorage.getItem(this.storageKey);
      return value && /^[0-9]{1,15}$/.test(value) ? Number(value) : null;
    } catch {
      return this.lastId; // storage disabled: the cursor lives in memory only
    }
  }

  setCursor(id) {
    this.lastId = id;
    try {
      if (id === null) localStorage.removeItem(this.storageKey);
      else localStorage.setItem(this.storageKey, String(id));
    } catch { /* storage full or disabled */ }
  }
}

function normTopics(topics) {
  const list = typeof topics === "string" ? topics.split(",") : [...(topics || [])];
  return [...new Set(list.map((t) => String(t).trim()).filter(Boolean))].sort();
}

function fnv1a(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return (hash >>> 0).toString(16);
}

function withTimeout(promise, ms) {
  let timer;
  const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error("getToken timed out")), ms); });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * The user id inside a token (the base64url JSON payload of an itsdangerous token,
 * deflated when it starts with "."), only to tell which tabs may share a stream: the server
 * still checks every token. Null when it cannot be read: that tab then shares only with
 * tabs holding the very same token.
 */
async function userOf(token) {
  try {
    const deflated = token.startsWith(".");
    const b64 = (deflated ? token.slice(1) : token).split(".")[0].replace(/-/g, "+").replace(/_/g, "/");
    let bytes = Uint8Array.from(atob(b64 + "===".slice((b64.length + 3) % 4)), (ch) => ch.charCodeAt(0));
    if (deflated) {
      const inflated = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
      bytes = new Uint8Array(await new Response(inflated).arrayBuffer());
    }
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return typeof payload.u === "string" ? payload.u : null;
  } catch {
    return null;
  }
}
