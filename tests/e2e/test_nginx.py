"""Behind a load balancer: Debian's nginx, configured by ``docs/nginx.conf`` (the file the
README shows), in front of two nodes sharing one PostgreSQL store. EventSource clients
(npm ``eventsource``) connect through nginx; one node is SIGKILLed; its clients reconnect
through nginx to the other node by themselves and resume from their ``Last-Event-ID``:
every notification arrives once, in order.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest

from ..helpers import ServerProcess
from ..nginx import Nginx, nginx_binary
from .test_clients import _node_client, next_line, process

CLIENTS = 6

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (bash .ci/run installs it)")


async def publish(client: httpx.AsyncClient, token: str, title: str) -> int:
    resp = await client.post("/notifications", json={"user": "alice", "title": title},
                             headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 201, resp.text
    return resp.json()["ids"][0]


async def test_eventsource_clients_through_nginx_survive_a_node_kill(
        make_server: Callable[..., ServerProcess], postgres_url: str, tmp_path: Path) -> None:
    env = {"SSE_NOTIFY_SECRET": secrets.token_urlsafe(32)}
    nodes = [make_server("--store", postgres_url, "--retry", "200", env=env) for _ in range(2)]
    nginx = Nginx(tmp_path / "nginx", [n.port for n in nodes]).start()
    argv = _node_client()
    url = f"{nginx.url}/events?token={nodes[0].token('alice', ttl=600)}"
    publisher = nodes[0].publisher_token()
    try:
        async with AsyncExitStack() as stack, httpx.AsyncClient(base_url=nginx.url, timeout=10) as client:
            clients = [await stack.enter_async_context(process(*argv, url)) for _ in range(CLIENTS)]
            for c in clients:
                hello = await next_line(c, lambda e: e.get("type") == "hello")
                assert hello["data"]["replay"] == "live"
            before = [await publish(client, publisher, f"before {i}") for i in range(3)]
            # nginx spread the clients over both nodes: the kill below cuts some of them off.
            opened = [(await _open_streams(n)) for n in nodes]
            assert all(count > 0 for count in opened), opened

            await asyncio.to_thread(nodes[1].kill)
            during = [await publish(client, publisher, f"during {i}") for i in range(3)]
            after = [await publish(client, publisher, f"after {i}") for i in range(3)]

            for c in clients:
                got = [await next_line(c, lambda e: e.get("type") == "notification")
                       for _ in range(len(before + during + after))]
                assert [e["data"]["id"] for e in got] == before + during + after
                assert [e["id"] for e in got] == [str(i) for i in before + during + after]
            assert await _open_streams(nodes[0]) == CLIENTS  # all of them resumed on the survivor
    finally:
        nginx.stop()


async def _open_streams(node: ServerProcess) -> int:
    async with node.client() as c:
        text = (await c.get("/metrics")).text
    return int(next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith('sse_notify_open_streams{transport="sse"}')))
