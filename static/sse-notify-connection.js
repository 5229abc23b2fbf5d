/**
 * sse-notify-connection.js: one live connection to the service that never loses a
 * notification. Part of the sse-notify browser client (see sse-notify.js).
 *
 * A Connection holds one stream, Server-Sent Events (`GET /events`) or WebSocket
 * (`GET /ws`), wherever the shared connection lives: in the SharedWorker, in the leader tab,
 * or in the page itself. It owns:
 * - the cursor: the last id seen. Every (re)connect resumes from it and anything at or
 *   below it is dropped, so nothing is missed and nothing is passed on twice;
 * - reconnecting: the browser's own EventSource reconnect is let run once when it would
 *   resume from our cursor; when it gives up (a non-200 answer, the network down, no
 *   `hello` in time) the Connection asks the API what went wrong and retries itself with
 *   capped exponential backoff and jitter;
 * - tokens: on 401, and when the server warns `token-expiring`, it asks its host for a
 *   fresh token, then reconnects with it and the cursor;
 * - the transport: with `transport: "auto"` it uses WebSocket where EventSource is missing,
 *   and switches to it when event streams fail twice in a row while the plain API answers
 *   (something on the way blocks or buffers them).
 *
 * It reports to `host.emit(kind, data)`: "notification", "read" ({ids}), "unread" (count),
 * "reset" (the server's history is not the one the cursor came from) and "status".
 */

const BACKOFF = { initial: 1000, max: 30000, factor: 2 };
const HELLO_TIMEOUT = 10000; // connected, but no hello: something in between buffers or blocks
const PROBE_TIMEOUT = 10000;

/** The wait before retry number `attempt` (from 0): capped exponential backoff with
 * "equal jitter", half fixed and half random, so many clients do not retry in step. */
export function backoffDelay(attempt, backoff) {
  const { initial, max, factor } = { ...BACKOFF, ...backoff };
  const ceiling = Math.min(max, initial * factor ** attempt);
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

export class Connection {
  /**
   * `config`: {url (service base URL ending in "/"), token, topics (array), transport
   * ("auto" | "sse" | "ws"), withCredentials, backoff ({initial, max, factor} in ms), cursor}.
   * `host`: {emit(kind, data), getToken(reason) -> promise of a token or null}.
   */
  constructor(config, host) {
    this.config = config;
    this.host = host;
    this.auto = !["sse", "ws"].includes(config.transport);
    this.kind = this.auto ? (typeof EventSource === "function" ? "sse" : "ws") : config.transport;
    this.token = config.token || null;
    this.cursor = config.cursor ?? null;
    this.unread = null;
    this.helloNewest = 0; // ids up to this one were counted in hello.unread
    this.gen = 0; // bumped per connection attempt: callbacks of an older one do nothing
    this.attempt = 0; // failed attempts since the last hello
    this.strikes = 0; // stream failures while the plain API answered
    this.conn = null;
    this.closed = false;
    this.current = { state: "connecting", error: null, retryIn: null, user: null, replay: null };
    this.onOnline = () => { if (this.retryTimer) this.open(); };
  }

  start() {
    globalThis.addEventListener?.("online", this.onOnline);
    this.open();
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.teardown();
    globalThis.removeEventListener?.("online", this.onOnline);
    this.setStatus({ state: "closed", retryIn: null });
  }

  /** Where things stand, for a tab that joins later. */
  get status() {
    return { ...this.current, transport: this.kind, attempt: this.attempt, cursor: this.cursor, unread: this.unread };
  }

  /** A token from a tab that joined: used only when stuck without a valid one. */
  offerToken(token) {
    if (!token || token === this.token || this.closed || this.current.state !== "unauthorized") return;
    this.token = token;
    this.open();
  }

  setStatus(patch) {
    this.current = { ...this.current, ...patch };
    this.host.emit("status", this.status);
  }

  teardown() {
    this.gen++;
    clearTimeout(this.retryTimer);
    clearTimeout(this.helloTimer);
    clearTimeout(this.refreshTimer);
    this.retryTimer = this.helloTimer = this.refreshTimer = null;
    this.conn?.close();
    this.conn = null;
  }

  /** Connect now, with the current token and cursor. */
  open() {
    if (this.closed) return;
    this.teardown();
    const gen = this.gen;
    this.setStatus({ state: "connecting", retryIn: null });
    try {
      if (this.kind === "ws") this.openWebSocket(gen);
      else this.openEventSource(gen);
    } catch (err) { // the constructor refused the URL (CSP, mixed content)
      this.fail(gen, "cannot connect: " + err.message);
      return;
    }
    this.awaitHello(gen);
  }

  awaitHello(gen) {
    clearTimeout(this.helloTimer);
    this.helloTimer = setTimeout(() => this.fail(gen, "no hello from the server"), HELLO_TIMEOUT);
  }

  openEventSource(gen) {
    const url = new URL("events", this.config.url);
    if (this.token) url.searchParams.set("token", this.token);
    if (this.cursor !== null) url.searchParams.set("last_event_id", String(this.cursor));
    if (this.config.topics.length) url.searchParams.set("topics", this.config.topics.join(","));
    const es = new EventSource(url, { withCredentials: !!this.config.withCredentials });
    this.conn = es;
    // The browser's own reconnect resumes from the last id this EventSource saw (its
    // Last-Event-ID), else from the cursor in its URL.
    let resumesFrom = this.cursor;
    let healthy = false; // a hello arrived since the last error
    const on = (name, handle) => es.addEventListener(name, (ev) => {
      if (gen !== this.gen) return;
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      handle(data, ev);
    });
    on("hello", (hello) => { healthy = true; this.onHello(hello); });
    on("notification", (n, ev) => { resumesFrom = Number(ev.lastEventId); this.onNotification(n); });
    on("read", (data) => this.onRead(data.ids));
    on("token-expiring", (data) => this.onExpiring(data.expires_at));
    es.onerror = () => {
      if (gen !== this.gen) return;
      if (es.readyState === EventSource.CONNECTING && healthy && resumesFrom === this.cursor) {
        healthy = false; // let the browser reconnect, once: it resumes from our cursor
        this.setStatus({ state: "reconnecting", retryIn: null, error: "connection lost" });
        this.awaitHello(gen);
        return;
      }
      this.fail(gen, "connection lost");
    };
  }

  openWebSocket(gen) {
    const url = new URL("ws", this.config.url);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    if (this.config.topics.length) url.searchParams.set("topics", this.config.topics.join(","));
    const ws = new WebSocket(url);
    this.conn = ws;
    let authed = false;
    ws.onopen = () => {
      if (gen !== this.gen) return;
      // The token goes in the first frame rather than the URL, out of URL logs.
      const auth = { type: "auth", token: this.token || "" };
      if (this.cursor !== null) auth.last_event_id = this.cursor;
      ws.send(JSON.stringify(auth));
    };
    ws.onmessage = (ev) => {
      if (gen !== this.gen) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      const { type, ...fields } = msg;
      if (type === "auth_success") { authed = true; this.onHello(fields); }
      else if (type === "notification") this.onNotification(fields);
      else if (type === "read") this.onRead(fields.ids);
      else if (type === "token-expiring") this.onExpiring(fields.expires_at);
    };
    ws.onclose = (ev) => {
      if (gen !== this.gen) return;
      if (ev.code === 4401) this.unauthorized();
      else if (authed) { // it worked: retry (at once after a slow-consumer close, 1013)
        this.teardown();
        this.retry(ev.code === 1013 ? 0 : this.nextDelay(), "connection lost");
      } else this.fail(gen, `websocket closed (${ev.code})`);
    };
  }

  onHello(hello) {
    clearTimeout(this.helloTimer);
    this.attempt = 0;
    this.strikes = 0;
    if (hello.replay === "reset" && this.cursor !== null && hello.newest_id < this.cursor) {
      this.cursor = null; // a history our cursor is not from (a new data dir): all is new
      this.host.emit("reset");
    } else if (hello.replay === "live" && (this.cursor === null || hello.newest_id > this.cursor)) {
      this.cursor = hello.newest_id; // so the next connect resumes from here
    }
    this.unread = hello.unread;
    this.helloNewest = hello.newest_id;
    this.setStatus({ state: "open", user: hello.user, replay: hello.replay, retryIn: null, error: null });
    this.host.emit("unread", this.unread);
  }

  onNotification(n) {
    if (typeof n.id !== "number" || (this.cursor !== null && n.id <= this.cursor)) return;
    this.cursor = n.id;
    this.host.emit("notification", n);
    if (n.id > this.helloNewest && !n.read && this.unread !== null) this.host.emit("unread", ++this.unread);
  }

  onRead(ids) {
    ids = Array.isArray(ids) ? ids : [];
    this.unread = Math.max(0, (this.unread ?? 0) - ids.length);
    this.host.emit("read", { ids });
    this.host.emit("unread", this.unread);
  }

  /**
   * The server ends the stream when its token expires, and warns up to a minute ahead (at
   * once when less remains). Halfway to expiry, get a fresh token and move over to it with
   * the cursor. Not at once: tokens that live under a minute would reconnect in a loop.
   */
  onExpiring(expiresAt) {
    const remaining = Math.min(Math.max(Date.parse(expiresAt) - Date.now(), 0), 60000) || 0;
    const gen = this.gen;
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(async () => {
      const old = this.token;
      const fresh = await this.refresh("expiring").catch(() => null); // else the 401 path tries again
      if (gen === this.gen && !this.closed && fresh && fresh !== old) this.open();
    }, remaining / 2);
  }

  /** The stream failed: find out why from the plain API, then retry with backoff. */
  async fail(gen, reason) {
    if (gen !== this.gen || this.closed) return;
    this.teardown();
    const mine = this.gen;
    this.setStatus({ state: "reconnecting", retryIn: null, error: reason });
    const status = await this.probe(); // EventSource never shows the status code
    if (mine !== this.gen || this.closed) return;
    if (status === 401) {
      this.unauthorized();
      return;
    }
    if (status >= 200 && status < 300 && ++this.strikes >= 2 && this.auto) {
      const other = this.kind === "sse" ? "ws" : "sse";
      if (other === "ws" ? typeof WebSocket === "function" : typeof EventSource === "function") {
        this.kind = other; // the API answers, the streams do not: try the other transport
        this.strikes = 0;
      }
    }
    this.retry(this.nextDelay(), status ? `HTTP ${status}` : "network error");
  }

  async unauthorized() {
    this.teardown();
    const mine = this.gen;
    this.setStatus({ state: "reconnecting", retryIn: null, error: "unauthorized" });
    const old = this.token;
    let fresh;
    try {
      fresh = await this.refresh("unauthorized");
    } catch { // getToken failed (its backend down?): try again later
      if (mine === this.gen && !this.closed) this.retry(this.nextDelay(), "getToken failed");
      return;
    }
    if (mine !== this.gen || this.closed) return;
    if (!fresh || fresh === old) this.setStatus({ state: "unauthorized", retryIn: null, error: "no valid token" });
    else this.retry(this.attempt === 0 ? 0 : this.nextDelay(), "token refreshed");
  }

  retry(delay, reason) {
    this.attempt++;
    this.setStatus({ state: "reconnecting", retryIn: delay, error: reason });
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  nextDelay() {
    return backoffDelay(this.attempt, this.config.backoff);
  }

  /** The HTTP status of a plain API call with the same credentials; 0 if none came. */
  async probe() {
    try {
      const resp = await fetch(new URL("notifications?limit=1", this.config.url), {
        headers: this.token ? { Authorization: "Bearer " + this.token } : {},
        credentials: this.config.withCredentials ? "include" : "same-origin",
        cache: "no-store",
        signal: AbortSignal.timeout(PROBE_TIMEOUT),
      });
      return resp.status;
    } catch {
      return 0; // network error, or refused by CORS
    }
  }

  /** A fresh token from the host, now in use; null when none came. */
  async refresh(reason) {
    const token = await this.host.getToken(reason);
    if (typeof token !== "string" || !token) return null;
    this.token = token;
    return token;
  }
}
