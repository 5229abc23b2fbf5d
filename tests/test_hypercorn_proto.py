"""sse_notify._hypercorn.proto: one header walk per request, and a response head written
with its first body chunk -- or at once when no body follows (EventSource's ``onopen``
waits on the head) -- in the real Hypercorn over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sse_notify._hypercorn import lean, proto
from .inprocess import hypercorn_serving, lifespan

pytestmark = pytest.mark.timeout(60)


def test_the_replaced_sources_are_the_checked_ones() -> None:
    # An upgrade lands here: read the new H11Protocol and h11 Headers, check proto.py's
    # replacements against them, then update proto.CHECKED.
    for name, obj in proto.sources().items():
        assert proto._fingerprint(obj) == proto.CHECKED[name], f"{name} changed: see proto.py"


def test_a_changed_source_keeps_hypercorns(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.protocol.h11 import H11Protocol

    monkeypatch.setitem(proto.CHECKED, "Headers", "0" * 16)
    stock = H11Protocol.stream_send
    try:
        assert lean.install()
        assert H11Protocol.stream_send is stock and not proto._originals
    finally:
        lean.uninstall()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A WebSocket: accepted and closed; ``/open``: a head and nothing more until the
    client goes; ``/bare``: a head, then the app returns; anything else: the request's
    headers as the body."""
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        return
    if scope["path"] == "/open":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive())["type"] != "http.disconnect":
            pass
        return
    if scope["path"] == "/bare":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        return
    body = repr(scope["headers"]).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    assert lean.install() and proto._originals, "proto.install() refused: see the source check"
    async with hypercorn_serving(app) as serving:
        yield serving.port
    lean.uninstall()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every response the server writes (its writes starting with ``HTTP/1.1``), whole."""
    seen: list[bytes] = []
    original = asyncio.StreamWriter.write

    def write(self: asyncio.StreamWriter, data: bytes) -> None:
        if bytes(data[:9]) == b"HTTP/1.1 ":
            seen.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(asyncio.StreamWriter, "write", write)
    return seen


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


async def test_head_and_body_are_one_write_and_headers_reach_the_app(port: int, writes: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):  # keep-alive: the second request is served the same way
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: Va lue\r\nConnection: keep-alive\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200") and b"date: " in head
        assert body == repr([(b"host", b"x"), (b"x-mixed-case", b"Va lue"),
                             (b"connection", b"keep-alive")]).encode()
    assert len(writes) == 2 and all(w.endswith(b"'keep-alive')]") for w in writes), writes
    writer.close()


async def test_pipelined_requests_are_answered_in_order(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\n\r\n")
    assert (await read_response(reader))[1] == repr([(b"host", b"a")]).encode()
    assert (await read_response(reader))[1] == repr([(b"host", b"b")]).encode()
    writer.close()


async def test_a_head_without_a_body_goes_out_at_once(port: int) -> None:
    # SSE's EventSource.onopen waits on the head: it must not wait for a body.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /open HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    writer.close()


async def test_a_head_whose_app_returns_is_written_before_the_close(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /bare HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)  # to the close, as Hypercorn does
    assert data.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in data.lower()
    writer.close()


async def test_websocket_and_h2c_upgrades_are_still_seen(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                 b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101") and b"upgrade: h2c" in head
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101") and b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    writer.close()
