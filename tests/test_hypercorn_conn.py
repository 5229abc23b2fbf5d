"""sse_notify._hypercorn.conn: Hypercorn's connection loop with a timer handle for the
keep-alive timeout, lock-free writes, inlined reads and a cached ``Date`` header --
installed in the real Hypercorn, over HTTP/1.1, HTTP/2 (h2c and TLS) and TLS HTTP/1.1.

Its source checks are in ``tests/test_hypercorn_lean.py`` (an upgrade fails there first).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from wsgiref.handlers import format_date_time

import httpx
import pytest

from sse_notify._hypercorn import conn, lean
from .inprocess import Serving, body_size, hypercorn_serving, lifespan

from .browser.support import self_signed_certificate

pytestmark = pytest.mark.timeout(60)

BIG = 4 * 1024 * 1024


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/stream``: a response open until the client goes; ``/big``: 4 MiB in 64 KiB
    chunks; anything else: ``ok`` and the request's body length."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    size = await body_size(receive)
    if scope["path"] not in ("/stream", "/big"):
        body = b"ok %d" % size
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] == "/stream":
        await send({"type": "http.response.body", "body": b"open\n", "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    if scope["path"] == "/big":
        chunk = b"x" * 65536
        for _ in range(BIG // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class Server:
    def __init__(self, serving: Serving, certs: tuple[Path, Path] | None):
        self.port, self.task, self.stop, self.certs = serving.port, serving.task, serving.stop, certs


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Any]:
    assert lean.install() and conn._originals, "conn.install() refused: see the source checks in test_hypercorn_lean"
    async with contextlib.AsyncExitStack() as stack:

        async def _start(keep_alive: float = 5, tls: bool = False, read_timeout: int | None = None) -> Server:
            certs = self_signed_certificate(tmp_path) if tls else None
            config: dict[str, Any] = {"keep_alive_timeout": keep_alive, "read_timeout": read_timeout,
                                      "graceful_timeout": 30}
            if certs is not None:
                config.update(certfile=str(certs[0]), keyfile=str(certs[1]))
            return Server(await stack.enter_async_context(hypercorn_serving(app, **config)), certs)

        yield _start
    lean.uninstall()


async def request(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, path: str) -> bytes:
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout_and_served_before(start: Any) -> None:
    server = await start(keep_alive=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(3):  # requests on one connection: the timer stopped and armed again each time
        assert (await request(writer, reader, "/")).endswith(b"ok 0")
    began = time.monotonic()
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # closed by the server
    assert 0.3 < time.monotonic() - began < 3


async def test_a_response_in_progress_outlives_the_keep_alive_timeout(start: Any) -> None:
    server = await start(keep_alive=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        await reader.readuntil(b"open\n\r\n")
    await asyncio.sleep(1.0)  # over three timeouts: the timer must be stopped while the request runs
    assert not reader.at_eof() and reader._buffer == b""  # type: ignore[attr-defined]
    writer.close()


async def test_shutdown_closes_idle_connections_at_once(start: Any) -> None:
    server = await start(keep_alive=60)
    connections = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
    for reader, writer in connections:
        assert (await request(writer, reader, "/")).endswith(b"ok 0")
    server.stop.set()
    async with asyncio.timeout(5):  # not the 60 s timeout, nor the 30 s graceful timeout
        await server.task
        for reader, _ in connections:
            assert await reader.read() == b""


async def test_the_date_header_is_now_and_formatted_as_wsgiref_does(start: Any) -> None:
    for t in (0, 1.999, 1_700_000_000.5, time.time()):
        assert conn.cached_date(t) == format_date_time(t)
    server = await start()
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/")
    date = parsedate_to_datetime(response.headers["date"])
    assert abs((date - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 3


async def test_a_slow_reader_gets_a_large_body_whole(start: Any) -> None:
    # The transport pauses: writes must then wait for drain() under the send lock.
    server = await start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=4096)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    await asyncio.sleep(0.3)  # let the server fill the socket buffers and pause
    received = 0
    async with asyncio.timeout(30):
        while True:
            size = int(await reader.readuntil(b"\r\n"), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
            received += size
    assert received == BIG
    writer.close()


async def test_a_request_body_is_read_whole(start: Any) -> None:
    server = await start()
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{server.port}/", content=b"y" * 1_000_000)
    assert response.text == "ok 1000000"


@pytest.mark.parametrize("http2", [False, True])
async def test_tls_serves_http11_and_http2(start: Any, http2: bool) -> None:
    server = await start(tls=True)
    context = ssl.create_default_context(cafile=str(server.certs[0]))
    async with httpx.AsyncClient(verify=context, http2=http2) as client:
        responses = [await client.get(f"https://127.0.0.1:{server.port}/") for _ in range(3)]
        big = await client.get(f"https://127.0.0.1:{server.port}/big")
    assert [r.text for r in responses] == ["ok 0"] * 3 and len(big.content) == BIG
    assert responses[0].http_version == ("HTTP/2" if http2 else "HTTP/1.1")


async def test_h2c_with_prior_knowledge(start: Any) -> None:
    server = await start()
    async with httpx.AsyncClient(http1=False, http2=True) as client:
        responses = [await client.get(f"http://127.0.0.1:{server.port}/") for _ in range(3)]
    assert [(r.http_version, r.text) for r in responses] == [("HTTP/2", "ok 0")] * 3


async def test_with_a_read_timeout_hypercorns_read_loop_serves(start: Any) -> None:
    server = await start(keep_alive=0.5, read_timeout=10)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(2):
        assert (await request(writer, reader, "/")).endswith(b"ok 0")
    async with asyncio.timeout(5):
        assert await reader.read() == b""  # the keep-alive timeout still closes it
