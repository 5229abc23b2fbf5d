"""``GET /presence`` across three real nodes sharing one PostgreSQL database: streams open
on different nodes are summed and every node answers the same within 2 seconds, as they
open and as they close (``last_seen`` then the same everywhere); a SIGKILLed node's
streams stop counting once its heartbeat is ``SSE_NOTIFY_PRESENCE_TTL`` old (lowered to
3 s here so the test stays short; the default is 15 s, within the contract's 30). The
processes of ``serve --workers 2`` count as nodes too. A node cut off from PostgreSQL
answers presence with 503 and stops counting for the others, and counts again when it is
back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..helpers import ServerProcess, assert_error, open_sse, poll, uid
from ..test_store_postgres import Proxy, through
from .test_postgres import PgServer
from .test_presence import ACCURACY, epoch_ms, presence
from .wsclient import WS_SERVER_FLAGS, auth_headers, open_ws

pytestmark = pytest.mark.timeout(90)

TTL = 3.0


@pytest.fixture
def three_nodes(tmp_path: Path, postgres_url: str) -> Iterator[list[PgServer]]:
    """Three nodes on one database, started together, all with the short presence ttl."""
    nodes = [PgServer(tmp_path / f"node{i}", postgres_url, *WS_SERVER_FLAGS,
                      env={"SSE_NOTIFY_PRESENCE_TTL": str(TTL)}) for i in range(3)]
    nodes[0].start()  # the first creates the schema and the cluster's secret; the rest at once
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            list(pool.map(PgServer.start, nodes[1:]))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


async def everywhere(nodes: list[PgServer], user: str, streams: int, timeout: float = ACCURACY) -> list[dict[str, Any]]:
    """Poll every node until each answers ``streams`` for ``user`` (with a deadline); the
    last answer of each."""
    seen: dict[int, dict[str, Any]] = {}

    async def check() -> bool:
        answers = await asyncio.gather(*(presence(node, user) for node in nodes))
        seen.update((i, answer[user]) for i, answer in enumerate(answers))
        return all(answer["streams"] == streams for answer in seen.values())

    assert await poll(check, timeout), f"{user}: {seen} after {timeout} s, wanted {streams} streams"
    return [seen[i] for i in range(len(nodes))]


async def test_streams_on_different_nodes_are_summed_and_seen_from_every_node(
        three_nodes: list[PgServer]) -> None:
    a, b, c = three_nodes
    user, other = uid("alice"), uid("bob")
    token = a.token(user)  # one secret for the cluster: valid on every node
    async with open_sse(a, token), open_sse(a, token), open_ws(b, token):
        online = {"online": True, "streams": 3, "last_seen": None}
        assert await everywhere(three_nodes, user, 3) == [online] * 3
        async with open_sse(c, c.token(other)):
            await everywhere(three_nodes, other, 1)
            assert (await presence(b, user, other))[user]["streams"] == 3
        await everywhere(three_nodes, other, 0)
        closing = int(time.time() * 1000)
    answers = await everywhere(three_nodes, user, 0)
    last_seen = answers[0]["last_seen"]
    assert answers == [{"online": False, "streams": 0, "last_seen": last_seen}] * 3
    assert closing - 1000 <= epoch_ms(last_seen) <= int(time.time() * 1000) + 1000  # the database's clock


async def test_a_killed_nodes_streams_stop_counting_after_the_ttl(three_nodes: list[PgServer]) -> None:
    a, b, c = three_nodes
    user = uid("carol")
    async with open_sse(a, a.token(user)) as doomed, open_sse(b, b.token(user)):
        await everywhere(three_nodes, user, 2)
        a.kill()
        killed = time.monotonic()
        with pytest.raises((EOFError, httpx.HTTPError)):
            await doomed.next(timeout=5)
        # Still counted until its heartbeat is TTL old, then not, on both nodes left.
        answers = await everywhere([b, c], user, 1, timeout=TTL + ACCURACY)
        assert time.monotonic() - killed <= TTL + ACCURACY
        assert answers == [{"online": True, "streams": 1, "last_seen": None}] * 2
    answers = await everywhere([b, c], user, 0)
    assert answers[0]["last_seen"] is not None and answers[0] == answers[1]


async def test_the_processes_of_one_server_are_counted_together(
        make_server: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = make_server("--workers", "2", "--store", postgres_url, "--no-access-log",
                         env={"SSE_NOTIFY_SECRET": secrets.token_urlsafe(32)})
    user = uid("dave")
    async with AsyncExitStack() as stack:
        for _ in range(10):  # the kernel spreads them over both workers
            await stack.enter_async_context(open_sse(server, server.token(user)))
        await everywhere([server], user, 10)
        # Each call a new connection, so answered by either worker: all the same.
        answers = [(await presence(server, user))[user]["streams"] for _ in range(10)]
        assert answers == [10] * 10
    await everywhere([server], user, 0)


async def test_a_node_cut_off_from_postgresql_answers_503_and_counts_again_when_back(
        tmp_path: Path, postgres_url: str) -> None:
    target = httpx.URL(postgres_url)
    proxy = Proxy((target.host, target.port or 5432))
    await proxy.up()
    env = {"SSE_NOTIFY_SECRET": secrets.token_urlsafe(32), "SSE_NOTIFY_PRESENCE_TTL": str(TTL)}
    cut = PgServer(tmp_path / "cut", through(proxy, postgres_url), env=env)
    other = PgServer(tmp_path / "other", postgres_url, env=env)
    await asyncio.gather(asyncio.to_thread(cut.start), asyncio.to_thread(other.start))  # the proxy runs here
    user = uid("erin")
    try:
        async with open_sse(cut, cut.token(user)):
            await everywhere([cut, other], user, 1)
            await proxy.down()
            started = time.monotonic()
            async with cut.client() as c:
                resp = await c.get("/presence", params={"user": user}, headers=auth_headers(cut.publisher_token()))
            assert_error(resp, 503)
            assert time.monotonic() - started < 6
            await everywhere([other], user, 0, timeout=TTL + ACCURACY)  # its beats no longer arrive
            await proxy.up()
            await everywhere([cut, other], user, 1, timeout=ACCURACY + 3)  # + reconnecting
    finally:
        await asyncio.gather(asyncio.to_thread(cut.stop), asyncio.to_thread(other.stop))
        await proxy.down()
    assert "Traceback" not in cut.log, cut.log
