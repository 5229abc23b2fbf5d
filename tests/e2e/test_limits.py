"""The limits of ``serve``, against the real server: open streams per user and in all,
the publish rate per publisher (429 + Retry-After), WebSocket message size and request
header size. Each refusal is the contract's JSON error (or, on an upgraded WebSocket, an
error frame and a close code), and what was refused does not count against anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from ..helpers import ServerProcess, open_sse, poll
from .wsclient import open_ws


async def sse_status(server: ServerProcess, token: str) -> httpx.Response:
    """The answer to ``GET /events`` when it is refused (the body is read whole)."""
    async with server.client() as c:
        return await c.get(f"/events?token={token}")


async def open_stream_count(server: ServerProcess) -> int:
    async with server.client() as c:
        text = (await c.get("/metrics")).text
    return sum(int(float(line.split()[-1])) for line in text.splitlines()
               if line.startswith("sse_notify_open_streams{"))


async def test_streams_per_user(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--max-user-streams", "2")
    alice = server.token("alice")
    async with AsyncExitStack() as streams:
        await streams.enter_async_context(open_sse(server, alice))
        ws = await streams.enter_async_context(open_ws(server, alice))
        # a third stream of alice's: refused over SSE (429) and over WebSocket (4429)
        resp = await sse_status(server, alice)
        assert resp.status_code == 429 and resp.json()["error"] == "too_many_streams", resp.text
        async with open_ws(server, alice, expect_hello=False) as third:
            frame = await third.recv()
            assert frame["type"] == "error" and frame["error"] == "too_many_streams"
            assert await third.close_code() == 4429
        # other users are not affected, and alice's streams still deliver
        async with open_sse(server, server.token("bob")) as bob:
            [nid] = await server.publish(broadcast=True, title="to all")
            assert (await bob.notifications(1))[0]["id"] == nid
            assert (await ws.notifications(1))[0]["id"] == nid
    # closed streams give their slots back
    assert await poll(lambda: _count_is(server, 0))
    async with open_sse(server, alice), open_sse(server, alice):
        pass


async def _count_is(server: ServerProcess, n: int) -> bool:
    return await open_stream_count(server) == n


async def test_streams_in_all(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--max-streams", "2")
    async with open_sse(server, server.token("a")), open_ws(server, server.token("b")):
        resp = await sse_status(server, server.token("c"))
        assert resp.status_code == 503 and resp.json()["error"] == "server_busy"
        assert resp.headers["Retry-After"] == "5"
        async with open_ws(server, server.token("c"), expect_hello=False) as ws:
            assert (await ws.recv())["error"] == "server_busy"
            assert await ws.close_code() == 1013
    assert await poll(lambda: _count_is(server, 0))
    async with open_sse(server, server.token("c")) as stream:
        assert stream.hello.json()["user"] == "c"


async def test_publish_rate_per_publisher(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--publish-rate", "1", "--publish-burst", "2")

    async def publish(name: str) -> httpx.Response:
        return await c.post("/notifications", json={"user": "alice", "title": "t"},
                            headers={"Authorization": f"Bearer {server.signer.publisher(name)}"})

    async with server.client() as c:
        assert [(await publish("backend")).status_code for _ in range(2)] == [201, 201]  # the burst
        refused = await publish("backend")
        assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 2
        assert (await publish("other-backend")).status_code == 201  # buckets are per publisher
        refused_at = time.monotonic()
        while time.monotonic() < refused_at + retry_after:  # the bucket refills with time
            await asyncio.sleep(0.05)
        assert (await publish("backend")).status_code == 201
        history = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token('alice')}"})
        assert len(history.json()["notifications"]) == 4  # refused publishes stored nothing


async def test_websocket_message_size(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--max-frame", "1000", "--max-body", "100000")
    async with open_ws(server, server.token("alice")) as ws:
        await ws.send({"type": "ping", "pad": "x" * 900})
        assert await ws.recv() == {"type": "pong"}
        await ws.send({"type": "ping", "pad": "x" * 1100})
        assert await ws.close_code() == 1009  # message too big


async def test_request_header_size(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--max-header", "2048")
    async with server.client() as c:
        ok = await c.get("/healthz", headers={"X-Pad": "x" * 1500})
        assert ok.status_code == 200
        for path in ("/healthz", f"/events?token={server.token('alice')}", "/notifications"):
            resp = await c.get(path, headers={"X-Pad": "x" * 3000})
            assert resp.status_code == 431, (path, resp.status_code)
            assert resp.json()["error"] == "header_too_large"
        resp = await c.get("/healthz?" + "q=1&" * 700)  # the query string counts too
        assert resp.status_code == 431
    with pytest.raises(Exception) as refused:  # a WebSocket upgrade is refused before accept
        async with ws_connect(f"{server.ws_url}?token={server.token('alice')}",
                              additional_headers={"X-Pad": "x" * 3000}):
            pass
    assert not isinstance(refused.value, ConnectionClosed)
    assert "431" in str(refused.value)
    async with open_ws(server, server.token("alice")) as ws:  # within the limit it works
        await ws.send(orjson.dumps({"type": "ping"}).decode())
        assert await ws.recv() == {"type": "pong"}
