"""The SQLite store's multi-row inserts (``store/sqlite_rows.py``): batches of every size
split into statements and stored in order, NULL bound as the integer 0 without turning any
text into NULL, and the receipts table's v5 key (migrated with its rows)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sse_notify.models import NotificationDraft
from sse_notify.store import Status, sqlite_schema
from sse_notify.store.sqlite import SQLiteStore
from sse_notify.store.sqlite_rows import SIZES


def _drafts(n: int) -> list[NotificationDraft]:
    """Every nullable field both NULL and texts a careless NULL marker would eat."""
    texts = [None, "", "0", "x"]
    return [NotificationDraft(None if i % 7 == 3 else f"u{i % 5}", f"t{i}", body=texts[i % 4],
                              topic=None if i % 2 else f"topic{i % 3}",
                              data=None if i % 3 else {"i": i, "z": 0})
            for i in range(n)]


async def test_batches_of_every_split_are_stored_whole_and_in_order(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "n.db")
    await store.open()
    try:
        expected: list[tuple[object, ...]] = []
        for n in (1, 3, 100, SIZES[0] * 2 + 37):  # 256 * 2 + 32 + 4 + 1: every kind of chunk
            drafts = _drafts(n)
            result = await store.add_many([[d] for d in drafts], "pub")
            ids = [i for [i] in result.results]
            assert ids == list(range(len(expected) + 1, len(expected) + n + 1))
            expected += [(i, d.user, d.topic, d.title, d.body, d.data) for i, d in zip(ids, drafts)]
        stored = await store.since(0, 10_000)
        assert [(x.id, x.user, x.topic, x.title, x.body, x.data) for x in stored] == expected
        raw = await store._read("SELECT count(*) FROM notifications WHERE body = '0' AND typeof(body) = 'text'", ())
        assert raw == [(sum(1 for e in expected if e[4] == "0"),)]
    finally:
        await store.close()


async def test_receipts_in_large_flushes_skip_strangers(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "n.db")
    await store.open()
    try:
        result = await store.add_many([[NotificationDraft(f"u{i % 3}", "t")] for i in range(300)], "pub")
        ids = [i for [i] in result.results]
        rows = [(f"u{i % 3}", id, 1000 + i) for i, id in enumerate(ids)]
        rows += [(f"u{(i + 1) % 3}", id, 5) for i, id in enumerate(ids)]  # not theirs
        rows += [("u0", 10_000 + i, 5) for i in range(40)]  # no such notification
        await store.record_deliveries(rows)
        assert await store._read("SELECT count(*) FROM receipts", ()) == [(300,)]
        assert await store.status(ids[299]) == Status(ids[299], "u2", 1299, None, 0)
    finally:
        await store.close()


async def test_a_version_4_database_keeps_its_receipts(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    old = sqlite3.connect(path)
    old.executescript("".join(sqlite_schema.MIGRATIONS[:4]) + "PRAGMA user_version=4;")
    old.execute("INSERT INTO notifications VALUES (7, 'alice', NULL, 't', NULL, 'low', NULL, 1)")
    old.execute("INSERT INTO receipts (user, id, delivered_at) VALUES ('alice', 7, 1234)")
    old.commit()
    old.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert await store.status(7) == Status(7, "alice", 1234, None, 0)
        indexes = await store._read("SELECT name FROM sqlite_master WHERE tbl_name = 'receipts'", ())
        assert [name for (name,) in indexes] == ["receipts"]  # its key's autoindex is not listed
        await store.record_deliveries([("alice", 7, 9999)])  # the first stays
        assert await store.status(7) == Status(7, "alice", 1234, None, 0)
    finally:
        await store.close()
