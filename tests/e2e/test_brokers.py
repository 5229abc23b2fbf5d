"""``serve --broker``: a single node on the real PostgreSQL (LISTEN/NOTIFY) and Redis
brokers delivers as on the in-process one, reports the broker in /healthz and the follower
in /metrics, and a broker URL it cannot use stops it with one line, before it listens."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from ..helpers import ServerProcess, open_sse, poll
from ..services import admin
from .test_cli import run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["postgres", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


async def test_a_node_delivers_through_a_network_broker(
        make_server: Callable[..., ServerProcess], broker_url: str) -> None:
    server = make_server("--broker", broker_url)
    async with open_sse(server, server.token("alice")) as stream:
        ids = []
        for i in range(5):
            ids += await server.publish(user="alice", title=f"n{i}")
        ids += await server.publish(broadcast=True, title="everyone")
        events = await stream.notifications(6)
    assert [e["id"] for e in events] == ids == sorted(ids)
    async with server.client() as c:
        assert (await c.get("/healthz")).json() == {"status": "ok"}
        metrics = (await c.get("/metrics")).text
    for name in ("sse_notify_follower_lag", "sse_notify_follower_catchup_reads_total",
                 "sse_notify_follower_caught_up_total", "sse_notify_broker_reconnects_total"):
        assert f"\n{name} " in metrics


async def test_healthz_is_503_while_the_broker_is_unreachable(
        make_server: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = make_server("--broker", postgres_url)
    database = postgres_url.rsplit("/", 1)[1]
    async with server.client() as c:
        assert (await c.get("/healthz")).status_code == 200
        # The broker's database goes away: its connections end, reconnecting fails.
        await admin(f'DROP DATABASE "{database}" WITH (FORCE)')
        try:
            assert await poll(lambda: _status(c, 503), timeout=10)
            body = (await c.get("/healthz")).json()
            assert body["error"] == "unavailable" and "broker" in body["message"]
        finally:
            await admin(f'CREATE DATABASE "{database}"')
        assert await poll(lambda: _status(c, 200), timeout=15)
    async with open_sse(server, server.token("alice")) as stream:  # and it delivers again
        ids = await server.publish(user="alice", title="back")
        [event] = await stream.notifications(1)
    assert event["id"] == ids[0]


async def _status(client: httpx.AsyncClient, status: int) -> bool:
    return (await client.get("/healthz")).status_code == status


@pytest.mark.parametrize("url, message", [
    ("foo://x", "unsupported broker URL scheme: 'foo'"),
    ("redis://127.0.0.1:1/0", "cannot reach Redis at redis://127.0.0.1:1/0"),
    ("postgresql://u:secret@127.0.0.1:1/db", "cannot reach PostgreSQL at postgresql://u:***@127.0.0.1:1/db"),
])
def test_a_broker_it_cannot_use_stops_serve_with_one_line(tmp_path: Path, url: str, message: str) -> None:
    result = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--broker", url)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert "secret" not in lines[0]  # a password never in a message
