"""Helpers shared by the streaming end-to-end tests (test_sse, test_replay, test_ws, ...)
and the fault suite.

* :func:`open_ws` / :class:`WSStream`: a thin layer over the ``websockets`` client that
  decodes JSON frames and reads the first frame (``auth_success``) as ``.hello``.
* :func:`sse_lines`: the raw lines of ``GET /events``, for tests about exact framing
  (``retry:`` first, ``: keepalive`` comments) that the event parser would hide.
* :func:`metrics` / :func:`wait_for_metric`: read ``/metrics`` and poll a value with a
  deadline (for gauges that change after a disconnect, where there is no event to wait on).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..helpers import ServerProcess

__all__ = [
    "Publisher",
    "WSStream",
    "auth_headers",
    "metrics",
    "scrape",
    "open_ws",
    "sse_lines",
    "wait_for_metric",
]

#: Flags for servers that WebSocket clients use. The service hands ``--heartbeat`` to
#: Hypercorn as its WebSocket ping interval, and Hypercorn's ping task only notices a closed
#: socket when it next wakes: until then the closed connection's task lives on (shutdown
#: cancels them; tests that count what is left after clients go would wait up to 15 s). A
#: short heartbeat keeps that brief; nothing tested with it depends on the heartbeat value.
WS_SERVER_FLAGS = ("--heartbeat", "0.5")


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Publisher:
    """``POST /notifications`` with one publisher token signed once (the helpers'
    ``server.publish`` signs a token per call, which dominates when publishing thousands)."""

    def __init__(self, server: ServerProcess, client: httpx.AsyncClient):
        self.client = client
        self.headers = {"Authorization": f"Bearer {server.publisher_token()}",
                        "Content-Type": "application/json"}

    async def __call__(self, *, expect: int = 201, **body: Any) -> list[int]:
        resp = await self.client.post("/notifications", content=orjson.dumps(body), headers=self.headers)
        assert resp.status_code == expect, resp.text
        return resp.json()["ids"]


# -- WebSocket ---------------------------------------------------------------------------

class WSStream:
    """JSON frames over one ``websockets`` connection."""

    def __init__(self, ws: ClientConnection):
        self.ws = ws
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: Any) -> None:
        await self.ws.send(frame if isinstance(frame, (str, bytes)) else orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next frame, decoded; every server frame must be a JSON text frame."""
        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        assert isinstance(raw, str), f"binary frame from the server: {raw!r}"
        return orjson.loads(raw)

    async def next_of(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame.get("type") == kind:
                    return frame

    async def notifications(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                out.append(await self.next_of("notification", timeout))
        return out

    async def close_code(self, timeout: float = 5.0) -> int | None:
        """Read until the server closes; returns the close code it sent. Frames received
        meanwhile are returned by :attr:`frames_before_close`."""
        self.frames_before_close: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    raw = await self.ws.recv()
                except ConnectionClosed as closed:
                    return closed.rcvd.code if closed.rcvd is not None else None
                self.frames_before_close.append(orjson.loads(raw))


@asynccontextmanager
async def open_ws(server: ServerProcess, token: str | None = None, *, query: str = "",
                  auth: dict[str, Any] | None = None, expect_hello: bool = True,
                  **kwargs: Any) -> AsyncIterator[WSStream]:
    """Connect to ``/ws`` (``?token=`` when ``token`` is given, then ``auth`` sent as the
    first frame when given) and, unless ``expect_hello=False``, read the first server frame,
    which must be ``auth_success``, into ``.hello``."""
    params = []
    if token is not None:
        params.append(f"token={token}")
    if query:
        params.append(query)
    url = server.ws_url + ("?" + "&".join(params) if params else "")
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 2)
    async with connect(url, **kwargs) as ws:
        stream = WSStream(ws)
        if auth is not None:
            await stream.send(auth)
        if expect_hello:
            first = await stream.recv()
            assert first.get("type") == "auth_success", first
            stream.hello = first
        yield stream


# -- raw SSE lines -----------------------------------------------------------------------

@asynccontextmanager
async def sse_lines(server: ServerProcess, token: str, *, query: str = "",
                    client: httpx.AsyncClient | None = None
                    ) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[str]]]:
    """``GET /events?token=...`` as (response, raw line iterator); nothing is read yet."""
    path = f"/events?token={token}" + (f"&{query}" if query else "")
    own = client is None
    c = client or server.client()
    try:
        async with c.stream("GET", path, timeout=httpx.Timeout(10.0, read=None)) as resp:
            yield resp, resp.aiter_lines()
    finally:
        if own:
            await c.aclose()


# -- metrics -----------------------------------------------------------------------------

async def scrape(client: httpx.AsyncClient) -> dict[str, float]:
    """``/metrics`` as {'name{labels}': value}."""
    resp = await client.get("/metrics")
    assert resp.status_code == 200, resp.text
    out: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def metrics(server: ServerProcess) -> dict[str, float]:
    async with server.client() as c:
        return await scrape(c)


OPEN_SSE = 'sse_notify_open_streams{transport="sse"}'
OPEN_WS = 'sse_notify_open_streams{transport="ws"}'


async def wait_for_metric(server: ServerProcess, predicate: Callable[[dict[str, float]], bool],
                          timeout: float = 5.0) -> dict[str, float]:
    """Poll ``/metrics`` until ``predicate`` holds (AssertionError with the last values
    after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        values = await metrics(server)
        if predicate(values):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never satisfied the condition: {values}")
        await asyncio.sleep(0.05)
