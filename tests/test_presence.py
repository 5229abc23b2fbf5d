"""Presence on both stores (SQLite, and a database of the real PostgreSQL): counts of several
nodes summed; a node silent for the ttl no longer counts and its users were last seen at
its last beat; expiry removes it and, beating again, it sends all of its counts anew;
``last_seen`` only once no live node holds the user; a clean leave. What a beat sends
(:class:`sse_notify.presence.Presence`, with the real hub and a recording store).

A node's silence is made by moving its heartbeat back in the table, not by waiting.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest

from sse_notify.models import now_ms
from sse_notify.hub import Hub
from sse_notify.presence import Presence
from sse_notify.store import Store, StoreUnavailable
from sse_notify.store.postgres import PostgresStore
from sse_notify.store.presence import PresenceStore, UserPresence, open_presence_store
from sse_notify.store.sqlite import SQLiteStore

TTL = 15_000
Age = Callable[[str, int], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file's path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "notifications.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def backend(database: str) -> AsyncIterator[tuple[PresenceStore, Age]]:
    """An open store's presence tables, and ``age(node, ms)``: move a heartbeat back."""
    store: Store
    if not database.startswith("postgresql:"):
        store = SQLiteStore(database)

        async def age(node: str, ms: int) -> None:
            with sqlite3.connect(Path(database).with_name("notifications-presence.db"), timeout=5) as db:
                db.execute("UPDATE presence_nodes SET beat_at = beat_at - ? WHERE node = ?", (ms, node))
    else:
        store = PostgresStore(database)

        async def age(node: str, ms: int) -> None:
            conn = await asyncpg.connect(database)
            try:
                await conn.execute("UPDATE presence_nodes SET beat_at = beat_at - $1 WHERE node = $2", ms, node)
            finally:
                await conn.close()
    await store.open()
    presence = open_presence_store(store)
    await presence.open()
    yield presence, age
    await presence.close()
    await store.close()


async def test_counts_of_live_nodes_are_summed(backend: tuple[PresenceStore, Age]) -> None:
    store, _ = backend
    assert await store.beat("a", {"alice": 2, "bob": 1}) is False  # a first beat: unknown until now
    assert await store.beat("b", {"alice": 1}) is False
    assert await store.beat("a", {}) is True
    assert await store.lookup(["alice", "bob", "carol"], TTL) == {
        "alice": UserPresence(3, None), "bob": UserPresence(1, None), "carol": UserPresence(0, None)}
    await store.beat("a", {"alice": 1})  # a changed count replaces the node's row
    assert (await store.lookup(["alice"], TTL))["alice"] == UserPresence(2, None)


async def test_last_seen_is_answered_once_no_live_node_holds_the_user(backend: tuple[PresenceStore, Age]) -> None:
    store, _ = backend
    await store.beat("a", {"alice": 1})
    await store.beat("b", {"alice": 1})
    before = now_ms()
    await store.beat("a", {"alice": 0})
    assert (await store.lookup(["alice"], TTL))["alice"] == UserPresence(1, None)  # still on b
    await store.beat("b", {"alice": 0})
    answer = (await store.lookup(["alice"], TTL))["alice"]
    assert answer.streams == 0 and answer.last_seen is not None
    assert before - 1000 <= answer.last_seen <= now_ms() + 1000  # PostgreSQL's clock: same machine


async def test_a_silent_node_stops_counting_and_its_users_were_seen_at_its_last_beat(
        backend: tuple[PresenceStore, Age]) -> None:
    store, age = backend
    await store.beat("dead", {"alice": 2, "bob": 1})
    await store.beat("live", {"bob": 1})
    await age("dead", TTL + 5000)
    answer = await store.lookup(["alice", "bob"], TTL)
    assert answer["bob"] == UserPresence(1, None)
    assert answer["alice"].streams == 0
    silent_since = answer["alice"].last_seen
    assert silent_since is not None and silent_since <= now_ms() - TTL - 4000
    await store.expire(TTL)  # folded into last_seen, rows removed: the same answer
    assert await store.lookup(["alice", "bob"], TTL) == answer
    # Back after all (it was only cut off): forgotten, so it will send all its counts.
    assert await store.beat("dead", {}) is False
    assert (await store.lookup(["alice"], TTL))["alice"] == UserPresence(0, silent_since)


async def test_expiry_leaves_live_nodes_alone(backend: tuple[PresenceStore, Age]) -> None:
    store, _ = backend
    await store.beat("a", {"alice": 1})
    await store.expire(TTL)
    assert await store.beat("a", {}) is True
    assert (await store.lookup(["alice"], TTL))["alice"] == UserPresence(1, None)


async def test_leaving_removes_the_node_and_its_users_were_seen_then(backend: tuple[PresenceStore, Age]) -> None:
    store, _ = backend
    await store.beat("a", {"alice": 2})
    await store.beat("b", {"bob": 1})
    before = now_ms()
    await store.leave("a")
    answer = await store.lookup(["alice", "bob"], TTL)
    assert answer["bob"] == UserPresence(1, None)
    assert answer["alice"].streams == 0 and answer["alice"].last_seen is not None
    assert answer["alice"].last_seen >= before - 1000
    assert await store.beat("a", {}) is False  # gone from the table


class Recorder:
    """A PresenceStore that records each beat's changes; ``forget`` makes the next beat
    answer "unknown node", ``fail`` makes beats fail."""

    def __init__(self) -> None:
        self.beats: list[dict[str, int]] = []
        self.forget = False
        self.fail = False

    async def beat(self, node: str, changes: dict[str, int]) -> bool:
        if self.fail:
            raise StoreUnavailable("down")
        self.beats.append(dict(changes))
        known, self.forget = not self.forget, False
        return known

    async def expire(self, ttl_ms: int) -> None:
        pass


async def test_a_beat_sends_the_users_who_changed_and_everything_when_forgotten() -> None:
    hub, recorder = Hub(), Recorder()
    presence = Presence(recorder, hub, ttl=15)  # type: ignore[arg-type]
    async with AsyncExitStack() as streams:
        async def open_stream(user: str) -> AsyncExitStack:
            stack = AsyncExitStack()
            await stack.enter_async_context(hub.subscribe(user))
            await streams.enter_async_context(stack)
            return stack

        alice = await open_stream("alice")
        await open_stream("alice")
        await open_stream("bob")
        await presence.beat()
        await presence.beat()
        assert recorder.beats == [{"alice": 2, "bob": 1}, {}]  # nothing changed: only the heartbeat
        await alice.aclose()
        carol = await open_stream("carol")
        await carol.aclose()  # came and went within one beat: seen, with no stream
        await presence.beat()
        assert recorder.beats[-1] == {"alice": 1, "carol": 0}

        recorder.fail = True  # not confirmed: sent again with the next beat
        await open_stream("dave")
        await presence._beat_logged()
        assert presence.failures == 1
        recorder.fail = False
        await open_stream("dave")
        await presence.beat()
        assert recorder.beats[-1] == {"dave": 2}

        recorder.forget = True  # expired meanwhile: what changed, then everything
        await open_stream("erin")
        await presence.beat()
        assert recorder.beats[-2:] == [{"erin": 1}, {"alice": 1, "bob": 1, "dave": 2, "erin": 1}]
    await presence.beat()  # all closed
    assert recorder.beats[-1] == {"alice": 0, "bob": 0, "dave": 0, "erin": 0}
