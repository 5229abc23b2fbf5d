"""The direct body write (:mod:`sse_notify._hypercorn.direct`) against the real Hypercorn.

These tests exist to fail loudly when a Hypercorn or h11 upgrade changes what the module
relies on: a tested version pair, the chain from ASGI ``send`` to the transport, h11's
chunked framing. They run a tiny ASGI app under Hypercorn in this process and read the
bytes over a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from sse_notify import _hypercorn
from sse_notify._hypercorn import direct
from sse_notify.wire import ws_text_frame
from .inprocess import hypercorn_serving, lifespan

pytestmark = pytest.mark.timeout(30)


class App:
    """Starts a chunked response, then writes parts directly (where it can) or via ASGI."""

    def __init__(self) -> None:
        self.writers: list[Any] = []
        self.results: list[bool] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        if scope["type"] == "websocket":
            return await self.websocket(scope, receive, send)
        writer = direct.body_writer(scope, send)
        self.writers.append(writer)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"asgi-1|", "more_body": True})
        for part in (b"direct-1|", b"direct-2|"):
            if writer is not None and writer(part):
                self.results.append(True)
            else:
                self.results.append(False)
                await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"asgi-2", "more_body": False})
        if writer is not None:
            self.results.append(writer(b"after the end"))


    async def websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        writer = direct.frame_writer(scope, send)
        self.writers.append(writer)
        if scope["path"] == "/close":
            return await self.final_close(writer, send)
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "asgi-1"})
        frames = ws_text_frame(b"direct-1") + ws_text_frame("direct-\u00e9".encode() * 20)
        self.results.append(writer is not None and writer(frames))
        if not self.results[-1]:
            for text in ("direct-1", "direct-\u00e9" * 20):
                await send({"type": "websocket.send", "text": text})
        await send({"type": "websocket.send", "text": "asgi-2"})
        await receive()  # the client's close

    async def final_close(self, writer: direct.FrameWriter | None, send: Any) -> None:
        """The endpoint's final close: directly while the send lock is held (as Hypercorn's
        ping holds it, waiting in drain(), while a client is backed up), else via ASGI."""
        self.results.append(writer is not None and writer.close(1013, "too early", 5.0))  # not accepted
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "asgi-1"})
        if writer is not None:
            async with writer.lock:
                # a frame made before the close, waiting for the lock to be written
                queued = asyncio.create_task(send({"type": "websocket.send", "text": "queued"}))
                while not writer.lock._waiters:
                    await asyncio.sleep(0)
                self.results.append(writer.close(1013, "slow consumer", 5.0))
                self.results.append(writer(ws_text_frame(b"after")))
                self.results.append(writer.close(1011, "again", 5.0))
            await queued
        if self.results[1:2] != [True]:
            await send({"type": "websocket.close", "code": 1013, "reason": "slow consumer"})
        else:  # as ws.py does not, but a cleanup might: no second close goes out
            await send({"type": "websocket.close", "code": 1000})
        # and the end of the app: Hypercorn's cleanup sends no 1011 close either


@pytest.fixture
async def server() -> AsyncIterator[tuple[App, int]]:
    app = App()
    async with hypercorn_serving(app) as serving:
        yield app, serving.port


def test_the_installed_hypercorn_and_h11_are_a_tested_pair() -> None:
    # An upgrade lands here first: test the new pair, then add it to direct.TESTED.
    assert direct.supported(), (
        f"hypercorn/h11 {_hypercorn._series('hypercorn')}/{_hypercorn._series('h11')} not in {direct.TESTED}")


async def test_http11_chunks_are_written_directly_and_framed_as_h11_would(server: tuple[App, int]) -> None:
    app, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
    writer.close()
    assert app.writers[0] is not None, "direct.body_writer no longer finds Hypercorn's HTTP/1.1 chain"
    assert app.results == [True, True, False]  # both parts direct; nothing after the end
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body == b"7\r\nasgi-1|\r\n9\r\ndirect-1|\r\n9\r\ndirect-2|\r\n6\r\nasgi-2\r\n0\r\n\r\n"


async def test_a_client_reading_the_response_sees_every_part_in_order(server: tuple[App, int]) -> None:
    _, port = server
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.text == "asgi-1|direct-1|direct-2|asgi-2"


async def test_http2_falls_back_to_asgi(server: tuple[App, int]) -> None:
    app, port = server
    async with httpx.AsyncClient(http1=False, http2=True) as client:  # h2c, prior knowledge
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.http_version == "HTTP/2"
    assert response.text == "asgi-1|direct-1|direct-2|asgi-2"
    assert app.writers == [None] and app.results == [False, False]


async def test_another_version_falls_back_to_asgi(server: tuple[App, int],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    app, port = server
    monkeypatch.setattr(_hypercorn, "_supported", False)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.text == "asgi-1|direct-1|direct-2|asgi-2"
    assert app.writers == [None]


def test_tls_and_websocket_scopes_are_refused_up_front() -> None:
    async def send(message: Any) -> None: ...

    assert direct.body_writer({"type": "http", "scheme": "https", "http_version": "1.1"}, send) is None
    assert direct.body_writer({"type": "websocket", "scheme": "ws", "http_version": "1.1"}, send) is None
    assert direct.body_writer({"type": "http", "scheme": "http", "http_version": "1.1"}, send) is None


async def ws_messages(port: int, compression: str | None) -> tuple[list[str], str | None]:
    async with connect(f"ws://127.0.0.1:{port}/", compression=compression) as ws:
        got = [await ws.recv() for _ in range(4)]
        return got, ws.response.headers.get("sec-websocket-extensions")  # type: ignore[union-attr]


async def test_websocket_frames_are_written_directly(server: tuple[App, int]) -> None:
    app, port = server
    got, extensions = await ws_messages(port, None)
    assert got == ["asgi-1", "direct-1", "direct-\u00e9" * 20, "asgi-2"]
    assert app.writers[0] is not None and app.results == [True]


async def test_permessage_deflate_is_declined_and_frames_still_go_directly(server: tuple[App, int]) -> None:
    app, port = server
    assert direct.refuse_permessage_deflate()
    got, extensions = await ws_messages(port, "deflate")  # the client offers it
    assert extensions is None
    assert got == ["asgi-1", "direct-1", "direct-\u00e9" * 20, "asgi-2"]
    assert app.results == [True]


async def test_a_compressed_websocket_falls_back_to_asgi(server: tuple[App, int],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.protocol import ws_stream
    from wsproto.extensions import PerMessageDeflate

    app, port = server
    monkeypatch.setattr(ws_stream, "PerMessageDeflate", PerMessageDeflate)
    got, extensions = await ws_messages(port, "deflate")
    assert extensions is not None and extensions.startswith("permessage-deflate")
    assert got == ["asgi-1", "direct-1", "direct-\u00e9" * 20, "asgi-2"]
    assert app.results == [False]  # the writer refused: the frames would need compressing


async def ws_raw_frames(port: int, path: str, extensions: str | None = None) -> list[tuple[int, bytes]]:
    """Upgrade on a bare socket, then every server frame (opcode, payload) until the server
    ends the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"GET {path} HTTP/1.1", "Host: x", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    if extensions:
        head.append(f"Sec-WebSocket-Extensions: {extensions}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    try:
        async with asyncio.timeout(10):
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            data = await reader.read()  # to the end of the connection
    finally:
        writer.close()
    frames = []
    while data:
        length, at = data[1] & 0x7F, 2
        if length == 126:
            length, at = int.from_bytes(data[2:4], "big"), 4
        assert len(data) >= at + length, "a frame cut short"
        frames.append((data[0] & 0x0F, data[at:at + length]))
        data = data[at + length:]
    return frames


async def test_the_final_close_is_written_whole_while_the_lock_is_held(server: tuple[App, int]) -> None:
    app, port = server
    frames = await ws_raw_frames(port, "/close")
    assert app.writers[0] is not None, "direct.frame_writer no longer finds Hypercorn's HTTP/1.1 chain"
    # Refused before the accept; written under the held lock; then nothing: no frame (not
    # the one framed before and waiting for the lock), no second close (nor the ASGI close,
    # nor Hypercorn's cleanup), and the connection ended.
    assert app.results == [False, True, False, False]
    assert frames == [(0x1, b"asgi-1"), (0x8, (1013).to_bytes(2, "big") + b"slow consumer")]


async def test_the_final_close_is_refused_on_a_compressed_websocket(server: tuple[App, int],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.protocol import ws_stream
    from wsproto.extensions import PerMessageDeflate

    app, port = server
    monkeypatch.setattr(ws_stream, "PerMessageDeflate", PerMessageDeflate)
    frames = await ws_raw_frames(port, "/close", "permessage-deflate")
    assert app.results == [False, False, False, False]  # ASGI closed it
    assert [opcode for opcode, _ in frames] == [0x1, 0x1, 0x8]  # asgi-1, queued (compressed)
    assert frames[2] == (0x8, (1013).to_bytes(2, "big") + b"slow consumer")
