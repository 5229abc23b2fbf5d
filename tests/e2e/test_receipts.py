"""Delivery and read receipts, ``GET /notifications/<id>/status``, end to end: on one
SQLite node, and on three PostgreSQL nodes (published on one, streamed on another, asked
on the third). ``delivered_at`` comes from live delivery and from replay at a reconnect,
over SSE and WebSocket; ``read_at`` from every read path.

Receipts are flushed in batches (about every 0.5 s), so a test polls the status until the
receipt shows up, for a few seconds at most.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from ..helpers import ISO_MS, ServerProcess, assert_error, open_sse, poll, uid
from ..services import create_database, drop_database
from .wsclient import open_ws


@dataclass
class Deployment:
    nodes: list[ServerProcess]  # three entries; on SQLite the same node three times
    mint: Any  # (user | None) -> token; None: the publisher

    def token(self, user: str) -> str:
        return self.mint(user)

    @property
    def publisher(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.mint(None)}"}


def _mint_cli(store_url: str, user: str | None) -> str:
    args = ["--publisher", "backend"] if user is None else [user]
    return subprocess.run([sys.executable, "-m", "sse_notify", "token", *args, "--store", store_url],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if request.param == "sqlite":
        server = ServerProcess(tmp_path_factory.mktemp("receipts")).start()
        try:
            yield Deployment([server] * 3, lambda u: server.publisher_token() if u is None else server.token(u))
        finally:
            server.stop()
        return
    url = create_database()
    nodes: list[ServerProcess] = []
    try:
        for i in range(3):
            nodes.append(ServerProcess(tmp_path_factory.mktemp(f"rnode{i}"), "--store", url).start())
        publisher = _mint_cli(url, None)
        cache: dict[str, str] = {}

        def mint(user: str | None) -> str:
            if user is None:
                return publisher
            if user not in cache:
                cache[user] = _mint_cli(url, user)
            return cache[user]
        yield Deployment(nodes, mint)
    finally:
        for node in nodes:
            node.stop()
        drop_database(url)


async def publish(d: Deployment, node: ServerProcess, **body: Any) -> list[int]:
    async with node.client() as c:
        resp = await c.post("/notifications", content=orjson.dumps(body), headers=d.publisher)
    assert resp.status_code == 201, resp.text
    return resp.json()["ids"]


async def status(d: Deployment, node: ServerProcess, id: int) -> dict[str, Any]:
    async with node.client() as c:
        resp = await c.get(f"/notifications/{id}/status", headers=d.publisher)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def receipt_of(d: Deployment, node: ServerProcess, id: int, user: str, field: str,
                     timeout: float = 5.0) -> str:
    """Poll until ``field`` of ``user``'s receipt is set; returns it."""
    seen: dict[str, Any] = {}

    async def has_it() -> bool:
        seen.update(await status(d, node, id))
        return seen["users"][user][field] is not None
    assert await poll(has_it, timeout), seen
    value = seen["users"][user][field]
    assert ISO_MS.match(value), value
    return value


def ms(iso: str) -> float:
    return time.mktime(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone + int(iso[20:23]) / 1000


async def test_live_delivery_sets_delivered_at_and_nothing_else(deployment: Deployment) -> None:
    d, (a, b, c) = deployment, deployment.nodes
    user = uid("live")
    async with open_sse(b, d.token(user)) as stream:
        before = time.time()
        [nid] = await publish(d, a, user=user, title="hi")
        [got] = await stream.notifications(1)
        after = time.time()
        assert got["id"] == nid
        delivered = await receipt_of(d, c, nid, user, "delivered_at")
    assert before - 1 <= ms(delivered) <= after + 1
    answer = await status(d, a, nid)
    assert answer == {"id": nid, "broadcast": False, "users": {user: {"delivered_at": delivered, "read_at": None}}}


async def test_replay_to_a_user_offline_when_published_sets_delivered_at(deployment: Deployment) -> None:
    d, (a, b, c) = deployment, deployment.nodes
    user = uid("off")
    [first] = await publish(d, a, user=user, title="one")
    [nid] = await publish(d, a, user=user, title="two")
    # Nobody has seen it: nothing is recorded (a flush later still nothing).
    assert (await status(d, b, nid))["users"][user] == {"delivered_at": None, "read_at": None}
    async with open_sse(c, d.token(user), query=f"last_event_id={first}") as stream:
        [got] = await stream.notifications(1)
        assert got["id"] == nid and stream.hello.json()["replay"] == "resumed"
        await receipt_of(d, b, nid, user, "delivered_at")
    assert (await status(d, a, first))["users"][user]["delivered_at"] is None  # not replayed: not delivered


async def test_websocket_delivery_and_the_first_time_wins(deployment: Deployment) -> None:
    d, (a, b, c) = deployment, deployment.nodes
    user = uid("ws")
    async with open_ws(a, d.token(user)) as ws:
        [nid] = await publish(d, b, user=user, title="hi")
        [got] = await ws.notifications(1)
        assert got["id"] == nid
        first = await receipt_of(d, c, nid, user, "delivered_at")
    # Delivered again by a replay on another node: the first time stays.
    async with open_sse(b, d.token(user), query=f"last_event_id={nid - 1}") as stream:
        await stream.notifications(1)
    async with open_sse(c, d.token(user), query=f"last_event_id={nid - 1}") as stream:
        await stream.notifications(1)
    assert (await status(d, a, nid))["users"][user]["delivered_at"] == first


async def test_each_read_path_sets_read_at(deployment: Deployment) -> None:
    d, (a, b, c) = deployment, deployment.nodes
    user = uid("rd")
    auth = {"Authorization": f"Bearer {d.token(user)}"}
    one, listed, everything, by_frame = await publish(d, a, users=[user], title="x") + \
        await publish(d, a, user=user, title="y") + await publish(d, a, user=user, title="z") + \
        await publish(d, a, user=user, title="w")
    for nid in (one, listed, everything, by_frame):
        assert (await status(d, c, nid))["users"][user]["read_at"] is None
    async with b.client() as client:
        assert (await client.post(f"/notifications/{one}/read", headers=auth)).status_code == 204
        assert (await status(d, c, one))["users"][user]["read_at"] is not None  # a commit: no delay
        resp = await client.post("/notifications/read", content=orjson.dumps({"ids": [listed]}), headers=auth)
        assert resp.json() == {"updated": 1}
        assert (await status(d, a, listed))["users"][user]["read_at"] is not None
        assert (await status(d, a, everything))["users"][user]["read_at"] is None
    async with open_ws(c, d.token(user)) as ws:
        await ws.send({"type": "read", "ids": [by_frame]})
        assert (await ws.next_of("read"))["ids"] == [by_frame]
    assert (await status(d, b, by_frame))["users"][user]["read_at"] is not None
    assert (await status(d, b, everything))["users"][user]["read_at"] is None
    async with a.client() as client:
        resp = await client.post("/notifications/read", content=b'{"all": true}', headers=auth)
    assert resp.status_code == 200
    read_at = (await status(d, c, everything))["users"][user]["read_at"]
    assert ISO_MS.match(read_at)
    first = (await status(d, c, one))["users"][user]["read_at"]
    async with a.client() as client:  # marking again changes nothing, the time included
        await client.post(f"/notifications/{one}/read", headers=auth)
    assert (await status(d, c, one))["users"][user]["read_at"] == first


async def test_users_get_one_receipt_each_and_a_broadcast_counts_its_readers(deployment: Deployment) -> None:
    d, (a, b, c) = deployment, deployment.nodes
    ann, ben = uid("ann"), uid("ben")
    ids = await publish(d, a, users=[ann, ben], title="both")
    assert [list((await status(d, b, nid))["users"]) for nid in ids] == [[ann], [ben]]
    [bid] = await publish(d, a, broadcast=True, title="all")
    async with open_sse(b, d.token(ann), query=f"last_event_id={bid - 1}") as stream:
        await stream.notifications(1)  # a broadcast delivered: no per-user receipt, nothing else
    assert await status(d, c, bid) == {"id": bid, "broadcast": True, "read": 0}
    async with c.client() as client:
        for user in (ann, ben):
            await client.post(f"/notifications/{bid}/read", headers={"Authorization": f"Bearer {d.token(user)}"})
    assert await status(d, a, bid) == {"id": bid, "broadcast": True, "read": 2}


async def test_unknown_ids_and_wrong_tokens(deployment: Deployment) -> None:
    d, a = deployment, deployment.nodes[0]
    async with a.client() as client:
        for path in ("/notifications/987654321/status", f"/notifications/{2**63}/status"):
            assert_error(await client.get(path, headers=d.publisher), 404)
        [nid] = await publish(d, a, user="alice", title="t")
        assert_error(await client.get(f"/notifications/{nid}/status"), 401)
        subscriber = {"Authorization": f"Bearer {d.token('alice')}"}
        assert_error(await client.get(f"/notifications/{nid}/status", headers=subscriber), 401)
        assert_error(await client.get("/notifications/abc/status", headers=d.publisher), 404)
