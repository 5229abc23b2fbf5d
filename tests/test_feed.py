"""sse_notify.feed: hello, replay-then-live without gap or duplicate, keepalive, expiry.

Runs a :class:`Feed` against a real SQLite store in a temporary directory and a real hub,
with a fake ``send`` that records every batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sse_notify import feed as feed_module
from sse_notify.feed import Feed, parse_cursor, parse_topics
from sse_notify.hub import Hub
from sse_notify.models import Notification, NotificationDraft, ReadChange, iso_ms
from sse_notify.store import StoreUnavailable
from sse_notify.store import sqlite as sqlite_module
from sse_notify.store.sqlite import SQLiteStore
from sse_notify.wire import KEEPALIVE, Outbound


class Sink:
    """A fake ``send``: records batches; ``on_send`` may act before the feed continues."""

    def __init__(self, on_send: Callable[[list[Outbound]], Awaitable[None]] | None = None):
        self.batches: list[list[Outbound]] = []
        self.on_send = on_send
        self._changed = asyncio.Event()

    async def __call__(self, batch: list[Outbound]) -> None:
        self.batches.append(list(batch))
        self._changed.set()
        if self.on_send is not None:
            await self.on_send(batch)

    @property
    def events(self) -> list[Outbound]:
        return [e for b in self.batches for e in b]

    def kinds(self) -> list[str]:
        return [json.loads(e.ws)["type"] for e in self.events]

    def payloads(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(e.ws) for e in self.events if json.loads(e.ws)["type"] == kind]

    def ids(self) -> list[int]:
        return [e.id for e in self.events if e.id is not None]

    @property
    def hello(self) -> dict[str, Any]:
        first = json.loads(self.events[0].ws)
        assert first["type"] == "auth_success", "hello must come first"
        return {k: v for k, v in first.items() if k != "type"}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "notifications.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def hub(store: SQLiteStore) -> Hub:
    hub = Hub(stream_buffer=64)
    store.on_commit = hub.dispatch  # what the service's broker pump does, minus the hop
    return hub


async def add(store: SQLiteStore, user: str | None = "alice", topic: str | None = None) -> int:
    [nid] = (await store.add([NotificationDraft(user, "t", topic=topic)], "pub")).ids
    return nid


class Running:
    """A feed running as a task; cancelled (and awaited) on exit."""

    def __init__(self, feed: Feed, sink: Sink):
        self.feed, self.sink = feed, sink
        self.task: asyncio.Task[str] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.feed.run(self.sink))
        await self.sink.wait_for(lambda: len(self.sink.events) > 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def make_feed(hub: Hub, store: SQLiteStore, **kw: Any) -> Feed:
    kw.setdefault("heartbeat", 15.0)
    return Feed(hub, store, kw.pop("user", "alice"), transport="sse", **kw)


# -- parse_cursor / parse_topics --------------------------------------------------------

@pytest.mark.parametrize(
    ("raw", "cursor"),
    [
        ("0", 0), ("1", 1), ("42", 42), ("007", 7),
        (" 42 ", None), (" 5", None), ("5 ", None), ("\t5", None), ("5\n", None), ("\u00a05", None),
        ("9" * 18, 10**18 - 1),
        ("9" * 19, None), ("1" + "0" * 18, None),
        ("-1", None), ("+1", None), ("abc", None), ("1a", None), ("4 2", None), ("1.0", None),
        ("", None), ("   ", None), (None, None), ("\u0661\u0662", None),
    ],
)
def test_parse_cursor(raw: str | None, cursor: int | None) -> None:
    assert parse_cursor(raw) == cursor


@pytest.mark.parametrize(
    ("raw", "topics"),
    [
        (None, None), ("", None), (",", None), (" , ", None),
        ("a", frozenset({"a"})), ("a,b", frozenset({"a", "b"})),
        (" a , b ,, a", frozenset({"a", "b"})),
    ],
)
def test_parse_topics(raw: str | None, topics: frozenset[str] | None) -> None:
    assert parse_topics(raw) == topics


# -- hello and replay modes -----------------------------------------------------------

async def test_live_start_sends_hello_first_and_no_history(hub: Hub, store: SQLiteStore) -> None:
    for user in ("alice", "bob", None):
        await add(store, user)
    await store.mark_read("alice", [1])
    sink = Sink()
    async with Running(make_feed(hub, store), sink):
        assert sink.hello == {"user": "alice", "newest_id": 3, "unread": 1, "replay": "live"}
        assert hub.count("sse") == 1
        new = await add(store, "alice")
        await sink.wait_for(lambda: new in sink.ids())
        hub.dispatch([ReadChange("alice", (1, new))])
        await sink.wait_for(lambda: "read" in sink.kinds())
    assert sink.kinds() == ["auth_success", "notification", "read"]
    assert sink.ids() == [4]
    assert sink.payloads("read") == [{"type": "read", "ids": [1, 4]}]
    assert (hub.stats.delivered, hub.stats.replayed) == (1, 0)
    assert hub.count() == 0  # unregistered when the feed ended


async def test_response_starts_after_registering_and_reading_state_before_hello(
        hub: Hub, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """What commits once the client saw the response start reaches it: the start comes
    after the stream is registered and its state read (whose newest_id the live start
    skips up to), and before anything is sent."""
    await add(store, "alice")
    order: list[str] = []
    real_state = store.state

    async def state(user: str) -> tuple[int, int, int]:
        order.append(f"state (registered: {hub.count()})")
        return await real_state(user)

    async def start() -> None:
        order.append(f"start (sent: {len(sink.events)})")
        await add(store, "alice")  # committed right after the client saw the start

    monkeypatch.setattr(store, "state", state)
    sink = Sink()
    feed = make_feed(hub, store, start=start)
    async with Running(feed, sink):
        await sink.wait_for(lambda: 2 in sink.ids())
        assert feed.started and feed.start is None  # called once, then dropped
    assert order == ["state (registered: 1)", "start (sent: 0)"]
    assert sink.hello["newest_id"] == 1 and sink.ids() == [2]


async def test_response_is_not_started_when_state_cannot_be_read(
        hub: Hub, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    async def state(user: str) -> tuple[int, int, int]:
        raise StoreUnavailable("disk I/O error")

    async def start() -> None:
        raise AssertionError("started")

    monkeypatch.setattr(store, "state", state)
    feed = make_feed(hub, store, start=start)
    assert await feed.run(Sink()) == "error"  # logged; the transport answers with the 503
    assert not feed.started and hub.count() == 0


async def test_cursor_resumes_after_it(hub: Hub, store: SQLiteStore) -> None:
    for user in ("alice", "bob", "alice", None):
        await add(store, user)
    sink = Sink()
    async with Running(make_feed(hub, store, cursor=1), sink):
        await sink.wait_for(lambda: sink.ids() == [3, 4])
        assert sink.hello == {"user": "alice", "newest_id": 4, "unread": 3, "replay": "resumed"}
        live = await add(store, None)
        await sink.wait_for(lambda: live in sink.ids())
    assert sink.ids() == [3, 4, 5]
    assert (hub.stats.replayed, hub.stats.delivered) == (2, 1)


async def test_cursor_zero_replays_the_whole_history(hub: Hub, store: SQLiteStore) -> None:
    for user in ("alice", "bob", None):
        await add(store, user)
    sink = Sink()
    async with Running(make_feed(hub, store, cursor=0), sink):
        await sink.wait_for(lambda: len(sink.ids()) == 2)
    assert sink.hello["replay"] == "resumed"
    assert sink.ids() == [1, 3]


async def test_cursor_at_newest_replays_nothing(hub: Hub, store: SQLiteStore) -> None:
    await add(store)
    await add(store)
    sink = Sink()
    async with Running(make_feed(hub, store, cursor=2, heartbeat=0.05), sink):
        await sink.wait_for(lambda: KEEPALIVE in sink.events)
    assert sink.hello["replay"] == "resumed"
    assert sink.ids() == []


async def test_reset_when_retention_removed_notifications_after_the_cursor(
        hub: Hub, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1_700_000_000_000]
    monkeypatch.setattr(sqlite_module, "now_ms", lambda: clock[0])
    await add(store)
    await add(store, None)
    clock[0] += 10_000
    await add(store)
    assert await store.prune(clock[0] - 5_000, 1000) == 2  # pruned through id 2
    missing = Sink()
    async with Running(make_feed(hub, store, cursor=1), missing):
        await missing.wait_for(lambda: missing.ids() == [3])
    assert missing.hello == {"user": "alice", "newest_id": 3, "unread": 1, "replay": "reset"}
    complete = Sink()  # a cursor at the pruned boundary missed nothing
    async with Running(make_feed(hub, store, cursor=2), complete):
        await complete.wait_for(lambda: complete.ids() == [3])
    assert complete.hello["replay"] == "resumed"


async def test_reset_when_cursor_is_beyond_any_history(hub: Hub, store: SQLiteStore) -> None:
    await add(store)
    await add(store, None)
    sink = Sink()
    async with Running(make_feed(hub, store, cursor=99), sink):
        await sink.wait_for(lambda: sink.ids() == [1, 2])
    assert sink.hello["replay"] == "reset"


async def test_topics_filter_replay_and_live_but_not_hello(hub: Hub, store: SQLiteStore) -> None:
    await add(store, "alice", "a")
    await add(store, "alice", "b")
    await add(store, None, None)
    sink = Sink()
    async with Running(make_feed(hub, store, cursor=0, topics=frozenset({"a"})), sink):
        await sink.wait_for(lambda: sink.ids() == [1])
        await add(store, "alice", "b")
        last = await add(store, None, "a")
        await sink.wait_for(lambda: last in sink.ids())
    assert sink.hello == {"user": "alice", "newest_id": 3, "unread": 3, "replay": "resumed"}
    assert sink.ids() == [1, 5]


# -- no gap, no duplicate -------------------------------------------------------------

async def test_committed_before_replay_and_dispatched_after_subscribe_is_sent_once(
        hub: Hub, store: SQLiteStore) -> None:
    committed: list[Notification] = []
    store.on_commit = committed.extend  # dispatch by hand, when the test says so
    await add(store)

    async def commit_during_hello(batch: list[Outbound]) -> None:
        if json.loads(batch[0].ws)["type"] == "auth_success":
            await add(store)  # committed before the replay query runs...
            hub.dispatch(committed[-1:])  # ...and buffered by the live stream as well

    sink = Sink(commit_during_hello)
    async with Running(make_feed(hub, store, cursor=0, heartbeat=0.05), sink):
        await sink.wait_for(lambda: sink.ids() == [1, 2])
        await sink.wait_for(lambda: KEEPALIVE in sink.events)  # the buffer was drained
        await add(store)
        hub.dispatch(committed[-1:])
        await sink.wait_for(lambda: 3 in sink.ids())
    assert sink.ids() == [1, 2, 3]
    assert hub.stats.replayed == 2 and hub.stats.delivered == 1


async def test_overflow_during_replay_is_read_back_from_storage(hub: Hub, store: SQLiteStore) -> None:
    hub.stream_buffer = 2
    for _ in range(3):
        await add(store)

    async def publish_during_replay(batch: list[Outbound]) -> None:
        if batch[0].id == 1:  # the first replay page is being sent
            for _ in range(5):
                await add(store)  # dispatched live: overflows the 2-event buffer

    sink = Sink(publish_during_replay)
    feed = make_feed(hub, store, cursor=0)
    async with Running(feed, sink):
        await sink.wait_for(lambda: 8 in sink.ids())
        assert feed.close_reason is None
        live = await add(store)
        await sink.wait_for(lambda: live in sink.ids())
    assert sink.ids() == list(range(1, 10))
    assert hub.stats.slow_disconnects == 0


async def test_live_overflow_cancels_a_blocked_send(hub: Hub, store: SQLiteStore) -> None:
    hub.stream_buffer = 1
    blocked = asyncio.Event()

    async def stall_on_notifications(batch: list[Outbound]) -> None:
        if batch[0].id is not None:
            blocked.set()
            await asyncio.Event().wait()  # a client that stopped reading

    sink = Sink(stall_on_notifications)
    feed = make_feed(hub, store)
    task = asyncio.create_task(feed.run(sink))
    await sink.wait_for(lambda: len(sink.events) == 1)  # hello
    await add(store)
    async with asyncio.timeout(5):
        await blocked.wait()
    await add(store)
    await add(store)  # two buffered behind a one-event buffer: overflow
    async with asyncio.timeout(5):  # the blocked send is abandoned: the run ends
        assert await task == "overflow"
    assert feed.close_reason == "overflow"
    assert hub.stats.slow_disconnects == 1
    assert hub.count() == 0


# -- keepalive and token expiry -------------------------------------------------------

async def test_keepalive_after_a_quiet_interval(hub: Hub, store: SQLiteStore) -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with Running(make_feed(hub, store, heartbeat=0.05), sink):
        await sink.wait_for(lambda: KEEPALIVE in sink.events)
        elapsed = loop.time() - start
    assert sink.events[0] is not KEEPALIVE
    assert sink.events[1] is KEEPALIVE
    assert elapsed >= 0.04


async def test_no_keepalive_while_events_flow(hub: Hub, store: SQLiteStore) -> None:
    sink = Sink()
    async with Running(make_feed(hub, store, heartbeat=5.0), sink):
        for _ in range(3):
            await add(store)
        await sink.wait_for(lambda: len(sink.ids()) == 3)
    assert KEEPALIVE not in sink.events


async def test_token_expiring_at_once_then_expired(hub: Hub, store: SQLiteStore) -> None:
    expires_at = time.time() + 0.3  # well under a minute left
    sink = Sink()
    async with asyncio.timeout(5):
        result = await make_feed(hub, store, expires_at=expires_at).run(sink)
    assert result == "expired"
    assert time.time() >= expires_at
    assert sink.kinds() == ["auth_success", "token-expiring"]
    assert sink.payloads("token-expiring") == [
        {"type": "token-expiring", "expires_at": iso_ms(int(expires_at * 1000))}]
    assert sink.events[1].id is None
    assert hub.count() == 0


async def test_token_expiring_is_sent_one_warning_interval_before_expiry(
        hub: Hub, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(feed_module, "EXPIRY_WARNING", 0.2)
    start = time.time()
    expires_at = start + 0.4
    sent_at: list[float] = []

    async def stamp(batch: list[Outbound]) -> None:
        sent_at.append(time.time())

    sink = Sink(stamp)
    async with asyncio.timeout(5):
        result = await make_feed(hub, store, expires_at=expires_at, heartbeat=15).run(sink)
    assert result == "expired"
    assert sink.kinds() == ["auth_success", "token-expiring"]
    assert sent_at[1] >= expires_at - 0.2 - 0.02  # not earlier than the warning point


async def test_far_expiry_sends_no_warning_yet(hub: Hub, store: SQLiteStore) -> None:
    sink = Sink()
    async with Running(make_feed(hub, store, expires_at=time.time() + 3600, heartbeat=0.05), sink):
        await sink.wait_for(lambda: KEEPALIVE in sink.events)
    assert "token-expiring" not in sink.kinds()


async def test_client_gone_ends_the_run_and_unregisters(hub: Hub, store: SQLiteStore) -> None:
    """The transport's watcher calls ``client_gone``: before the run starts, the run ends
    at once without registering; during it, the parked task is woken and ends "gone"."""
    early = make_feed(hub, store)
    early.client_gone()
    assert await early.run(Sink()) == "gone" and not early.started and hub.count() == 0

    sink = Sink()
    feed = make_feed(hub, store)
    task = asyncio.create_task(feed.run(sink))
    await sink.wait_for(lambda: len(sink.events) == 1)  # hello: live, parked in its wait
    assert hub.count() == 1
    feed.client_gone()
    async with asyncio.timeout(5):
        assert await task == "gone"
    assert hub.count() == 0 and hub.user_count() == 0
