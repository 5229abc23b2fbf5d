"""Scenario 3, slow consumers (long form only): 100 clients that stop reading plus 1,000
normal ones under a steady broadcast.

A slow client is a bare socket with a small receive buffer that sends its request
(``GET /events``, or the ``/ws`` upgrade) and never calls ``recv()``. Once the kernel
buffers between it and the server are full, its stream falls behind by more than
``--stream-buffer`` events and the server must close it (``slow_consumer_disconnects``
counts it), while memory stays bounded and the normal clients keep receiving everything.

The broadcast has two topics: ``tick`` (small, with its send time, 5 a second) and
``bulk`` (48 kB of data, 5 a second). Normal clients subscribe to ``tick``; slow clients to
everything. The bulk stream is there because the server's socket send buffer autotunes to
megabytes: with ticks alone a client that stops reading would take minutes to back up;
with the bulk it takes seconds, and the normal clients never pay for parsing it.

Three phases of the same broadcast: (A) normal clients only, (B) while the slow clients
are connected, until the server has cut off every one of them, (C) after. Figures: the
normal clients' p50/p99 publish-to-receive latency in each phase, the server's RSS and
open descriptors, the slow-consumer disconnects. Afterwards each slow socket is drained:
its SSE response must have been ended (the chunked terminator) and its WebSocket closed
with 1013. Every normal client must have every broadcast (a normal client the server cut
off would resume from its cursor; that is counted, not hidden).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from sse_notify.transports.ws import CLOSE_LINGER

from ..e2e.wsclient import OPEN_SSE, OPEN_WS, WS_SERVER_FLAGS
from ..helpers import ServerProcess
from .support import MB, MetricsProbe, Spec, Subscriber, fd_count, percentile, rss_bytes, wait_until

SLOW_CLOSED = "sse_notify_slow_consumer_disconnects_total"
SSE_END = b"\r\n0\r\n\r\n"  # the chunked body's terminator: the response ended


@dataclass(frozen=True)
class Form:
    normal: int
    slow: int
    rate: float  # tick broadcasts per second, and as many bulk ones
    bulk: int  # bytes of data per bulk broadcast
    phase_seconds: float  # length of phases A and C
    stream_buffer: int


LONG = Form(normal=1000, slow=100, rate=5, bulk=48_000, phase_seconds=30, stream_buffer=32)


@dataclass
class Latencies:
    phase: str = "warm-up"
    by_phase: dict[str, list[float]] = field(default_factory=dict)

    def add(self, tag: str, seconds: float) -> None:
        self.by_phase.setdefault(tag, []).append(seconds)


class TimedSubscriber(Subscriber):
    """A normal client: never drops on its own; records each broadcast's latency."""

    latencies: Latencies

    def accept(self, payload: dict[str, Any]) -> None:
        super().accept(payload)
        data = payload["data"]
        self.latencies.add(data["phase"], time.time() - data["t"])


async def broadcast(server: ServerProcess, latencies: Latencies, stop: asyncio.Event,
                    form: Form, ticks: list[int]) -> None:
    """A tick and a bulk broadcast, ``form.rate`` times a second, until ``stop``."""
    headers = {"Authorization": f"Bearer {server.publisher_token('slow')}"}
    bulk = orjson.dumps({"broadcast": True, "title": "bulk", "topic": "bulk", "data": {"pad": "x" * form.bulk}})
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        next_at = time.monotonic()
        while not stop.is_set():
            tick = {"broadcast": True, "title": "tick", "topic": "tick",
                    "data": {"t": time.time(), "phase": latencies.phase}}
            resp = await client.post("/notifications", content=orjson.dumps(tick), headers=headers)
            assert resp.status_code == 201, resp.text
            ticks.extend(resp.json()["ids"])
            resp = await client.post("/notifications", content=bulk, headers=headers)
            assert resp.status_code == 201, resp.text
            next_at += 1 / form.rate
            try:  # the broadcast's pace, not a synchronisation
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
            except TimeoutError:
                pass


async def slow_socket(port: int, path: str, ws: bool) -> socket.socket:
    """Connect with a small receive buffer, send the request, and never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if ws:
        key = base64.b64encode(os.urandom(16)).decode()
        lines += ["Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                  "Sec-WebSocket-Version: 13"]
    await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


class WSCloseScanner:
    """Finds the server's close frame in the bytes of a WebSocket (after the 101 head);
    server frames are unmasked."""

    def __init__(self) -> None:
        self.buf = b""
        self.in_head = True
        self.close_code: int | None = None

    def feed(self, data: bytes) -> bool:
        """True once a close frame has been seen."""
        self.buf += data
        if self.in_head:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return False
            self.buf, self.in_head = self.buf[head_end + 4:], False
        while len(self.buf) >= 2:
            opcode, length, at = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if length == 126:
                length, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif length == 127:
                length, at = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < at + length:
                return False
            if opcode == 0x8:
                self.close_code = int.from_bytes(self.buf[at:at + 2], "big") if length >= 2 else None
                return True
            self.buf = self.buf[at + length:]
        return False


async def drain(sock: socket.socket, ws: bool, timeout: float) -> str:
    """Read everything the server queued for ``sock`` and say how its stream ended: "sse-end"
    (the chunked terminator), "ws-close-<code>", "eof" (closed without either) or "open"
    (still going after ``timeout``)."""
    loop = asyncio.get_running_loop()
    scanner, tail = WSCloseScanner(), b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await loop.sock_recv(sock, 1 << 16):
                if ws and scanner.feed(chunk):
                    return f"ws-close-{scanner.close_code}"
                tail = (tail + chunk)[-16:]
                if not ws and tail.endswith(SSE_END):
                    return "sse-end"
    except TimeoutError:
        return "open"
    except OSError:
        pass
    return "eof"


async def sample_rss(pid: int, latencies: Latencies, samples: dict[str, list[int]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.setdefault(latencies.phase, []).append(rss_bytes(pid))
        try:  # a sampling interval
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


@pytest.mark.fault(short=None, long=900)
async def test_slow_consumers_are_cut_off_and_others_unaffected(
        make_server: Callable[..., ServerProcess], figures: Callable[..., str]) -> None:
    form = LONG
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log", "--stream-buffer", str(form.stream_buffer))
    pid = server.proc.pid  # type: ignore[union-attr]
    latencies, rss = Latencies(), {}
    metrics = MetricsProbe(server.url)
    users = [f"normal-{i // 2}" for i in range(form.normal)]  # two streams per user
    tokens = {u: server.token(u) for u in set(users)}
    normal = []
    for i, user in enumerate(users):
        transport = ("ws", "query") if i % 10 == 0 else ("sse", "header")
        sub = TimedSubscriber(Spec(user, *transport, frozenset({"tick"})), server.port, tokens.__getitem__,
                              random.Random(i), session=lambda rng: 1e9, catch_up=120)
        sub.latencies = latencies
        normal.append(sub)
    fds_idle = fd_count(pid)
    readers = [asyncio.create_task(s.run()) for s in normal]
    stop_rss, stop_publishing, sent = asyncio.Event(), asyncio.Event(), []
    sampler = asyncio.create_task(sample_rss(pid, latencies, rss, stop_rss))
    slow: list[tuple[socket.socket, bool]] = []
    try:
        await wait_until(metrics, lambda m: m[OPEN_SSE] + m[OPEN_WS] >= form.normal,
                         timeout=120, what="normal streams open")
        publisher = asyncio.create_task(broadcast(server, latencies, stop_publishing, form, sent))
        await asyncio.sleep(5)  # warm-up: its latencies are not reported
        latencies.phase = "A"
        await asyncio.sleep(form.phase_seconds)  # phase A's length
        fds_before = fd_count(pid)

        latencies.phase = "B"
        for i in range(form.slow):
            ws = i % 2 == 1
            path = f"/ws?token={server.token(f'slow-{i}')}" if ws else f"/events?token={server.token(f'slow-{i}')}"
            slow.append((await slow_socket(server.port, path, ws), ws))
        started = time.monotonic()
        cut = await wait_until(metrics, lambda m: m[SLOW_CLOSED] >= form.slow,
                               timeout=300, what="slow consumers cut off", interval=0.5)
        seconds_to_cut = time.monotonic() - started
        latencies.phase = "C"
        await asyncio.sleep(form.phase_seconds)  # phase C's length
        during = await metrics()
        stop_publishing.set()
        await publisher
        for sub in normal:
            sub.finish(sent[-1])
        await asyncio.gather(*readers)
        fds_cut = fd_count(pid)
        ended = await asyncio.gather(*(drain(sock, ws, 60) for sock, ws in slow))
        for sock, _ in slow:
            sock.close()
        # Within the server's keep-alive timeout (75 s): an SSE response the server ended is an
        # idle keep-alive connection, and it keeps its descriptor that long after the client
        # closes (see test_churn's xfail on descriptors held after the client closed).
        fds_end = await wait_until(lambda: fd_count(pid), lambda n: n <= fds_idle + 2,
                                   timeout=100, what="server descriptors back to idle", interval=1)
    finally:
        stop_rss.set()
        await sampler
        await metrics.aclose()
        for task in readers:
            task.cancel()
        for sock, _ in slow:
            sock.close()

    missing = sum(len(s.missing(sent)) for s in normal)
    lat = {phase: values for phase, values in latencies.by_phase.items()}
    figures("slow-consumers", normal=form.normal, slow=form.slow, rate=form.rate,
            stream_buffer=form.stream_buffer, ticks=len(sent),
            p50_ms_without=1000 * percentile(lat.get("A", []), 50),
            p99_ms_without=1000 * percentile(lat.get("A", []), 99),
            p99_ms_with_slow=1000 * percentile(lat.get("B", []), 99),
            p99_ms_after_cut=1000 * percentile(lat.get("C", []), 99),
            rss_mb_without=max(rss.get("A", [0])) / MB, rss_mb_with_slow=max(rss.get("B", [0])) / MB,
            rss_mb_after=max(rss.get("C", [0])) / MB, seconds_to_cut=seconds_to_cut,
            slow_disconnects=int(cut[SLOW_CLOSED]),
            slow_sse_ended=ended.count("sse-end"), slow_ws_closed_1013=ended.count("ws-close-1013"),
            slow_ws_closed_without_code=ended.count("eof"),
            normal_cut=sum(s.server_closes for s in normal), normal_missing=missing,
            fds_idle=fds_idle, fds_phase_a=fds_before, fds_after_cut=fds_cut, fds_end=fds_end,
            open_streams_after_cut=int(during[OPEN_SSE] + during[OPEN_WS]))
    assert missing == 0, "a normal client missed broadcasts"
    assert not [a for s in normal for a in s.anomalies], [a for s in normal for a in s.anomalies][:10]
    assert cut[SLOW_CLOSED] >= form.slow
    # Every SSE response was ended; every WebSocket was closed: with its 1013 frame, or, read
    # here long after its cut, aborted CLOSE_LINGER s after it (both are short tests below).
    assert all(e == "sse-end" for e, (_, ws) in zip(ended, slow) if not ws), ended
    assert all(e in ("ws-close-1013", "eof") for e, (_, ws) in zip(ended, slow) if ws), ended
    assert during[OPEN_SSE] + during[OPEN_WS] <= form.normal, "slow streams still in the hub"
    assert max(rss.get("B", [0])) - max(rss.get("A", [0])) < 64 * MB, "memory grew with the slow clients"


async def cut_off_slow_websocket(server: ServerProcess, metrics: MetricsProbe) -> socket.socket:
    """A non-reading /ws socket, 48 kB broadcasts until the server has cut it off (about
    3 MB to fill its buffers, then the pace of a live feed, 10 a second)."""
    sock = await slow_socket(server.port, f"/ws?token={server.token('slow')}", ws=True)
    headers = {"Authorization": f"Bearer {server.publisher_token()}"}
    bulk = orjson.dumps({"broadcast": True, "title": "bulk", "data": {"pad": "x" * 48_000}})
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            for sent in range(1, 1001):
                assert (await client.post("/notifications", content=bulk, headers=headers)).status_code == 201
                if sent > 60:
                    if (await metrics())[SLOW_CLOSED] >= 1:
                        return sock
                    await asyncio.sleep(0.1)  # a live feed's pace
    except BaseException:
        sock.close()
        raise
    sock.close()
    raise RuntimeError("the slow socket was never cut off")  # not the bug: an error


async def test_a_slow_websocket_is_closed_with_1013(make_server: Callable[..., ServerProcess]) -> None:
    # Hypercorn's ping (every --heartbeat) waits in drain() under the connection's send lock
    # while the socket is backed up; the close frame must not wait behind it, and must still
    # be there for a client that stays silent longer than a send's timeout (2 s).
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log", "--stream-buffer", "32")
    metrics = MetricsProbe(server.url)
    try:
        sock = await cut_off_slow_websocket(server, metrics)
        try:
            await asyncio.sleep(3)  # the client stays silent a little longer, as stalled clients do
            assert await drain(sock, ws=True, timeout=30) == "ws-close-1013"
        finally:
            sock.close()
    finally:
        await metrics.aclose()


async def test_a_slow_websocket_that_never_reads_is_released(make_server: Callable[..., ServerProcess]) -> None:
    # After its close, a client that reads nothing keeps its connection CLOSE_LINGER seconds,
    # not for as long as it stays connected.
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log", "--stream-buffer", "32")
    pid = server.proc.pid  # type: ignore[union-attr]
    fds_idle = fd_count(pid)
    metrics = MetricsProbe(server.url)
    try:
        sock = await cut_off_slow_websocket(server, metrics)
    finally:
        await metrics.aclose()
    try:
        cut = time.monotonic()
        await wait_until(lambda: fd_count(pid), lambda n: n <= fds_idle,
                         timeout=CLOSE_LINGER + 10, what="server descriptors back to idle")
        assert time.monotonic() - cut > CLOSE_LINGER / 2, "released before the client could read its close"
    finally:
        sock.close()
