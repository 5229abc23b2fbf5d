"""sse_notify.store.postgres: what only several nodes on one database show -- commit-ordered
ids with no holes, idempotency keys and pruning across nodes, the shared secret -- and how
it fails: configuration errors in one line, PostgreSQL unreachable or its connections killed
-> StoreUnavailable within seconds, then recovery by itself. Each store instance plays a node.

The tests that cut the store off from PostgreSQL put a small TCP proxy of their own in
between (:class:`Proxy`), so the shared server itself is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
import pytest

from sse_notify.models import Notification, NotificationDraft
from sse_notify.store import StoreConfigError, StoreUnavailable
from sse_notify.store.pg_schema import MIGRATIONS, PRUNE_LOCK
from sse_notify.store.postgres import PostgresStore

from .services import PG_ADMIN_URL

pytestmark = pytest.mark.timeout(90)


def draft(user: str | None = "alice", title: str = "t") -> NotificationDraft:
    return NotificationDraft(user, title)


@asynccontextmanager
async def nodes(url: str, count: int) -> AsyncIterator[list[PostgresStore]]:
    """``count`` stores on one database, opened at the same time."""
    stores = [PostgresStore(url) for _ in range(count)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        yield stores
    finally:
        await asyncio.gather(*(s.close() for s in stores))


# -- ids --------------------------------------------------------------------------------

async def test_ids_are_committed_in_order_across_nodes_with_no_holes(postgres_url: str) -> None:
    """Nodes publish concurrently while a reader follows the log: every read shows a gap-free
    prefix of the ids (it never sees n+1 before n), and max_id() never runs ahead of it."""
    # (Checked: with ids from a sequence instead, and 1 ms between taking them and committing,
    # this test sees a hole.)
    async with nodes(postgres_url, 4) as stores:
        done = asyncio.Event()
        reads = 0

        async def writer(store: PostgresStore, n: int) -> list[int]:
            ids: list[int] = []
            for i in range(40):
                ids += (await store.add([draft(f"u{n}"), draft(None)][: 1 + i % 2], "pub")).ids
            return ids

        async def reader(store: PostgresStore) -> None:
            nonlocal reads
            seen = 0
            while not done.is_set() or seen < await store.max_id():
                newest = await store.max_id()
                log = await store.since(seen, 100_000)
                assert [n.id for n in log] == list(range(seen + 1, seen + 1 + len(log))), "a hole"
                assert seen + len(log) >= newest, "max_id() ahead of what is visible"
                seen += len(log)
                reads += 1

        reading = asyncio.create_task(reader(stores[0]))
        written = await asyncio.gather(*(writer(stores[i % 4], i) for i in range(40)))
        done.set()
        await reading
        every = sorted(i for ids in written for i in ids)
        assert every == list(range(1, len(every) + 1))  # distinct, no holes
        assert all(ids == sorted(ids) for ids in written)  # each writer's ids increase
        assert reads > 10


async def test_each_nodes_batches_reach_on_commit_in_id_order(postgres_url: str) -> None:
    async with nodes(postgres_url, 2) as stores:
        seen: list[list[int]] = [[], []]
        for store, ids in zip(stores, seen):
            store.on_commit = lambda batch, ids=ids: ids.extend(n.id for n in batch)
        await asyncio.gather(*(stores[i % 2].add([draft(), draft()], "pub") for i in range(100)))
        for ids in seen:
            assert ids == sorted(ids)
        assert sorted(seen[0] + seen[1]) == list(range(1, 201))


async def test_a_rolled_back_batch_returns_its_ids(postgres_url: str) -> None:
    async with nodes(postgres_url, 1) as [store]:
        await store.add([draft()], "pub")
        with pytest.raises(StoreUnavailable):  # the insert fails after taking ids: NOT NULL title
            await store.add([NotificationDraft("alice", None)], "pub")  # type: ignore[arg-type]
        assert (await store.add([draft()], "pub")).ids == [2]
        assert await store.max_id() == 2


# -- schema -----------------------------------------------------------------------------

async def test_nodes_opening_together_migrate_once(postgres_url: str) -> None:
    async with nodes(postgres_url, 4) as stores:
        conn = await asyncpg.connect(postgres_url)
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
        finally:
            await conn.close()
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert (await stores[3].add([draft()], "pub")).ids == [1]


async def test_ping_is_a_write(postgres_url: str) -> None:
    async with nodes(postgres_url, 1) as [store]:
        await store.ping()
        [(probed_at,)] = await store._read("SELECT probed_at FROM health")
        assert probed_at > 0


# -- idempotency across nodes -------------------------------------------------------------

async def test_a_retry_sent_to_another_node_gets_the_first_answer(postgres_url: str) -> None:
    async with nodes(postgres_url, 2) as (a, b):
        first = await a.add([draft(), draft(None)], "pub", "key-1")
        again = await b.add([draft(), draft(None)], "pub", "key-1")
        assert (first.created, again.created) == (True, False)
        assert again.ids == first.ids == [1, 2]


async def test_nodes_racing_with_one_key_store_it_once(postgres_url: str) -> None:
    async with nodes(postgres_url, 2) as (a, b):
        for round_ in range(20):
            key = f"k{round_}"
            results = await asyncio.gather(a.add([draft()], "pub", key), b.add([draft()], "pub", key),
                                           a.add([draft()], "pub", key))
            assert len({tuple(r.ids) for r in results}) == 1
            assert sum(r.created for r in results) == 1
        assert await a.max_id() == 20
        assert [n.id for n in await b.since(0, 100)] == list(range(1, 21))


async def test_a_key_taken_while_a_batch_was_inserting_returns_the_winners_ids(postgres_url: str) -> None:
    """Deterministically: another node's transaction holds the key when this node's lookup
    runs; this node's insert goes ahead, its claim waits, the other commits -> this node
    rolls back (ids included) and answers with the winner's ids."""
    async with nodes(postgres_url, 1) as [store]:
        [winner_id] = (await store.add([draft()], "pub")).ids
        other = await asyncpg.connect(postgres_url)
        try:
            transaction = other.transaction()
            await transaction.start()
            await other.execute("INSERT INTO idempotency (publisher, key, first_id, count, created_at) "
                                "VALUES ('pub', 'k', $1, 1, $2)",
                                winner_id, int(time.time() * 1000))
            racing = asyncio.create_task(store.add([draft()], "pub", "k"))
            await poll_locks_waiting(postgres_url)  # the store's claim waits for the other node
            await transaction.commit()
            result = await racing
        finally:
            await other.close()
        assert (result.created, result.ids) == (False, [winner_id])
        assert await store.max_id() == winner_id  # the loser's ids went back
        assert (await store.add([draft()], "pub")).ids == [winner_id + 1]


async def poll_locks_waiting(url: str, timeout: float = 10) -> None:
    """Until some session of this database waits for a lock."""
    conn = await asyncpg.connect(url)
    try:
        async with asyncio.timeout(timeout):
            while not await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"):
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


# -- retention ------------------------------------------------------------------------

async def test_pruning_runs_on_one_node_at_a_time(postgres_url: str) -> None:
    async with nodes(postgres_url, 2) as (a, b):
        await a.add([draft() for _ in range(10)], "pub")
        holder = await asyncpg.connect(postgres_url)
        try:  # another node is pruning
            await holder.execute("SELECT pg_advisory_lock($1)", PRUNE_LOCK)
            assert await b.prune(2**62, 3) == 0
            assert await a.max_id() == 10 and len(await a.since(0, 100)) == 10
            await holder.execute("SELECT pg_advisory_unlock($1)", PRUNE_LOCK)
        finally:
            await holder.close()
        assert await b.prune(2**62, 3) == 3
        removed = await asyncio.gather(*(s.prune(2**62, 3) for s in (a, b, a, b, a, b)))
        assert sum(removed) == 7  # every row went once, whoever got the lock
        assert await a.state("alice") == await b.state("alice") == (0, 0, 10)  # nodes agree


# -- the shared secret ------------------------------------------------------------------

async def test_nodes_share_one_secret_created_by_the_first(postgres_url: str) -> None:
    async with nodes(postgres_url, 3) as stores:
        assert await stores[0].keyring(create=False) is None  # nobody made one yet
        made = await asyncio.gather(*(s.keyring(create=True) for s in stores))
        assert made[0] is not None and len({k.secret for k in made}) == 1  # type: ignore[union-attr]
        rotated = await stores[1].rotate_secret(3600)
        assert rotated is not None and rotated.previous == made[0].secret  # type: ignore[union-attr]
        assert await stores[2].keyring(create=True) == rotated
        assert rotated.previous_until is not None and rotated.previous_until > time.time() + 3500


async def test_rotating_without_a_secret_changes_nothing(postgres_url: str) -> None:
    async with nodes(postgres_url, 1) as [store]:
        assert await store.rotate_secret(60) is None
        assert await store.keyring(create=False) is None


# -- configuration errors ---------------------------------------------------------------

def _with(url: str, **parts: str) -> str:
    split = urlsplit(url)
    return split._replace(**parts).geturl()


@pytest.mark.parametrize("change, words", [
    ({"netloc": "postgres@127.0.0.1:1"}, "unreachable"),
    ({"netloc": "no_such_role_x@127.0.0.1:5432"}, "no_such_role_x"),
    ({"path": "/no_such_database_x"}, "no such database"),
])
async def test_a_store_it_cannot_use_fails_open_with_one_line(change: dict[str, str], words: str) -> None:
    store = PostgresStore(_with(PG_ADMIN_URL, **change))
    started = time.monotonic()
    with pytest.raises(StoreConfigError) as caught:
        await store.open()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert words in message and "\n" not in message


@pytest.mark.parametrize("url", ["postgresql://someone:s3cret-pw@127.0.0.1:1/x",
                                 "postgresql://someone@127.0.0.1:1/x?password=s3cret-pw",
                                 "postgresql://someone:s3cret-pw@127.0.0.1:notaport/x"])
async def test_a_password_never_shows_in_the_message(url: str) -> None:
    with pytest.raises(StoreConfigError) as caught:
        await PostgresStore(url).open()
    assert "s3cret-pw" not in str(caught.value) and "someone@127.0.0.1:" in str(caught.value)


# -- PostgreSQL going away --------------------------------------------------------------

class Proxy:
    """A TCP proxy to PostgreSQL that a test can cut (``down``: refuse and drop every
    connection), freeze (``frozen``: keep connections open, forward nothing) or have lose
    the answer to the next COMMIT (``lose_commit_answer``, and then go down with
    ``down_after_losing``)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self.frozen = False
        self.lose_commit_answer = False
        self.lost_commits = 0
        self.down_after_losing = False
        self._swallowing = False
        self._downing: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        await asyncio.gather(self._pipe(client_r, server_w, client_w, upstream=True),
                             self._pipe(server_r, client_w, server_w, upstream=False),
                             return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    other: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                while self.frozen:
                    await asyncio.sleep(0.05)
                losing = upstream and self.lose_commit_answer and b"COMMIT" in data
                if losing:
                    self.lose_commit_answer = False
                    self._swallowing = True  # the server commits; its answer never arrives
                if not upstream and self._swallowing:
                    continue
                writer.write(data)
                await writer.drain()
                if losing:
                    await asyncio.sleep(0.3)
                    self.lost_commits += 1
                    self._swallowing = False
                    if self.down_after_losing:  # from another task: down() waits for this one
                        self._downing = asyncio.create_task(self.down())
                    return
        finally:
            writer.transport.abort()
            other.transport.abort()


@pytest.fixture
async def proxy(postgres_url: str) -> AsyncIterator[Proxy]:
    split = urlsplit(postgres_url)
    p = Proxy((split.hostname or "127.0.0.1", split.port or 5432))
    await p.up()
    yield p
    p.frozen = False
    await p.down()


def through(proxy: Proxy, url: str) -> str:
    split = urlsplit(url)
    return _with(url, netloc=f"{split.username}@127.0.0.1:{proxy.port}")


async def answered_unavailable(call: Callable[[], object], within: float) -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await call()  # type: ignore[misc]
    assert time.monotonic() - started < within


async def recovers(store: PostgresStore, timeout: float = 10) -> list[int]:
    """Publishing works again within ``timeout`` (each try answered, none hanging)."""
    return (await recovers_with(lambda: store.add([draft()], "pub"), timeout)).ids


async def recovers_with(call: Callable[[], Any], timeout: float = 10) -> Any:
    """``call()`` until it stops answering StoreUnavailable, within ``timeout``."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await call()
            except StoreUnavailable:
                await asyncio.sleep(0.1)


async def test_postgresql_unreachable_answers_unavailable_then_recovers(postgres_url: str, proxy: Proxy) -> None:
    store = PostgresStore(through(proxy, postgres_url))
    await store.open()
    try:
        [first] = (await store.add([draft()], "pub")).ids
        await proxy.down()
        for call in (lambda: store.add([draft()], "pub"), store.ping, lambda: store.state("alice"),
                     lambda: store.replay("alice", 0, None, 10), lambda: store.mark_read("alice", [1])):
            await answered_unavailable(call, within=4)
        await proxy.up()
        assert await recovers(store) == [first + 1]  # the failed publish took no id
        assert [n.id for n in await store.replay("alice", 0, None, 10)] == [first, first + 1]
    finally:
        await store.close()


async def test_postgresql_not_answering_is_unavailable_within_seconds(postgres_url: str, proxy: Proxy) -> None:
    store = PostgresStore(through(proxy, postgres_url))
    await store.open()
    try:
        await store.add([draft()], "pub")
        proxy.frozen = True
        await answered_unavailable(lambda: store.add([draft()], "pub"), within=8)
        await answered_unavailable(lambda: store.state("alice"), within=8)
        await answered_unavailable(store.ping, within=3)
        proxy.frozen = False
        await recovers(store)
    finally:
        await store.close()


async def test_killed_connections_answer_unavailable_or_work_then_recover(postgres_url: str) -> None:
    """Every connection of the store is killed (pg_terminate_backend), idle or busy, a few
    times over: each call either works or answers StoreUnavailable quickly (nothing else
    escapes: the app would answer 500), and the store then works again by itself."""
    async with nodes(postgres_url, 1) as [store]:
        admin = await asyncpg.connect(postgres_url)
        try:
            for round_ in range(5):
                await recovers(store)
                await store.state("alice")  # the pool holds connections now
                busy = [asyncio.create_task(store.add([draft()], "pub")),
                        asyncio.create_task(store.replay("alice", 0, None, 1000))][: round_ % 2 * 2]
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                assert killed >= 1
                calls = [lambda: store.add([draft()], "pub"), lambda: store.state("alice"), store.ping]
                for call in [*(lambda t=t: t for t in busy), *calls]:
                    started = time.monotonic()
                    try:
                        await call()
                    except StoreUnavailable:
                        pass
                    assert time.monotonic() - started < 4
        finally:
            await admin.close()
        await recovers(store)
        await store.ping()


async def test_a_commit_whose_answer_was_lost_is_found_committed(
        postgres_url: str, proxy: Proxy, caplog: pytest.LogCaptureFixture) -> None:
    store = PostgresStore(through(proxy, postgres_url))
    await store.open()
    committed: list[Notification] = []
    store.on_commit = committed.extend
    try:
        proxy.lose_commit_answer = True
        result = await store.add([draft(), draft(None)], "pub")
        assert proxy.lost_commits == 1
        assert "during COMMIT" in caplog.text  # the path under test: the answer was lost
        assert result.created and result.ids == [1, 2]
        assert [n.id for n in committed] == [1, 2]
        assert [n.id for n in await store.since(0, 10)] == [1, 2]
    finally:
        await store.close()


async def test_a_commit_of_unknown_outcome_is_503_and_a_keyed_retry_gets_the_first_answer(
        postgres_url: str, proxy: Proxy) -> None:
    """COMMIT's answer is lost and PostgreSQL stays out of reach: the publish answers
    StoreUnavailable (it may have committed -- here it did); retried with its idempotency
    key once PostgreSQL is back, it gets the ids it was given, and nothing is stored twice."""
    store = PostgresStore(through(proxy, postgres_url))
    await store.open()
    try:
        proxy.lose_commit_answer = proxy.down_after_losing = True
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="may or may not have committed"):
            await store.add([draft()], "pub", "key-1")
        assert time.monotonic() - started < 8
        await proxy.up()
        retried = await recovers_with(lambda: store.add([draft()], "pub", "key-1"))
        assert (retried.created, retried.ids) == (False, [1])
        assert [n.id for n in await store.since(0, 10)] == [1]
    finally:
        await store.close()


async def test_open_on_a_closed_port_fails_fast_and_close_is_safe() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/x")
    with pytest.raises(StoreConfigError):
        await asyncio.wait_for(store.open(), 5)
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.add([draft()], "pub")
