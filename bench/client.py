"""The load client: raw asyncio protocols for thousands of SSE and WebSocket streams, and
a keep-alive HTTP/1.1 publisher pool.

Nothing here uses an HTTP library per stream: one :class:`asyncio.Protocol` per socket
parses the bytes as they arrive (HTTP/1.1 chunked framing, then SSE frames; or WebSocket
frames), and for every notification it records the publish->receive latency from the
``"ts"`` (epoch seconds) the publisher put in ``data``, the id (for loss and duplicate
accounting), and nothing else. The JSON is not decoded: the id and the timestamp are cut
out of the frame with ``bytes.find``, which keeps the client's cost per delivery a few
microseconds so that it is not the bottleneck (its CPU is measured and reported).

A stream counts as open -- and from then on every notification published must reach it,
or it is counted lost -- as soon as its response starts (the SSE ``200`` head, the
WebSocket ``101``), as a browser's ``onopen`` fires there, not only once ``hello`` has
arrived (:func:`open_streams`).

A :class:`Sink` is shared by all streams of a scenario; scenarios swap its latency list
between ladder steps.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

__all__ = [
    "Sink", "SSEStream", "WSStream", "open_streams", "Publisher", "drive", "DriveResult",
    "percentiles",
]

_now = time.time
_LINGER0 = struct.pack("ii", 1, 0)


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 90, 99, 99.9, 100)) -> dict[str, float]:
    """Nearest-rank percentiles, in seconds; {} without samples."""
    if not samples:
        return {}
    ordered = sorted(samples)
    n = len(ordered)
    out = {}
    for q in qs:
        rank = min(n - 1, max(0, int(-(-q * n // 100)) - 1))  # ceil(q/100*n) - 1
        out["max" if q == 100 else f"p{q:g}"] = ordered[rank]
    return out


class Sink:
    """Where every stream reports: latency samples (s) and counters."""

    __slots__ = ("lat", "delivered", "closed", "record_ids")

    def __init__(self) -> None:
        self.lat: array[float] = array("d")
        self.delivered = 0
        self.closed = 0
        self.record_ids = False

    def take(self) -> array[float]:
        lat, self.lat = self.lat, array("d")
        return lat


# -- streams --------------------------------------------------------------------------

class _Stream(asyncio.Protocol):
    """Common state: ids seen (strictly increasing on a healthy stream), counters."""

    kind = "?"

    def __init__(self, sink: Sink, user: str):
        self.sink = sink
        self.user = user
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.started: asyncio.Future[None] = loop.create_future()  # the response head arrived
        self.ready: asyncio.Future[dict[str, Any]] = loop.create_future()  # hello arrived
        self.last_id = 0
        self.count = 0
        self.dups = 0
        self.closed = False
        self.ids: list[int] | None = [] if sink.record_ids else None
        self.hello: bytes = b""
        self.last_rx = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # close with RST: thousands of sockets, no TIME_WAIT pile-up
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
        self.transport.write(self.request())  # type: ignore[union-attr]

    def request(self) -> bytes:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self.sink.closed += 1
        self._failed(ConnectionError(f"{self.kind} stream closed before hello: {exc!r}"))

    def _failed(self, exc: Exception) -> None:
        for future in (self.started, self.ready):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a stream awaited only until its start is no error

    def _got(self, nid: int, ts: float | None, now: float) -> None:
        if nid <= self.last_id:
            self.dups += 1
        else:
            self.last_id = nid
        self.count += 1
        self.last_rx = now
        self.sink.delivered += 1
        if self.ids is not None:
            self.ids.append(nid)
        if ts is not None:
            self.sink.lat.append(now - ts)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True  # our own close is not counted as a server close
            self.transport.abort()


class SSEStream(_Stream):
    """``GET /events`` over HTTP/1.1: status line, headers, then chunked SSE."""

    kind = "sse"

    def __init__(self, sink: Sink, user: str, path: str):
        super().__init__(sink, user)
        self.path = path
        self._head = b""
        self._in_body = False
        self._chunked = False
        self._raw = b""
        self._left = 0  # bytes left in the current chunk
        self._skip = 0  # CRLF after a chunk still to skip
        self._sse = b""

    def request(self) -> bytes:
        return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\n\r\n" % self.path.encode())

    def data_received(self, data: bytes) -> None:
        now = _now()
        if not self._in_body:
            head = self._head + data
            end = head.find(b"\r\n\r\n")
            if end < 0:
                self._head = head
                return
            status = head[9:12]
            if status != b"200":
                self._failed(ConnectionError(f"/events answered {head[:end].decode(errors='replace')!r}"))
                self.close()
                return
            self.started.set_result(None)
            self._chunked = b"chunked" in head[:end].lower()
            self._in_body = True
            self._head = b""
            data = head[end + 4:]
            if not data:
                return
        if self._chunked:
            buf = self._raw + data if self._raw else data
            pos, n, parts = 0, len(buf), []
            while pos < n:
                if self._left:
                    take = self._left if self._left <= n - pos else n - pos
                    parts.append(buf[pos:pos + take])
                    pos += take
                    self._left -= take
                    if not self._left:
                        self._skip = 2
                elif self._skip:
                    take = self._skip if self._skip <= n - pos else n - pos
                    pos += take
                    self._skip -= take
                else:
                    eol = buf.find(b"\r\n", pos)
                    if eol < 0:
                        break
                    size = int(buf[pos:eol].split(b";", 1)[0], 16)
                    pos = eol + 2
                    if size == 0:  # end of the response: the server closed the stream
                        pos = n
                        break
                    self._left = size
            self._raw = buf[pos:] if pos < n else b""
            body = b"".join(parts) if len(parts) != 1 else parts[0]
        else:
            body = data
        if not body:
            return
        sse = self._sse + body if self._sse else body
        frames = sse.split(b"\n\n")
        self._sse = frames.pop()
        for frame in frames:
            if frame[:4] == b"id: ":
                nl = frame.find(b"\n")
                nid = int(frame[4:nl])
                j = frame.find(b'"ts":', nl)
                ts = float(frame[j + 5:frame.find(b"}", j)]) if j >= 0 else None
                self._got(nid, ts, now)
            elif not self.ready.done() and frame.startswith(b"event: hello"):
                self.hello = frame[frame.find(b"data: ") + 6:]
                self.ready.set_result({})


class WSStream(_Stream):
    """``GET /ws`` upgraded to WebSocket (RFC 6455): server frames are unmasked."""

    kind = "ws"

    def __init__(self, sink: Sink, user: str, path: str):
        super().__init__(sink, user)
        self.path = path
        self._upgraded = False
        self._buf = b""

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16))
        return (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (self.path.encode(), key))

    def data_received(self, data: bytes) -> None:
        now = _now()
        buf = self._buf + data if self._buf else data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buf = buf
                return
            if buf[9:12] != b"101":
                self._failed(ConnectionError(f"/ws answered {buf[:end].decode(errors='replace')!r}"))
                self.close()
                return
            self.started.set_result(None)
            self._upgraded = True
            buf = buf[end + 4:]
        pos, n = 0, len(buf)
        while n - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if b1 & 0x80:
                head += 4  # a masked server frame is a protocol error; skip the key anyway
            if n - pos < head + length:
                break
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 1:
                if payload[:23] == b'{"type":"notification",':
                    i = payload.find(b'"id":')
                    nid = int(payload[i + 5:payload.find(b",", i)])
                    j = payload.find(b'"ts":', i)
                    ts = float(payload[j + 5:payload.find(b"}", j)]) if j >= 0 else None
                    self._got(nid, ts, now)
                elif not self.ready.done() and payload.startswith(b'{"type":"auth_success"'):
                    self.hello = payload
                    self.ready.set_result({})
                elif payload.startswith(b'{"type":"error"') and not self.ready.done():
                    self._failed(ConnectionError(f"/ws error frame {payload[:200]!r}"))
            elif opcode == 9:  # ping -> pong, masked as a client must
                self._send(0xA, payload)
            elif opcode == 8:
                self._send(0x8, payload[:2])
                self.close()
                self.closed = True
                self.sink.closed += 1
                return
        self._buf = buf[pos:] if pos < n else b""

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)


async def open_streams(kind: str, port: int, users: Sequence[str], tokens: Sequence[str],
                       sink: Sink, *, concurrency: int = 64, timeout: float = 120.0,
                       cursor: int | None = None, host: str = "127.0.0.1",
                       until: str = "start") -> list[_Stream]:
    """Open one stream per (user, token), ``concurrency`` handshakes at a time. When this
    returns, every stream's response has started (``until="start"``: what a browser takes
    for "connected", so whatever is published from then on must reach every stream), or
    every stream has received its hello / auth_success (``until="hello"``)."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    cls = SSEStream if kind == "sse" else WSStream
    endpoint = "/events" if kind == "sse" else "/ws"

    async def one(user: str, token: str) -> _Stream:
        path = f"{endpoint}?token={token}&user={user}"  # user=: only the peer reads it
        if cursor is not None:
            path += f"&last_event_id={cursor}"
        async with sem:
            for attempt in range(5):
                try:
                    _, proto = await loop.create_connection(lambda: cls(sink, user, path), host, port)
                    break
                except OSError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
            await asyncio.wait_for(asyncio.shield(proto.ready if until == "hello" else proto.started), 30)
            return proto

    async with asyncio.timeout(timeout):
        return list(await asyncio.gather(*(one(u, t) for u, t in zip(users, tokens))))


# -- the publisher --------------------------------------------------------------------

Callback = Callable[[int, bytes, "Exception | None"], None]


class _HTTPConn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (no pipelining).
    Callback-driven: no task or future per request, so the publisher stays cheap."""

    def __init__(self, pool: Publisher) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.callback: Callback | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)

    def send(self, raw: bytes, callback: Callback) -> None:
        self.callback = callback
        self.transport.write(raw)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            self.buf = buf
            return
        head = buf[:end].lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            self.transport.abort()  # type: ignore[union-attr]
            return
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17:j if j >= 0 else len(head)])
        if len(buf) < end + 4 + length:
            self.buf = buf
            return
        self.buf = buf[end + 4 + length:]
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(int(buf[9:12]), buf[end + 4:end + 4 + length], None)
        if b"\r\nconnection: close" in head:  # the server's last answer on it (Hypercorn:
            self.lost = True                   # every 1,000 requests): the pool reconnects
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.pool._idle_conn(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback(0, b"", ConnectionError(f"publisher connection lost: {exc!r}"))
        self.pool._lost_conn(self)


class Publisher:
    """A pool of keep-alive connections for ``POST /notifications``: a request goes to an
    idle connection at once, or waits in a FIFO for the next one that answers."""

    def __init__(self, port: int, token: str, connections: int = 32, host: str = "127.0.0.1"):
        self.host, self.port, self.connections = host, port, connections
        self._prefix = (b"POST /notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Authorization: Bearer " + token.encode() + b"\r\n"
                        b"Content-Type: application/json\r\nContent-Length: ")
        self._idle: deque[_HTTPConn] = deque()
        self._queue: deque[tuple[bytes, Callback]] = deque()
        self._all: set[_HTTPConn] = set()
        self._closing = False

    @property
    def waiting(self) -> int:
        return len(self._queue)

    async def open(self) -> Publisher:
        for _ in range(self.connections):
            await self._connect()
        return self

    async def _connect(self) -> None:
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: _HTTPConn(self), self.host, self.port)
        self._all.add(conn)
        self._idle_conn(conn)

    def _idle_conn(self, conn: _HTTPConn) -> None:
        if self._queue:
            raw, callback = self._queue.popleft()
            conn.send(raw, callback)
        else:
            self._idle.append(conn)

    def _lost_conn(self, conn: _HTTPConn) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        if not self._closing:
            asyncio.get_running_loop().create_task(self._connect())

    def submit(self, body: bytes, callback: Callback) -> None:
        raw = self._prefix + b"%d\r\n\r\n" % len(body) + body
        if self._idle:
            self._idle.pop().send(raw, callback)
        else:
            self._queue.append((raw, callback))

    async def post(self, body: bytes) -> tuple[int, bytes]:
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(status: int, payload: bytes, exc: Exception | None) -> None:
            if future.done():
                return
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result((status, payload))

        self.submit(body, done)
        return await future

    async def close(self) -> None:
        self._closing = True
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.close()


@dataclass
class DriveResult:
    offered: float  # requests/s asked for
    issued: int = 0
    ok: int = 0  # 201s
    errors: int = 0
    overloaded: bool = False  # the backlog grew past the bound: the step was cut short
    elapsed: float = 0.0
    ack: array[float] = field(default_factory=lambda: array("d"))  # scheduled send -> 201 (s)
    error_samples: list[str] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


async def drive(pub: Publisher, rate: float, duration: float,
                body: Callable[[int, float], bytes],
                on_ok: Callable[[int, bytes], None] | None = None,
                *, max_backlog_s: float = 2.0, answer_timeout: float = 15.0) -> DriveResult:
    """Open-loop load: request ``i`` is due at ``start + i/rate`` and carries that
    scheduled wall-clock time as its timestamp (so a slow server cannot hide its own
    queueing by slowing the sender: no coordinated omission). Requests wait for a free
    pooled connection; a backlog of more than ``max_backlog_s`` worth of requests cuts the
    step short as overloaded. Bounded: at most ``rate*duration`` requests, and the answers
    are awaited at most ``answer_timeout`` s after the last send."""
    loop = asyncio.get_running_loop()
    n = max(1, round(rate * duration))
    result = DriveResult(offered=rate)
    start = loop.time() + 0.01
    wall0 = _now() + (start - loop.time())
    ack = result.ack
    outstanding = 0
    all_answered = loop.create_future()
    sending_done = False
    monotonic = loop.time

    def answer(i: int, due: float, status: int, payload: bytes, exc: Exception | None) -> None:
        nonlocal outstanding
        outstanding -= 1
        if status == 201:
            result.ok += 1
            ack.append(monotonic() - due)
            if on_ok is not None:
                on_ok(i, payload)
        else:
            result.errors += 1
            if len(result.error_samples) < 5:
                result.error_samples.append(repr(exc) if exc is not None else f"{status} {payload[:200]!r}")
        if sending_done and outstanding == 0 and not all_answered.done():
            all_answered.set_result(None)

    backlog_bound = max(8, rate * max_backlog_s)
    issued = 0
    while issued < n:
        now = monotonic()
        due_count = min(n, int((now - start) * rate) + 1) if now >= start else 0
        while issued < due_count:
            offset = issued / rate
            outstanding += 1
            pub.submit(body(issued, wall0 + offset), partial(answer, issued, start + offset))
            issued += 1
        if pub.waiting > backlog_bound:
            result.overloaded = True
            break
        # never below 1 ms: shorter timers round to 0 and the loop would spin
        await asyncio.sleep(min(0.005, max(0.001, start + issued / rate - monotonic())))
    result.issued = issued
    sending_done = True
    if outstanding:
        try:
            await asyncio.wait_for(asyncio.shield(all_answered), answer_timeout)
        except TimeoutError:
            result.overloaded = True
            result.errors += outstanding
    result.elapsed = max(1e-9, issued / rate)
    return result
