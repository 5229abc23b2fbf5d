"""The Store contract: one test body run against every Store -- the embedded SQLite store in
a temporary directory and the PostgreSQL store in a fresh database of the real server.
Tests of one backend's own matters (SQLite's file handling) run on that backend only;
``test_store_postgres.py`` has what only several PostgreSQL nodes can show."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sse_notify.models import Notification, NotificationDraft, now_ms
from sse_notify.store import HistoryPage, Store, StoreUnavailable, open_store
from sse_notify.store import pg_batch
from sse_notify.store import sqlite as sqlite_module
from sse_notify.store import sqlite_schema
from sse_notify.store.postgres import PostgresStore
from sse_notify.store.sqlite import IDEMPOTENCY_WINDOW_MS, SQLiteStore

assert pg_batch.IDEMPOTENCY_WINDOW_MS == IDEMPOTENCY_WINDOW_MS


def draft(user: str | None = "alice", title: str = "t", topic: str | None = None,
          **kw: object) -> NotificationDraft:
    return NotificationDraft(user, title, topic=topic, **kw)  # type: ignore[arg-type]


async def add_one(store: Store, user: str | None = "alice", topic: str | None = None,
                  **kw: object) -> int:
    [nid] = (await store.add([draft(user, topic=topic, **kw)], "pub")).ids
    return nid


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "notifications.db"


@pytest.fixture(params=["sqlite", "postgres"])
def store_factory(request: pytest.FixtureRequest, db_path: Path) -> Callable[[], Store]:
    """Makes an unopened store of the backend under test (the same database each time)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(db_path)
    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


#: For tests of the SQLite store's own behaviour.
sqlite_only = pytest.mark.parametrize("store_factory", ["sqlite"], indirect=True)


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> AsyncIterator[Store]:
    s = store_factory()
    await s.open()
    yield s
    await s.close()


async def reopen(store: Store) -> Store:
    await store.close()
    fresh = SQLiteStore(store.path) if isinstance(store, SQLiteStore) else PostgresStore(store.url)  # type: ignore[attr-defined]
    await fresh.open()
    return fresh


async def count_reads(store: Store) -> int:
    if isinstance(store, SQLiteStore):
        [(count,)] = await store._read("SELECT count(*) FROM reads", ())
    else:
        [(count,)] = await store._read("SELECT count(*) FROM reads")  # type: ignore[attr-defined]
    return count


class Clock:
    """Controls the store's ``now_ms`` (creation times, prune cut-offs, idempotency window)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.now = 1_700_000_000_000
        for module in (sqlite_module, pg_batch):
            monkeypatch.setattr(module, "now_ms", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


# -- ids and durability ---------------------------------------------------------------

async def test_ids_strictly_increase_across_batches_and_after_reopen(store: Store) -> None:
    first = (await store.add([draft("a"), draft("b"), draft(None)], "pub")).ids
    second = (await store.add([draft("c")], "pub")).ids
    assert first == [1, 2, 3] and second == [4]
    store = await reopen(store)
    try:
        assert (await store.add([draft("d"), draft("e")], "pub")).ids == [5, 6]
        assert await store.max_id() == 6
    finally:
        await store.close()


async def test_a_version_1_database_is_migrated_on_open(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    old = sqlite3.connect(db_path)
    old.executescript(sqlite_schema._SCHEMA_V1 + "PRAGMA user_version=1;")
    old.execute("INSERT INTO notifications VALUES (7, 'alice', NULL, 't', NULL, 'low', NULL, 1)")
    old.commit()
    old.close()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        assert [n.id for n in await store.replay("alice", 0, None, 10)] == [7]
        assert await add_one(store) == 8
        indexes = {row[0] for row in await store._read("SELECT name FROM sqlite_master WHERE type='index'", ())}
        assert {"reads_id", "idempotency_created_at"} <= indexes
        assert await store._read("PRAGMA user_version", ()) == [(len(sqlite_schema.MIGRATIONS),)]
    finally:
        await store.close()


async def test_data_survives_reopen(store: Store) -> None:
    await store.add([draft("alice", title="Hello", topic="chat", body="b", priority="high",
                           data={"k": [1, {"x": None}]})], "pub")
    await store.mark_read("alice", [1])
    store = await reopen(store)
    try:
        page = await store.history("alice", 10, None, None)
        [(n, read)] = page.items
        assert (n.id, n.user, n.topic, n.title, n.body, n.priority, n.data) == (
            1, "alice", "chat", "Hello", "b", "high", {"k": [1, {"x": None}]})
        assert read is True
    finally:
        await store.close()


async def test_created_at_is_set_and_never_goes_backwards(store: Store, clock: Clock) -> None:
    await add_one(store)
    clock.now -= 5000  # the wall clock steps back
    await add_one(store)
    [(n2, _), (n1, _)] = (await store.history("alice", 10, None, None)).items
    assert n1.created_at == 1_700_000_000_000
    assert n2.created_at >= n1.created_at


# -- group commit ---------------------------------------------------------------------

async def test_group_commit_batches_concurrent_adds(store: Store) -> None:
    batches: list[list[Notification]] = []
    store.on_commit = batches.append
    results = await asyncio.gather(*(store.add([draft(f"u{i}")], "pub") for i in range(200)))
    ids = [r.ids[0] for r in results]
    assert sorted(ids) == list(range(1, 201))  # distinct and contiguous
    assert len(batches) < 200  # fewer commits than calls
    committed = [n.id for batch in batches for n in batch]
    assert committed == list(range(1, 201))  # on_commit saw everything, in id order
    # each caller's notification went to the matching recipient
    by_id = {n.id: n.user for batch in batches for n in batch}
    assert all(by_id[r.ids[0]] == f"u{i}" for i, r in enumerate(results))


async def test_on_commit_runs_in_id_order_before_add_returns(store: Store) -> None:
    seen: list[int] = []
    store.on_commit = lambda batch: seen.extend(n.id for n in batch)

    async def add_and_check(i: int) -> None:
        ids = (await store.add([draft("alice"), draft("bob")], "pub")).ids
        assert set(ids) <= set(seen), "add() returned before on_commit saw its ids"

    for _ in range(3):  # several rounds: several batches
        await asyncio.gather(*(add_and_check(i) for i in range(20)))
    assert seen == list(range(1, 121))


async def test_failing_commit_listener_does_not_fail_add(store: Store) -> None:
    def boom(batch: list[Notification]) -> None:
        raise RuntimeError("listener broke")

    store.on_commit = boom
    assert (await store.add([draft()], "pub")).ids == [1]


async def test_a_bad_job_does_not_fail_other_writers_in_the_batch(store: Store) -> None:
    results = await asyncio.gather(
        store.add([draft("alice")], "pub"),
        store.mark_read("alice", [2**63]),
        store.add([draft("bob")], "pub"),
        return_exceptions=True,
    )
    assert [r.ids for r in (results[0], results[2])] == [[1], [2]]  # type: ignore[union-attr]


@sqlite_only
async def test_a_removed_database_fails_its_batch_once_then_continues_in_a_new_file(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    first = await add_one(store)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)
    transactions = 0
    transaction = store._transaction

    async def counting(db, jobs):  # type: ignore[no-untyped-def]
        nonlocal transactions
        transactions += 1
        return await transaction(db, jobs)

    monkeypatch.setattr(store, "_transaction", counting)
    results = await asyncio.gather(*(store.add([draft()], "pub") for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    assert transactions == 1  # storage failing is not retried job by job
    assert store.path.exists()  # reopened: a new file at the same path
    after = await add_one(store)
    assert after > first  # ids never go back
    assert [n.id for n in await store.replay("alice", 0, None, 10)] == [after]
    assert (await store.state("alice"))[2] >= first  # what was lost counts as pruned: "reset"


@sqlite_only
async def test_a_store_that_cannot_reopen_keeps_answering_and_recovers_later(store: Store) -> None:
    first = await add_one(store)
    data_dir = store.path.parent
    shutil.rmtree(data_dir)
    data_dir.write_text("a file where the data directory was")  # reopening must fail
    for _ in range(2):  # each write is answered, none hangs
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(store.add([draft()], "pub"), 10)
    with pytest.raises(StoreUnavailable):
        await store.state("alice")
    data_dir.unlink()  # the path is usable again
    assert await add_one(store) > first
    await store.ping()


@sqlite_only
async def test_ping_is_a_write(store: Store) -> None:
    await store.ping()
    rows = await store._read("SELECT value FROM meta WHERE key = 'probed_at'", ())
    assert rows and rows[0][0] > 0


# -- idempotency ----------------------------------------------------------------------

async def test_idempotent_repeat_stores_nothing_new(store: Store) -> None:
    committed: list[int] = []
    store.on_commit = lambda batch: committed.extend(n.id for n in batch)
    first = await store.add([draft("a"), draft("b")], "pub", "key-1")
    again = await store.add([draft("a"), draft("b")], "pub", "key-1")
    assert first.created is True and again.created is False
    assert again.ids == first.ids == [1, 2]
    assert committed == [1, 2]
    assert await store.max_id() == 2
    other_key = await store.add([draft("a")], "pub", "key-2")
    assert other_key.created is True and other_key.ids == [3]


async def test_same_key_from_another_publisher_is_new(store: Store) -> None:
    first = await store.add([draft("a")], "pub-1", "k")
    other = await store.add([draft("a")], "pub-2", "k")
    assert other.created is True and other.ids != first.ids


async def test_idempotent_repeat_within_one_batch(store: Store) -> None:
    a, b = await asyncio.gather(store.add([draft("a")], "pub", "k"), store.add([draft("a")], "pub", "k"))
    assert (a.created, b.created) == (True, False)
    assert a.ids == b.ids
    assert await store.max_id() == 1


async def test_idempotency_key_expires_after_a_day(store: Store, clock: Clock) -> None:
    first = await store.add([draft("a")], "pub", "k")
    clock.now += IDEMPOTENCY_WINDOW_MS - 1
    assert (await store.add([draft("a")], "pub", "k")).created is False
    clock.now += 2
    later = await store.add([draft("a")], "pub", "k")
    assert later.created is True and later.ids != first.ids


async def test_without_key_every_add_is_new(store: Store) -> None:
    assert (await store.add([draft()], "pub")).ids == [1]
    assert (await store.add([draft()], "pub")).ids == [2]


# -- bulk: add_many -------------------------------------------------------------------

async def test_add_many_is_one_commit_in_order(store: SQLiteStore) -> None:
    batches: list[list[Notification]] = []
    store.on_commit = batches.append
    result = await store.add_many([[draft("a")], [draft("b"), draft("c")], [draft(None)]], "pub")
    assert result.created is True and result.results == [[1], [2, 3], [4]]
    assert [[(n.id, n.user) for n in batch] for batch in batches] == [
        [(1, "a"), (2, "b"), (3, "c"), (4, None)]]


async def test_add_many_is_one_job_beside_concurrent_adds(store: SQLiteStore) -> None:
    """Concurrent single adds may share its commit, never split it or come in between."""
    store.on_commit = lambda batch: None
    single, bulk, other = await asyncio.gather(
        store.add([draft("x")], "pub"),
        store.add_many([[draft(f"u{i}")] for i in range(500)], "pub"),
        store.add([draft("y")], "pub"))
    ids = [i for ids in bulk.results for i in ids]
    assert ids == list(range(ids[0], ids[0] + 500))  # contiguous: nothing in between
    assert {single.ids[0], other.ids[0]}.isdisjoint(ids)


async def test_a_failing_add_many_stores_none_of_it(store: SQLiteStore) -> None:
    bad = draft("b", data={"x": 2**64})  # not encodable as JSON: fails in the writer
    with pytest.raises(StoreUnavailable):
        await store.add_many([[draft("a")], [bad]], "pub")
    assert await store.replay("a", 0, None, 10) == [] and await store.max_id() == 0
    assert (await store.add([draft("c")], "pub")).ids == [1]  # no id was used up


async def test_add_many_idempotent_repeat(store: SQLiteStore) -> None:
    first = await store.add_many([[draft("a")], [draft("b"), draft("c")]], "pub", "bulk")
    again = await store.add_many([[draft("zzz")]], "pub", "bulk")
    assert again.created is False and again.results == first.results == [[1], [2, 3]]
    assert await store.max_id() == 3
    # the same key repeated by a single add() answers every id of the bulk, in order
    single = await store.add([draft("a")], "pub", "bulk")
    assert single.created is False and single.ids == [1, 2, 3]
    # and a key first used by add() answers its ids as one request to add_many()
    one = await store.add([draft("a"), draft("b")], "pub", "single")
    as_bulk = await store.add_many([[draft("a")], [draft("b")]], "pub", "single")
    assert as_bulk.created is False and as_bulk.results == [one.ids]
    assert await store.max_id() == 5


async def test_add_many_idempotent_repeat_within_one_batch_and_after_reopen(store: SQLiteStore) -> None:
    a, b = await asyncio.gather(store.add_many([[draft("a")], [draft("b")]], "pub", "k"),
                                store.add_many([[draft("a")], [draft("b")]], "pub", "k"))
    assert (a.created, b.created) == (True, False) and a.results == b.results == [[1], [2]]
    store = await reopen(store)
    try:
        assert (await store.add_many([[draft("a")]], "pub", "k")).results == [[1], [2]]
    finally:
        await store.close()


# -- replay ---------------------------------------------------------------------------

async def test_replay_after_id_own_and_broadcast_ascending(store: Store) -> None:
    for user in ["alice", "bob", None, "alice", "bob", None]:
        await add_one(store, user)
    replay = await store.replay("alice", 0, None, 100)
    assert [n.id for n in replay] == [1, 3, 4, 6]
    assert [n.id for n in await store.replay("alice", 3, None, 100)] == [4, 6]
    assert [n.id for n in await store.replay("alice", 6, None, 100)] == []
    assert [n.id for n in await store.replay("carol", 0, None, 100)] == [3, 6]


async def test_replay_limit_keeps_the_oldest(store: Store) -> None:
    for user in ["alice", None, "alice", None, "alice"]:
        await add_one(store, user)
    assert [n.id for n in await store.replay("alice", 0, None, 2)] == [1, 2]
    assert [n.id for n in await store.replay("alice", 2, None, 2)] == [3, 4]


async def test_reads_cancelled_midway_never_pin_an_old_snapshot(store: Store) -> None:
    # A client that drops mid-replay cancels the read awaiting the store. That must not
    # leave the shared read connection inside an old read transaction: every later read,
    # for every user, would then miss what was committed since (a gap on reconnect).
    for _ in range(50):
        await add_one(store)
    for i in range(100):
        read = asyncio.create_task(store.replay("alice", 0, None, 1000))
        for _ in range(1 + i % 5):  # cancel at different points of the read
            await asyncio.sleep(0)
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
    newest = await add_one(store)
    assert (await store.state("alice"))[0] == newest
    assert [n.id for n in await store.replay("alice", newest - 1, None, 10)] == [newest]


async def test_replay_topic_filter(store: Store) -> None:
    await add_one(store, "alice", "a")
    await add_one(store, "alice", "b")
    await add_one(store, "alice", None)
    await add_one(store, None, "a")
    await add_one(store, None, "c")
    assert [n.id for n in await store.replay("alice", 0, frozenset({"a"}), 100)] == [1, 4]
    assert [n.id for n in await store.replay("alice", 0, frozenset({"a", "b"}), 100)] == [1, 2, 4]
    assert [n.id for n in await store.replay("alice", 0, frozenset({"zzz"}), 100)] == []
    assert [n.id for n in await store.replay("alice", 0, None, 100)] == [1, 2, 3, 4, 5]


# -- history --------------------------------------------------------------------------

def _ids(page: HistoryPage) -> list[int]:
    return [n.id for n, _ in page.items]


async def test_history_newest_first_with_paging(store: Store) -> None:
    for user in ["alice", "bob", None, "alice", None]:
        await add_one(store, user)
    page = await store.history("alice", 2, None, None)
    assert _ids(page) == [5, 4] and page.next_before == 4
    page = await store.history("alice", 2, page.next_before, None)
    assert _ids(page) == [3, 1] and page.next_before is None  # nothing older is left


async def test_history_next_before_null_exactly_when_no_more(store: Store) -> None:
    for _ in range(3):
        await add_one(store)
    exact = await store.history("alice", 3, None, None)
    assert _ids(exact) == [3, 2, 1] and exact.next_before is None
    short = await store.history("alice", 2, None, None)
    assert short.next_before == 2
    empty = await store.history("nobody", 5, None, None)
    assert empty.items == [] and empty.next_before is None


async def test_history_before_is_exclusive(store: Store) -> None:
    for _ in range(4):
        await add_one(store)
    assert _ids(await store.history("alice", 10, 3, None)) == [2, 1]
    assert _ids(await store.history("alice", 10, 1, None)) == []


async def test_history_read_flags_and_unread_filter(store: Store) -> None:
    for user in ["alice", None, "alice", None]:
        await add_one(store, user)
    await store.mark_read("alice", [2, 3])
    page = await store.history("alice", 10, None, None)
    assert [(n.id, read) for n, read in page.items] == [(4, False), (3, True), (2, True), (1, False)]
    unread = await store.history("alice", 1, None, True)
    assert _ids(unread) == [4] and unread.next_before == 4
    unread = await store.history("alice", 1, 4, True)
    assert _ids(unread) == [1] and unread.next_before is None
    read = await store.history("alice", 10, None, False)
    assert [(n.id, r) for n, r in read.items] == [(3, True), (2, True)]


# -- state and read state -------------------------------------------------------------

async def test_state_counts_own_and_broadcast(store: Store) -> None:
    assert await store.state("alice") == (0, 0, 0)
    for user in ["alice", "bob", None, "bob"]:
        await add_one(store, user)
    assert await store.state("alice") == (3, 2, 0)
    assert await store.state("bob") == (4, 3, 0)
    assert await store.state("carol") == (3, 1, 0)
    await store.mark_read("alice", [3])
    assert await store.state("alice") == (3, 1, 0)


async def _state_from_history(store: Store, user: str) -> tuple[int, int]:
    """(newest, unread) as the history endpoint's reads see them: the reference."""
    page = await store.history(user, 10_000, None, None)
    return (page.items[0][0].id if page.items else 0), sum(not read for _, read in page.items)


async def test_concurrent_state_reads_answer_each_user_even_while_a_write_commits(store: Store) -> None:
    for user in ["alice", "bob", None, "alice", "bob", None, "bob", "erin"]:
        await add_one(store, user)
    await store.mark_read("alice", [1, 3, 2])  # 2 is bob's: not alice's to mark
    await store.mark_all_read("bob")
    await store.mark_read("carol", [6])
    users = ["alice", "bob", "carol", "dave", "alice", "erin", "bob"] * 3
    before = {u: await _state_from_history(store, u) for u in set(users)}
    assert before == {"alice": (6, 2), "bob": (7, 0), "carol": (6, 1), "dave": (6, 2), "erin": (8, 3)}
    answers = await asyncio.gather(*(store.state(u) for u in users[:7]), add_one(store, "dave"),
                                   *(store.state(u) for u in users[7:]))
    new_id = answers.pop(7)
    after = {u: await _state_from_history(store, u) for u in set(users)}
    assert after["dave"] == (new_id, 3) and all(after[u] == before[u] for u in after if u != "dave")
    for user, (newest, unread, pruned) in zip(users, answers):
        assert (newest, unread) in (before[user], after[user]), user
        assert pruned == 0
    assert await store.state("dave") == (new_id, 3, 0)
    # A caller that goes away leaves the others answered.
    gone = asyncio.ensure_future(store.state("alice"))
    kept = asyncio.ensure_future(store.state("alice"))
    gone.cancel()
    assert await kept == (6, 2, 0)


async def test_mark_read_returns_only_changed_visible_ids(store: Store) -> None:
    for user in ["alice", "bob", None]:
        await add_one(store, user)
    assert await store.mark_read("alice", [3, 1, 2, 99]) == [1, 3]  # 2 is bob's, 99 absent
    assert await store.mark_read("alice", [1, 3]) == []
    assert await store.mark_read("alice", [1, 1]) == []
    assert await store.state("bob") == (3, 2, 0)  # alice's reads are hers alone


async def test_mark_read_many_ids(store: Store) -> None:
    ids = (await store.add([draft("alice") for _ in range(1200)], "pub")).ids
    assert await store.mark_read("alice", ids) == ids
    assert (await store.state("alice"))[1] == 0


async def test_mark_all_read(store: Store) -> None:
    for user in ["alice", "bob", None, "alice"]:
        await add_one(store, user)
    await store.mark_read("alice", [1])
    assert await store.mark_all_read("alice") == [3, 4]
    assert await store.mark_all_read("alice") == []
    assert (await store.state("alice"))[1] == 0
    assert await store.state("bob") == (3, 2, 0)


async def test_broadcast_read_state_is_per_user(store: Store) -> None:
    nid = await add_one(store, None)
    assert await store.mark_read("alice", [nid]) == [nid]
    assert await store.mark_read("bob", [nid]) == [nid]  # bob's state changed too
    assert [r for _, r in (await store.history("alice", 5, None, None)).items] == [True]
    assert [r for _, r in (await store.history("carol", 5, None, None)).items] == [False]
    assert (await store.state("carol"))[1] == 1


async def test_is_visible(store: Store) -> None:
    own, other, broadcast = [await add_one(store, u) for u in ("alice", "bob", None)]
    assert await store.is_visible("alice", own)
    assert not await store.is_visible("alice", other)
    assert await store.is_visible("alice", broadcast)
    assert not await store.is_visible("alice", 999)


# -- retention ------------------------------------------------------------------------

async def test_prune_removes_old_rows_and_sets_pruned_through(store: Store, clock: Clock) -> None:
    old = [await add_one(store, u) for u in ("alice", None)]
    await store.mark_read("alice", old)
    clock.now += 10_000
    new = await add_one(store, "alice")
    assert await store.prune(clock.now - 5_000, 1000) == 2
    assert _ids(await store.history("alice", 10, None, None)) == [new]
    assert [n.id for n in await store.replay("alice", 0, None, 10)] == [new]
    assert await store.state("alice") == (new, 1, old[-1])
    assert not await store.is_visible("alice", old[0])
    assert await store.mark_read("alice", old) == []
    assert await store.prune(clock.now - 5_000, 1000) == 0  # nothing more to remove
    assert (await store.state("alice"))[2] == old[-1]


async def test_prune_removes_at_most_limit_oldest_first(store: Store, clock: Clock) -> None:
    ids = [await add_one(store, u) for u in ("alice", None, "bob", "alice", None)]
    await store.mark_read("alice", ids)
    clock.now += 10_000
    assert await store.prune(clock.now, 2) == 2
    assert [n.id for n in await store.replay("alice", 0, None, 10)] == ids[3:]
    assert (await store.state("alice"))[2] == ids[1]  # pruned through the chunk, no further
    assert await store.prune(clock.now, 2) == 2
    assert await store.prune(clock.now, 2) == 1
    assert await store.state("alice") == (0, 0, ids[-1])
    assert await count_reads(store) == 0


async def test_ids_never_reused_after_everything_is_pruned_and_reopened(
        store: Store, clock: Clock) -> None:
    for _ in range(3):
        await add_one(store)
    clock.now += 1000
    assert await store.prune(clock.now, 1000) == 3
    store = await reopen(store)
    try:
        assert await store.state("alice") == (0, 0, 3)
        assert await store.max_id() == 3
        assert await add_one(store) == 4
    finally:
        await store.close()


async def test_prune_drops_expired_idempotency_keys(store: Store, clock: Clock) -> None:
    await store.add([draft()], "pub", "k")
    clock.now += IDEMPOTENCY_WINDOW_MS + 1
    await store.prune(0, 1000)  # removes no notification, only expired keys
    assert await store.max_id() == 1
    clock.now -= 2  # even back inside the window the key is gone
    assert (await store.add([draft()], "pub", "k")).created is True


# -- lifecycle ------------------------------------------------------------------------

async def test_add_after_close_is_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.add([draft()], "pub")
    with pytest.raises(StoreUnavailable):
        await store.mark_read("alice", [1])
    with pytest.raises(StoreUnavailable):
        await store.state("alice")
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_add_racing_close_fails_cleanly(store: Store) -> None:
    task = asyncio.create_task(store.add([draft()], "pub"))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await task


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_open_store_picks_the_backend_by_scheme(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    assert isinstance(s, SQLiteStore) and s.path == tmp_path / "x.db"
    assert SQLiteStore.from_url("sqlite:///rel/x.db").path == Path("rel/x.db")
    for url in ("postgres://db/x", "postgresql://u@db:5432/x"):
        pg = open_store(url)
        assert isinstance(pg, PostgresStore) and pg.url == url
    with pytest.raises(ValueError):
        open_store("mysql://db/x")
    with pytest.raises(ValueError):
        SQLiteStore.from_url("sqlite:///")


def test_now_ms_is_milliseconds() -> None:
    assert 1_600_000_000_000 < now_ms() < 10_000_000_000_000



async def test_since_is_the_whole_log_after_an_id(store: Store) -> None:
    a = await add_one(store, "alice")
    b = await add_one(store, None)
    c = await add_one(store, "bob")
    assert [n.id for n in await store.since(0, 100)] == [a, b, c]
    assert [n.id for n in await store.since(a, 1)] == [b]
    assert [n.user for n in await store.since(a, 100)] == [None, "bob"]
    assert await store.since(c, 100) == []


async def test_reads_asked_together_are_one_fetch_and_later_ones_the_next() -> None:
    from sse_notify.store.coalesce import Coalescer

    calls: list[list[str]] = []
    release = asyncio.Event()

    async def fetch(keys: list[str]) -> list[str]:
        calls.append(list(keys))
        await release.wait()
        if "bad" in keys:
            raise StoreUnavailable("down")
        return [k.upper() for k in keys]

    reads = Coalescer(fetch)
    first = [reads.get(k) for k in ["a", "b", "a"]]
    await asyncio.sleep(0)  # the fetch starts with what was asked so far
    second = [reads.get(k) for k in ["c", "a"]]  # asked during it: the next fetch, not this one
    release.set()
    assert await asyncio.gather(*first, *second) == ["A", "B", "A", "C", "A"]
    assert calls == [["a", "b"], ["c", "a"]]
    failed, fine = reads.get("bad"), reads.get("x")
    with pytest.raises(StoreUnavailable):
        await failed
    with pytest.raises(StoreUnavailable):  # asked in the same query: the same answer
        await fine
    assert await reads.get("y") == "Y"  # and the next one works
