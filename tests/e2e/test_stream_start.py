"""A stream is subscribed before its response starts (API v1.1, "Streaming"): whatever
commits after a client has seen the response start -- the SSE headers, the WebSocket
``101`` -- reaches that stream. (A browser fires ``onopen`` there.)

The race is made real by holding the server busy: its database holds many notifications,
so reading a user's state for ``hello`` takes milliseconds on the store's one reader
thread, and many streams open at once queue up behind each other there. Each time more
streams have seen their response start, a broadcast is published at once; every stream
that had seen its start before that POST went out must receive it. A server that started
the response before the stream was subscribed and its state read loses most of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect

from sse_notify.models import NotificationDraft
from sse_notify.store.sqlite import SQLiteStore

from ..helpers import ServerProcess, uid
from .wsclient import WS_SERVER_FLAGS, Publisher

pytestmark = pytest.mark.timeout(120)

STREAMS = 100
#: Broadcasts in the database before the server starts: each hello's state read then
#: costs ~10 ms, so the streams opened at once wait about a second for theirs.
BACKLOG = 20_000


class Opened(Protocol):
    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]: ...
    async def close(self) -> None: ...


async def _fill(data_dir: Path) -> None:
    store = SQLiteStore(data_dir / "notifications.db")
    await store.open()
    try:
        await store.add([NotificationDraft(None, f"old {i}", None, "medium", None, None)
                         for i in range(BACKLOG)], "setup")
    finally:
        await store.close()


@pytest.fixture
def busy_server(make_server: Callable[..., ServerProcess], tmp_path: Path) -> ServerProcess:
    data_dir = tmp_path / "busy"
    asyncio.run(_fill(data_dir))
    return make_server(*WS_SERVER_FLAGS, data_dir=data_dir)


class RawSSE:
    """``GET /events`` over a bare socket: ``open`` returns as soon as the response head
    has arrived, before anything else is read; then the chunked body as SSE events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: ServerProcess, user: str) -> RawSSE:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET /events?token={server.token(user)} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower(), head
        return cls(reader, writer)

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        buffer = b""
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return
            buffer += chunk[:-2]
            *blocks, buffer = buffer.split(b"\n\n")
            for block in blocks:
                fields = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
                if b"data" in fields:
                    yield fields[b"event"].decode(), orjson.loads(fields[b"data"])

    async def close(self) -> None:
        self.writer.close()


class WS:
    """``GET /ws?token=``: ``open`` returns once the handshake's ``101`` has arrived."""

    def __init__(self, ws: Any):
        self.ws = ws

    @classmethod
    async def open(cls, server: ServerProcess, user: str) -> WS:
        return cls(await ws_connect(f"{server.ws_url}?token={server.token(user)}", open_timeout=30))

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            frame = orjson.loads(await self.ws.recv())
            yield ("hello" if frame["type"] == "auth_success" else frame["type"]), frame

    async def close(self) -> None:
        await self.ws.close()


async def _race(server: ServerProcess, open_stream: Callable[[ServerProcess, str], Awaitable[Opened]]) -> None:
    started: list[int] = []  # streams whose response start has arrived, in that order
    more = asyncio.Event()
    streams: dict[int, Opened] = {}
    hellos = [asyncio.get_running_loop().create_future() for _ in range(STREAMS)]
    received: dict[int, set[int]] = {i: set() for i in range(STREAMS)}
    due: dict[int, set[int]] = {i: set() for i in range(STREAMS)}

    async def run(i: int) -> None:
        stream = await open_stream(server, uid("s"))
        streams[i] = stream
        started.append(i)
        more.set()
        async for kind, payload in stream.events():
            if kind == "hello":
                hellos[i].set_result(None)
            elif kind == "notification":
                received[i].add(payload["id"])
                if payload["title"] == "end":
                    return

    async with server.client() as client:
        publish = Publisher(server, client)
        await publish(user="warm-up", title="a connection ready for the probes")
        readers = [asyncio.create_task(run(i)) for i in range(STREAMS)]
        try:
            probes = 0
            while not all(due.values()):  # until every stream is due a probe
                if all(due[i] for i in started):
                    await more.wait()  # for a start that no probe has covered yet
                more.clear()
                seen = list(started)  # these saw their response start before this POST
                [nid] = await publish(broadcast=True, title="probe")
                probes += 1
                for i in seen:
                    due[i].add(nid)
            await asyncio.wait_for(asyncio.gather(*hellos), 60)
            await publish(broadcast=True, title="end")  # after every hello: reaches all
            await asyncio.wait_for(asyncio.gather(*readers), 60)
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await asyncio.gather(*(s.close() for s in streams.values()), return_exceptions=True)
    missed = {i: sorted(due[i] - received[i]) for i in range(STREAMS) if due[i] - received[i]}
    assert not missed, f"{len(missed)} of {STREAMS} streams missed probes published after " \
                       f"their response started ({probes} probes): {dict(list(missed.items())[:5])}"


async def test_sse_stream_gets_what_commits_after_its_headers(busy_server: ServerProcess) -> None:
    await _race(busy_server, RawSSE.open)


async def test_websocket_gets_what_commits_after_its_101(busy_server: ServerProcess) -> None:
    await _race(busy_server, WS.open)
