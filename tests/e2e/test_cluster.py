"""Several nodes, as one service: three ``sse-notify serve`` processes on three ports share
one PostgreSQL database (a fresh one for the module) and its default LISTEN/NOTIFY broker.
A stream on any node gets what is published on every node, in id order; read marks,
idempotency keys, cursors and tokens work across nodes as on one.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest

from ..helpers import ServerProcess, open_sse, uid
from ..services import create_database, drop_database


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def nodes(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Three nodes; the first creates the cluster's secret in the database, the others
    find it there (no ``SSE_NOTIFY_SECRET``)."""
    started: list[ServerProcess] = []
    try:
        for i in range(3):
            started.append(ServerProcess(tmp_path_factory.mktemp(f"node{i}"), "--store", store_url).start())
        yield started
    finally:
        for node in started:
            node.stop()


def mint(store_url: str, *args: str) -> str:
    """A token printed by ``sse-notify token --store``: signed with the cluster's one secret."""
    out = subprocess.run([sys.executable, "-m", "sse_notify", "token", *args, "--store", store_url],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


@pytest.fixture(scope="module")
def tokens(store_url: str, nodes: list[ServerProcess]) -> dict[str, str]:
    return {"publisher": mint(store_url, "--publisher", "backend"),
            "alice": mint(store_url, "alice"), "bob": mint(store_url, "bob")}


async def send(node: ServerProcess, token: str, body: object,
               headers: dict[str, str] | None = None) -> tuple[int, list[int]]:
    async with node.client() as c:
        resp = await c.post("/notifications", content=orjson.dumps(body),
                            headers={"Authorization": f"Bearer {token}", **(headers or {})})
    assert resp.status_code in (200, 201), resp.text
    return resp.status_code, resp.json()["ids"]


async def post(node: ServerProcess, token: str, body: object) -> list[int]:
    status, ids = await send(node, token, body)
    assert status == 201
    return ids


async def test_every_node_accepts_the_clusters_tokens(nodes: list[ServerProcess], tokens: dict[str, str]) -> None:
    for node in nodes:
        async with node.client() as c:
            resp = await c.get("/notifications", headers={"Authorization": f"Bearer {tokens['alice']}"})
        assert resp.status_code == 200, resp.text


async def test_a_stream_on_one_node_gets_what_every_node_publishes_in_id_order(
        nodes: list[ServerProcess], tokens: dict[str, str], store_url: str) -> None:
    user = uid("cl")
    token = mint(store_url, user)
    async with open_sse(nodes[0], token) as a, open_sse(nodes[1], token) as b:
        posts = [post(nodes[i % 3], tokens["publisher"], {"user": user, "title": f"n{i}"}) for i in range(30)]
        ids = sorted(i for batch in await asyncio.gather(*posts) for i in batch)
        for stream in (a, b):
            assert [n["id"] for n in await stream.notifications(len(ids))] == ids


async def test_marking_read_on_one_node_reaches_streams_on_another(
        nodes: list[ServerProcess], tokens: dict[str, str]) -> None:
    [nid] = await post(nodes[2], tokens["publisher"], {"user": "alice", "title": "read me"})
    async with open_sse(nodes[1], tokens["alice"]) as stream:
        async with nodes[0].client() as c:
            resp = await c.post("/notifications/read", json={"ids": [nid]},
                                headers={"Authorization": f"Bearer {tokens['alice']}"})
        assert resp.status_code == 200, resp.text
        event = await stream.next_of("read")
        assert event.json() == {"ids": [nid]}


async def test_an_idempotent_retry_on_another_node_returns_the_first_answer(
        nodes: list[ServerProcess], tokens: dict[str, str]) -> None:
    body = {"users": ["alice", "bob"], "title": "once"}
    key = {"Idempotency-Key": uid("key")}
    first = await send(nodes[0], tokens["publisher"], body, key)
    assert first[0] == 201
    assert [await send(n, tokens["publisher"], body, key) for n in nodes[1:]] == [(200, first[1])] * 2
    # The same key racing on every node at once is still stored once.
    key = {"Idempotency-Key": uid("race")}
    answers = await asyncio.gather(*(send(n, tokens["publisher"], body, key) for n in nodes))
    assert sorted(status for status, _ in answers) == [200, 200, 201]
    assert len({tuple(ids) for _, ids in answers}) == 1


async def test_a_cursor_from_one_node_resumes_on_another(
        nodes: list[ServerProcess], tokens: dict[str, str]) -> None:
    async with open_sse(nodes[0], tokens["bob"]) as stream:
        seen = await post(nodes[0], tokens["publisher"], {"user": "bob", "title": "seen"})
        assert [n["id"] for n in await stream.notifications(1)] == seen
    missed = [i for _ in range(3) for i in await post(nodes[2], tokens["publisher"], {"user": "bob", "title": "missed"})]
    async with open_sse(nodes[1], tokens["bob"], headers={"Last-Event-ID": str(seen[0])}) as stream:
        assert stream.hello.json()["replay"] == "resumed"  # type: ignore[attr-defined]
        assert [n["id"] for n in await stream.notifications(3)] == missed
