'use strict';
// The benchmark's peer: what a user might run instead of sse-notify -- a plain Node
// server (node:http for SSE, the `ws` package for WebSocket) speaking the same wire
// surface that the load client uses:
//
//   GET  /events?token=T[&last_event_id=N]   SSE: retry, hello, replay, live notifications
//   GET  /ws?token=T[&last_event_id=N]       WebSocket: auth_success, replay, live
//   POST /notifications (Bearer publisher)   {"user"|"users"|"broadcast", "title", "data"},
//                                            or an array of them (bulk: one commit)
//
// Same tokens (itsdangerous URLSafeTimedSerializer, HMAC-SHA1, verified here), same frames.
// A publish is answered 201 only after it is durable: publishes are group-committed as
// JSON lines appended to <data-dir>/peer-log.jsonl and fdatasync'ed, one sync per batch.
// Fan-out and replay are served from memory (the log is the durability, not the index).
// Not a product: no history API, no read state, no retention, no topics.

const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const crypto = require('node:crypto');
const zlib = require('node:zlib');
const { WebSocketServer } = require('ws');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

const HOST = arg('--host', '127.0.0.1');
const PORT = Number(arg('--port', '8100'));
const DATA_DIR = arg('--data-dir', './peer-data');
const HEARTBEAT_MS = Number(arg('--heartbeat', '15')) * 1000;
const MAX_BODY = 65536;
const MAX_PENDING_BYTES = 8 * 1024 * 1024; // a stream this far behind is closed

fs.mkdirSync(DATA_DIR, { recursive: true });
let SECRET = process.env.SSE_NOTIFY_SECRET;
if (!SECRET) {
  const file = path.join(DATA_DIR, 'secret.key');
  if (!fs.existsSync(file)) fs.writeFileSync(file, crypto.randomBytes(32).toString('base64url'), { mode: 0o600 });
  SECRET = fs.readFileSync(file, 'utf8').trim();
}

// -- tokens: itsdangerous URLSafeTimedSerializer ---------------------------------------
const KEYS = {
  subscriber: crypto.createHash('sha1').update('sse-notify.subscriber.v1signer' + SECRET).digest(),
  publisher: crypto.createHash('sha1').update('sse-notify.publisher.v1signer' + SECRET).digest(),
};

function verify(token, kind) {
  if (!token || token.length > 4096) return null;
  const dot = token.lastIndexOf('.');
  if (dot < 0) return null;
  const value = token.slice(0, dot);
  const sig = Buffer.from(token.slice(dot + 1), 'base64url');
  const expect = crypto.createHmac('sha1', KEYS[kind]).update(value).digest();
  if (sig.length !== expect.length || !crypto.timingSafeEqual(sig, expect)) return null;
  const payload = value.slice(0, value.lastIndexOf('.'));
  try {
    const raw = payload.startsWith('.')
      ? zlib.inflateSync(Buffer.from(payload.slice(1), 'base64url'))
      : Buffer.from(payload, 'base64url');
    const claims = JSON.parse(raw);
    if (typeof claims.u !== 'string') return null;
    if (claims.e != null && claims.e <= Date.now() / 1000) return null;
    return claims.u;
  } catch {
    return null;
  }
}

// -- storage: memory index + group-committed durable log -------------------------------
const log = []; // notifications in id order; id = index + 1
const newestFor = new Map(); // user -> newest own id
let newestBroadcast = 0;
const logFd = fs.openSync(path.join(DATA_DIR, 'peer-log.jsonl'), 'a');
let pending = []; // [{drafts, done(ids)}]
let flushing = false;

function commit(drafts, done) {
  pending.push({ drafts, done });
  if (!flushing) flush();
}

function flush() {
  if (pending.length === 0) { flushing = false; return; }
  flushing = true;
  const batch = pending; pending = [];
  const now = new Date().toISOString();
  const lines = [];
  const committed = [];
  for (const job of batch) {
    job.ids = [];
    for (const d of job.drafts) {
      const id = log.length + committed.length + 1;
      const n = { id, user: d.user, topic: d.topic ?? null, title: d.title, body: d.body ?? null,
        priority: d.priority ?? 'medium', data: d.data ?? null, created_at: now, read: false };
      const json = JSON.stringify(n);
      committed.push({ id, user: d.user, json, sse: null, ws: null });
      lines.push(json);
      job.ids.push(id);
    }
  }
  fs.write(logFd, lines.join('\n') + '\n', (err) => {
    if (err) return fail(batch, err);
    fs.fdatasync(logFd, (err2) => {
      if (err2) return fail(batch, err2);
      for (const n of committed) {
        log.push(n);
        if (n.user === null) newestBroadcast = n.id; else newestFor.set(n.user, n.id);
        dispatch(n);
      }
      for (const job of batch) job.done(null, job.ids);
      flush();
    });
  });
}

function fail(batch, err) {
  for (const job of batch) job.done(err);
  flush();
}

// -- streams -----------------------------------------------------------------------------
const byUser = new Map();
const all = new Set();

function sseFrame(n) { return n.sse || (n.sse = `id: ${n.id}\nevent: notification\ndata: ${n.json}\n\n`); }
function wsFrame(n) { return n.ws || (n.ws = '{"type":"notification",' + n.json.slice(1)); }

function send(stream, n) {
  if (stream.kind === 'sse') {
    if (stream.res.writableLength > MAX_PENDING_BYTES) return stream.res.destroy();
    stream.res.write(sseFrame(n));
  } else {
    if (stream.ws.bufferedAmount > MAX_PENDING_BYTES) return stream.ws.close(1013);
    stream.ws.send(wsFrame(n));
  }
}

function dispatch(n) {
  const targets = n.user === null ? all : byUser.get(n.user);
  if (targets) for (const s of targets) send(s, n);
}

function register(stream) {
  all.add(stream);
  let set = byUser.get(stream.user);
  if (!set) byUser.set(stream.user, set = new Set());
  set.add(stream);
}

function unregister(stream) {
  all.delete(stream);
  const set = byUser.get(stream.user);
  if (set) { set.delete(stream); if (set.size === 0) byUser.delete(stream.user); }
}

function parseCursor(v) { return typeof v === 'string' && /^[0-9]{1,18}$/.test(v) ? Number(v) : null; }

// Replay and registration happen in one synchronous turn, so nothing committed in between
// can be missed or doubled.
function start(stream, cursor, hello) {
  const newest = Math.max(newestBroadcast, newestFor.get(stream.user) || 0);
  const replay = cursor === null ? 'live' : (cursor > log.length ? 'reset' : 'resumed');
  hello({ user: stream.user, newest_id: newest, unread: 0, replay });
  if (cursor !== null) {
    const from = replay === 'reset' ? 0 : cursor;
    for (let i = from; i < log.length; i++) {
      const n = log[i];
      if (n.user === null || n.user === stream.user) send(stream, n);
    }
  }
  register(stream);
}

function jsonAnswer(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function handleEvents(req, res, url) {
  const user = verify(url.searchParams.get('token'), 'subscriber');
  if (!user) return jsonAnswer(res, 401, { error: 'unauthorized', message: 'Invalid token.' });
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache',
    'x-accel-buffering': 'no' });
  res.write('retry: 3000\n\n');
  const stream = { kind: 'sse', user, res };
  const cursor = parseCursor(req.headers['last-event-id'] ?? url.searchParams.get('last_event_id'));
  start(stream, cursor, (h) => res.write(`event: hello\ndata: ${JSON.stringify(h)}\n\n`));
  res.on('close', () => unregister(stream));
}

function readBody(req, cb) {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => { size += c.length; if (size <= MAX_BODY) chunks.push(c); });
  req.on('end', () => cb(size > MAX_BODY ? null : Buffer.concat(chunks)));
}

function handlePublish(req, res) {
  const auth = req.headers.authorization || '';
  const publisher = auth.startsWith('Bearer ') ? verify(auth.slice(7), 'publisher') : null;
  readBody(req, (raw) => {
    if (!publisher) return jsonAnswer(res, 401, { error: 'unauthorized', message: 'Invalid token.' });
    if (raw === null) return jsonAnswer(res, 413, { error: 'payload_too_large', message: 'Too large.' });
    let body;
    try { body = JSON.parse(raw); } catch { return jsonAnswer(res, 400, { error: 'bad_json', message: 'Bad JSON.' }); }
    const bulk = Array.isArray(body); // an array of 1 to 1000 bodies: one commit, one answer per element
    const elements = bulk ? body : [body];
    if (elements.length < 1 || elements.length > 1000) {
      return jsonAnswer(res, 422, { error: 'invalid', message: 'A bulk publish holds 1 to 1000 notifications.' });
    }
    const groups = [];
    for (let i = 0; i < elements.length; i++) {
      const drafts = toDrafts(elements[i]);
      if (drafts === null) {
        return jsonAnswer(res, 422, { error: 'invalid', message: `${bulk ? `[${i}]: ` : ''}One target and a title are required.` });
      }
      groups.push(drafts);
    }
    commit(groups.flat(), (err, ids) => {
      if (err) return jsonAnswer(res, 503, { error: 'unavailable', message: String(err) });
      if (!bulk) return jsonAnswer(res, 201, { ids });
      let at = 0;
      jsonAnswer(res, 201, { results: groups.map((g) => ({ ids: ids.slice(at, at += g.length) })) });
    });
  });
}

function toDrafts(body) {
  const ok = body !== null && typeof body === 'object' && !Array.isArray(body);
  const targets = ok ? (body.user !== undefined) + Array.isArray(body.users) + (body.broadcast === true) : 0;
  if (targets !== 1 || typeof body.title !== 'string' || !body.title) return null;
  const users = body.broadcast === true ? [null] : body.user !== undefined ? [body.user] : body.users;
  return users.map((user) => ({ user, topic: body.topic, title: body.title, body: body.body,
    priority: body.priority, data: body.data }));
}

const server = http.createServer({ keepAliveTimeout: 75000, requestTimeout: 0, headersTimeout: 20000 },
  (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (req.method === 'GET' && url.pathname === '/events') return handleEvents(req, res, url);
    if (req.method === 'POST' && url.pathname === '/notifications') return handlePublish(req, res);
    if (req.method === 'GET' && url.pathname === '/healthz') return jsonAnswer(res, 200, { status: 'ok' });
    jsonAnswer(res, 404, { error: 'not_found', message: 'No such path.' });
  });
server.keepAliveTimeout = 75000;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_BODY });
server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/ws') return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => {
    const user = verify(url.searchParams.get('token'), 'subscriber');
    if (!user) {
      ws.send(JSON.stringify({ type: 'error', error: 'unauthorized', message: 'Invalid token.' }));
      return ws.close(4401);
    }
    const stream = { kind: 'ws', user, ws };
    start(stream, parseCursor(url.searchParams.get('last_event_id')),
      (h) => ws.send(JSON.stringify({ type: 'auth_success', ...h })));
    ws.on('message', (data) => {
      let frame = null;
      try { frame = JSON.parse(data); } catch { /* answered below */ }
      if (frame && frame.type === 'ping') ws.send('{"type":"pong"}');
      else ws.send(JSON.stringify({ type: 'error', error: 'bad_request', message: 'Unknown frame.' }));
    });
    ws.on('close', () => unregister(stream));
    ws.on('error', () => unregister(stream));
  });
});

// Keepalives: one timer for all streams (an SSE comment, a WebSocket ping).
setInterval(() => {
  for (const s of all) {
    if (s.kind === 'sse') s.res.write(': keepalive\n\n'); else s.ws.ping();
  }
}, HEARTBEAT_MS).unref();

server.listen(PORT, HOST, () => {
  console.log(`peer listening on ${HOST}:${server.address().port} (data: ${DATA_DIR})`);
});

function shutdown() {
  for (const s of all) { if (s.kind === 'sse') s.res.end(); else s.ws.close(1001); }
  server.close(() => { fs.closeSync(logFd); process.exit(0); });
  setTimeout(() => process.exit(0), 3000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
