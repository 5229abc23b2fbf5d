"""sse_notify.follower: the store's log turned into live delivery, whatever the broker does.

The store is a real SQLite store; the broker is the in-process one, scripted to lose,
repeat, reorder or stay silent, or a real network broker between two "nodes" (two
brokers and followers over one store)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from sse_notify.broker import RESYNC, IdRange, Message, open_broker
from sse_notify.broker.memory import MemoryBroker
from sse_notify.follower import Follower
from sse_notify.models import Notification, NotificationDraft, ReadChange
from sse_notify.store import StoreUnavailable
from sse_notify.store.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(30)


class ScriptedBroker(MemoryBroker):
    """The in-process broker, losing the ids in ``drop`` and sending every batch ``times``
    times; ``silent`` sends nothing at all."""

    def __init__(self) -> None:
        super().__init__()
        self.drop: set[int] = set()
        self.times = 1
        self.silent = False

    def publish(self, messages: Sequence[Message]) -> None:
        if self.silent:
            return
        kept = [m for m in messages if not (isinstance(m, Notification) and m.id in self.drop)]
        for _ in range(self.times):
            super().publish(kept)

    def send(self, *items: object) -> None:
        """Put ``items`` (batches, RESYNC) on the wire as they are."""
        for item in items:
            self._queue.put_nowait(item)  # type: ignore[arg-type]


class Delivered:
    """The follower's ``deliver``: records what reaches the hub, and wakes waiters."""

    def __init__(self) -> None:
        self.messages: list[Notification | ReadChange] = []
        self._changed = asyncio.Event()

    def __call__(self, messages: Sequence[Notification | ReadChange]) -> None:
        self.messages += messages
        self._changed.set()

    @property
    def ids(self) -> list[int]:
        return [m.id for m in self.messages if isinstance(m, Notification)]

    async def until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()

    async def through(self, last: int, timeout: float = 10.0) -> None:
        await self.until(lambda: bool(self.ids) and self.ids[-1] >= last, timeout)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "log.db")
    await store.open()
    yield store
    await store.close()


class Node:
    def __init__(self, store: SQLiteStore, broker: MemoryBroker | object, **options: float):
        self.store = store
        self.broker = broker
        self.delivered = Delivered()
        self.follower = Follower(store, broker, self.delivered, **options)  # type: ignore[arg-type]
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Node:
        await self.broker.open()  # type: ignore[attr-defined]
        await self.follower.start()
        self.task = asyncio.create_task(self.follower.run())
        return self

    async def stop(self) -> None:
        await self.broker.close()  # type: ignore[attr-defined]
        assert self.task is not None
        async with asyncio.timeout(5):
            await self.task  # closing the broker ends the follower


@pytest.fixture
async def node(store: SQLiteStore) -> AsyncIterator[Callable[..., Node]]:
    """``node(**follower_options)``: a follower over ``store`` with a scripted broker that
    the store's commits go to; started by ``await node(...).start()``."""
    made: list[Node] = []

    def make(**options: float) -> Node:
        made.append(Node(store, ScriptedBroker(), **options))
        store.on_commit = made[-1].broker.publish  # type: ignore[attr-defined]
        return made[-1]

    yield make
    for n in made:
        if n.task is not None and not n.task.done():
            await n.stop()


async def publish(store: SQLiteStore, count: int, user: str | None = "alice") -> list[int]:
    """``count`` publishes of one notification each, one after the other."""
    ids = []
    for i in range(count):
        ids += (await store.add([NotificationDraft(user, f"n{i}")], "pub")).ids
    return ids


async def test_delivers_in_order_without_reading_the_store(node: Callable[..., Node],
                                                           store: SQLiteStore) -> None:
    n = await node(check_interval=60).start()
    ids = await publish(store, 20)
    results = await asyncio.gather(*(store.add([NotificationDraft("a", "x")] * 3, "p") for _ in range(10)))
    ids += sorted(i for r in results for i in r.ids)
    await n.delivered.through(ids[-1])
    assert n.delivered.ids == ids == list(range(1, 51))
    assert (n.follower.position, n.follower.catchup_reads, n.follower.caught_up) == (50, 0, 0)


async def test_start_takes_the_position_after_subscribing(node: Callable[..., Node],
                                                          store: SQLiteStore) -> None:
    await publish(store, 5)  # before the follower existed: replay's business, not live
    n = node(check_interval=60)
    n.broker.send([Notification(3, "alice", None, "old", None, "low", None, 0)])  # queued, stale
    await n.start()
    assert n.follower.position == 5
    await publish(store, 2)
    await n.delivered.through(7)
    assert n.delivered.ids == [6, 7]


async def test_a_lost_message_is_read_from_the_store(node: Callable[..., Node],
                                                     store: SQLiteStore) -> None:
    n = node(check_interval=60, gap_wait=0.01)
    n.broker.drop = {3, 7, 8}
    await n.start()
    await publish(store, 10)
    await n.delivered.through(10)
    assert n.delivered.ids == list(range(1, 11))
    assert n.follower.catchup_reads >= 1 and n.follower.caught_up >= 3


async def test_the_last_message_lost_is_caught_up_by_the_periodic_check(
        node: Callable[..., Node], store: SQLiteStore) -> None:
    n = node(check_interval=0.2, gap_wait=0.01)
    n.broker.drop = {4}  # nothing after it reveals the gap
    await n.start()
    await publish(store, 4)
    await n.delivered.through(4)
    assert n.delivered.ids == [1, 2, 3, 4]


async def test_duplicates_are_skipped(node: Callable[..., Node], store: SQLiteStore) -> None:
    n = node(check_interval=60)
    n.broker.times = 3
    await n.start()
    await publish(store, 10)
    n.broker.send([Notification(2, "alice", None, "again", None, "low", None, 0)])
    await publish(store, 1)
    await n.delivered.through(11)
    assert n.delivered.ids == list(range(1, 12))
    assert n.follower.catchup_reads == 0


async def test_a_reordered_message_fills_its_gap_without_a_read(node: Callable[..., Node],
                                                                store: SQLiteStore) -> None:
    n = node(check_interval=60, gap_wait=5.0)
    n.broker.silent = True
    await n.start()
    await publish(store, 4)
    [one, two, three, four] = await store.since(0, 10)
    n.broker.send([one], [three, four])  # 2 is late, as another node's message may be
    await n.delivered.through(1)
    await asyncio.sleep(0.05)  # nothing to await: 3 and 4 must stay held back meanwhile
    assert n.delivered.ids == [1]
    n.broker.send([two])
    await n.delivered.through(4)
    assert n.delivered.ids == [1, 2, 3, 4]
    assert n.follower.catchup_reads == 0


async def test_a_gap_is_read_after_the_gap_wait(node: Callable[..., Node], store: SQLiteStore) -> None:
    n = node(check_interval=60, gap_wait=0.3)
    n.broker.drop = {2}
    await n.start()
    loop = asyncio.get_running_loop()
    await publish(store, 3)
    started = loop.time()
    await n.delivered.through(3)
    waited = loop.time() - started
    assert n.delivered.ids == [1, 2, 3]
    assert 0.25 <= waited < 2.0 and n.follower.catchup_reads == 1


async def test_resync_catches_up_at_once(node: Callable[..., Node], store: SQLiteStore) -> None:
    n = node(check_interval=60, gap_wait=60)
    await n.start()
    await publish(store, 2)
    await n.delivered.through(2)
    n.broker.silent = True  # disconnected: everything is lost meanwhile
    await publish(store, 5)
    n.broker.silent = False
    n.broker.send(RESYNC)  # reconnected
    await n.delivered.through(7, timeout=2)  # neither the gap wait nor the check is due
    await publish(store, 1)
    await n.delivered.through(8)
    assert n.delivered.ids == list(range(1, 9))
    assert n.follower.caught_up == 5


async def test_the_periodic_check_catches_up_with_no_broker_traffic(
        node: Callable[..., Node], store: SQLiteStore) -> None:
    n = node(check_interval=0.1, gap_wait=0.01)
    n.broker.silent = True
    await n.start()
    await publish(store, 30)
    await n.delivered.through(30)
    assert n.delivered.ids == list(range(1, 31))
    assert n.follower.catchup_reads >= 1 and n.follower.caught_up == 30


async def test_a_store_outage_only_delays(node: Callable[..., Node], store: SQLiteStore,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    n = node(check_interval=0.1, gap_wait=0.01)
    n.broker.drop = {2}
    await n.start()
    real_since, real_max_id = store.since, store.max_id
    down = asyncio.Event()
    down.set()

    async def since(after_id: int, limit: int) -> list[Notification]:
        if down.is_set():
            raise StoreUnavailable("disk on fire")
        return await real_since(after_id, limit)

    async def max_id() -> int:
        if down.is_set():
            raise StoreUnavailable("disk on fire")
        return await real_max_id()

    monkeypatch.setattr(store, "since", since)
    monkeypatch.setattr(store, "max_id", max_id)
    await publish(store, 4)
    n.broker.publish([ReadChange("alice", (1,))])  # not in the log: goes past the gap at once
    await n.delivered.until(lambda: any(isinstance(m, ReadChange) for m in n.delivered.messages))
    await asyncio.sleep(0.5)  # several failed reads and checks
    assert n.delivered.ids == [1]
    down.clear()
    await n.delivered.through(4)
    assert n.delivered.ids == [1, 2, 3, 4]
    assert not n.task.done()  # type: ignore[union-attr]


async def test_lag_is_measured_at_each_check(node: Callable[..., Node], store: SQLiteStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    n = node(check_interval=0.05, gap_wait=0.01)
    n.broker.silent = True
    await n.start()

    async def since(after_id: int, limit: int) -> list[Notification]:
        raise StoreUnavailable("locked")

    real_since = store.since
    monkeypatch.setattr(store, "since", since)
    await publish(store, 6)
    async with asyncio.timeout(5):
        while n.follower.lag != 6:  # the metric has no event: poll it
            await asyncio.sleep(0.02)
    monkeypatch.setattr(store, "since", real_since)
    await n.delivered.through(6)
    async with asyncio.timeout(5):
        while n.follower.lag != 0:
            await asyncio.sleep(0.02)


async def test_an_id_range_is_read_back_from_the_store(node: Callable[..., Node],
                                                       store: SQLiteStore) -> None:
    n = node(check_interval=60, gap_wait=60)
    n.broker.silent = True
    await n.start()
    await publish(store, 2)
    n.broker.send([IdRange(1, 2)])
    await n.delivered.through(2)
    assert n.delivered.ids == [1, 2]
    await publish(store, 1)
    n.broker.send([IdRange(3, 3)])
    await n.delivered.through(3)
    assert n.delivered.ids == [1, 2, 3]


async def test_ids_the_store_does_not_have_are_never_delivered(node: Callable[..., Node],
                                                               store: SQLiteStore) -> None:
    n = node(check_interval=60, gap_wait=0.01)
    await n.start()
    await publish(store, 1)
    await n.delivered.through(1)
    n.broker.send([Notification(9, "mallory", None, "not in the log", None, "low", None, 0)])
    async with asyncio.timeout(5):
        while n.follower.catchup_reads == 0:  # a read that delivers nothing: no event
            await asyncio.sleep(0.01)
    await publish(store, 1)
    await n.delivered.through(2)
    assert n.delivered.ids == [1, 2] and n.follower.position == 2


async def test_a_failing_delivery_does_not_stop_the_follower(node: Callable[..., Node],
                                                             store: SQLiteStore) -> None:
    n = node(check_interval=60)
    record = n.follower.deliver
    calls = 0

    def flaky(messages: Sequence[Notification | ReadChange]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        record(messages)

    n.follower.deliver = flaky
    await n.start()
    await publish(store, 3)
    await n.delivered.through(3)
    assert n.delivered.ids == [2, 3] and not n.task.done()  # type: ignore[union-attr]


# -- two nodes over a real network broker -------------------------------------------------

@pytest.fixture(params=["postgres", "redis"])
def network_broker_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


async def test_two_nodes_over_a_network_broker(network_broker_url: str, store: SQLiteStore) -> None:
    url = network_broker_url
    a = Node(store, open_broker(url), check_interval=60)
    b = Node(store, open_broker(url), check_interval=60)
    store.on_commit = a.broker.publish  # type: ignore[attr-defined]  # node A commits
    await a.start()
    await b.start()
    try:
        ids = await publish(store, 50)
        results = await asyncio.gather(*(store.add([NotificationDraft(None, "all")] * 2, "p") for _ in range(25)))
        ids += sorted(i for r in results for i in r.ids)
        a.broker.publish([ReadChange("alice", (1, 2))])  # type: ignore[attr-defined]
        for n in (a, b):
            await n.delivered.through(ids[-1])
            await n.delivered.until(lambda n=n: isinstance(n.delivered.messages[-1], ReadChange))
            assert n.delivered.ids == list(range(1, 101))
    finally:
        await a.stop()
        await b.stop()
