"""The stores' receipts (``ReceiptStore``), on SQLite and PostgreSQL alike, and the
batching recorder in front of them (:class:`sse_notify.receipts.Receipts`)."""

from __future__ import annotations

from typing import Any

import pytest

from sse_notify.receipts import Receipts
from sse_notify.store import ReceiptStore, Status, Store, StoreUnavailable
from sse_notify.wire import Outbound

from .test_store import Clock, add_one, clock, db_path, store, store_factory  # noqa: F401 (fixtures)


async def count(store: Store, table: str) -> int:
    rows = await store._read(f"SELECT count(*) FROM {table}", *(() if hasattr(store, "url") else ((),)))  # type: ignore[attr-defined]
    return rows[0][0]


async def test_first_delivery_wins_and_strangers_are_ignored(store: Store) -> None:
    assert isinstance(store, ReceiptStore)
    mine = await add_one(store, "alice")
    broadcast = await add_one(store, None)
    await store.record_deliveries([("alice", mine, 1000), ("bob", mine, 1100), ("alice", broadcast, 1200),
                                   ("alice", 999_999, 1300)])
    await store.record_deliveries([("alice", mine, 2000)])
    assert await store.status(mine) == Status(mine, "alice", 1000, None, 0)
    assert await count(store, "receipts") == 1  # not bob's, no broadcast, no unknown id
    assert await store.status(999_999) is None


async def test_read_at_is_when_the_mark_was_made_and_a_broadcast_counts_readers(store: Store, clock: Clock) -> None:
    mine = await add_one(store, "alice")
    broadcast = await add_one(store, None)
    clock.now += 5000
    await store.mark_read("alice", [mine, broadcast])
    clock.now += 5000
    await store.mark_all_read("alice")  # already read: the first time stays
    await store.mark_all_read("bob")
    assert await store.status(mine) == Status(mine, "alice", None, clock.now - 5000, 0)
    assert await store.status(broadcast) == Status(broadcast, None, None, None, 2)


async def test_retention_removes_receipts_with_their_notifications(store: Store, clock: Clock) -> None:
    old = await add_one(store, "alice")
    await store.record_deliveries([("alice", old, clock.now)])
    clock.now += 10_000
    new = await add_one(store, "alice")
    await store.record_deliveries([("alice", new, clock.now)])
    assert await store.prune(clock.now - 5_000, 1000) == 1
    assert await store.status(old) is None
    assert await count(store, "receipts") == 1
    await store.record_deliveries([("alice", old, clock.now)])  # noted before it was pruned
    assert await count(store, "receipts") == 1


class FlakyStore:
    def __init__(self) -> None:
        self.fail = True
        self.rows: list[Any] = []

    async def record_deliveries(self, rows: Any) -> None:
        if self.fail:
            raise StoreUnavailable("down")
        self.rows.extend(rows)

    async def status(self, id: int) -> None:
        return None


def event(id: int | None, user: str | None) -> Outbound:
    return Outbound("notification", b"{}", id, None, user)


async def test_the_recorder_keeps_what_a_failed_flush_held_and_the_first_time() -> None:
    backend = FlakyStore()
    receipts = Receipts(backend)  # type: ignore[arg-type]
    receipts.delivered("alice", [event(1, "alice"), event(2, None), event(None, "alice")])
    await receipts.flush()  # fails: kept
    receipts.delivered("alice", [event(1, "alice"), event(3, "alice")])
    backend.fail = False
    await receipts.flush()
    assert sorted((u, i) for u, i, _ in backend.rows) == [("alice", 1), ("alice", 3)]
    first = {i: at for _, i, at in backend.rows}
    assert first[1] <= first[3]
    await receipts.flush()  # nothing new: no call
    assert len(backend.rows) == 2


@pytest.mark.parametrize("enabled", [True, False])
def test_the_setting_turns_recording_off(enabled: bool, tmp_path: Any) -> None:
    from sse_notify.config import Settings
    from sse_notify.service import Service

    settings = Settings.from_env({"SSE_NOTIFY_RECEIPTS": "1" if enabled else "0"}, data_dir=tmp_path)
    service = Service(settings)
    assert (service.hub.on_delivered is not None) is enabled
