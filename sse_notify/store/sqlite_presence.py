"""The presence tables of a SQLite deployment (:class:`~sse_notify.store.presence.PresenceStore`).

Deliberate decisions:

* **A database file of its own** beside the store's (``notifications.db`` ->
  ``notifications-presence.db``), with its own schema versions (``_MIGRATIONS``). A beat
  then never takes the write lock that publishes commit under: ten thousand users
  connecting at once make one beat of ~60 ms, which would otherwise hold up every publish
  for as long. What the file holds is rebuilt from the live streams within a second of a
  restart (only ``last_seen`` lasts), so it needs none of the store's durability.
* ``synchronous=NORMAL`` in WAL mode: a beat need not reach the disk before it returns;
  a crash of the machine can lose the last beats, never corrupt the file.
* Everything on the connection goes one operation at a time (an asyncio lock), so a
  lookup never reads a beat's half-done transaction.
* The machine's clock: the processes sharing a SQLite file share it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiosqlite

from ..models import now_ms
from . import StoreUnavailable
from .presence import UserPresence, combine

__all__ = ["SQLitePresence"]

_SCHEMA_V1 = """
CREATE TABLE presence_nodes (
    node    TEXT PRIMARY KEY,
    beat_at INTEGER NOT NULL       -- epoch ms
) WITHOUT ROWID;
CREATE TABLE presence (
    user    TEXT NOT NULL,
    node    TEXT NOT NULL,
    streams INTEGER NOT NULL,
    PRIMARY KEY (user, node)
) WITHOUT ROWID;
CREATE INDEX presence_node ON presence (node);
CREATE TABLE presence_last_seen (
    user TEXT PRIMARY KEY,
    at   INTEGER NOT NULL          -- epoch ms
) WITHOUT ROWID;
"""
_MIGRATIONS = [_SCHEMA_V1]

_KEEP_NEWEST = "ON CONFLICT (user) DO UPDATE SET at = max(at, excluded.at)"


class SQLitePresence:
    def __init__(self, store_path: Path):
        self.path = store_path.with_name(f"{store_path.stem}-presence.db")
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000"):
                await db.execute(f"PRAGMA {pragma}")
            [(version,)] = await db.execute_fetchall("PRAGMA user_version")
            for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                await db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version={number}; COMMIT;")
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()

    @contextlib.asynccontextmanager
    async def _use(self, write: bool) -> AsyncIterator[aiosqlite.Connection]:
        """The connection, alone; with ``write``, inside one transaction."""
        async with self._lock:
            db = self._db
            if db is None:
                raise StoreUnavailable("the store is not open")
            try:
                if not write:
                    yield db
                    return
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error, ValueError):  # it may be gone already
                        await db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, ValueError) as exc:  # ValueError: the connection was closed
                raise StoreUnavailable(str(exc)) from exc

    async def beat(self, node: str, changes: Mapping[str, int]) -> bool:
        now = now_ms()
        async with self._use(write=True) as db:
            async with db.execute("UPDATE presence_nodes SET beat_at = ? WHERE node = ?", (now, node)) as cursor:
                known = cursor.rowcount > 0
            if not known:
                await db.execute("INSERT INTO presence_nodes (node, beat_at) VALUES (?, ?)", (node, now))
            counted = [(user, node, streams) for user, streams in changes.items() if streams > 0]
            gone = [user for user, streams in changes.items() if streams <= 0]
            if counted:
                await db.executemany(
                    "INSERT INTO presence (user, node, streams) VALUES (?, ?, ?) "
                    "ON CONFLICT (user, node) DO UPDATE SET streams = excluded.streams", counted)
            if gone:
                await db.executemany("DELETE FROM presence WHERE user = ? AND node = ?",
                                     [(user, node) for user in gone])
                await db.executemany(f"INSERT INTO presence_last_seen (user, at) VALUES (?, ?) {_KEEP_NEWEST}",
                                     [(user, now) for user in gone])
        return known

    async def leave(self, node: str) -> None:
        async with self._use(write=True) as db:
            await db.execute(f"INSERT INTO presence_last_seen (user, at) SELECT user, ? FROM presence "
                             f"WHERE node = ? {_KEEP_NEWEST}", (now_ms(), node))
            await db.execute("DELETE FROM presence WHERE node = ?", (node,))
            await db.execute("DELETE FROM presence_nodes WHERE node = ?", (node,))

    async def expire(self, ttl_ms: int) -> None:
        fresh = now_ms() - ttl_ms
        async with self._use(write=True) as db:
            await db.execute(
                "INSERT INTO presence_last_seen (user, at) SELECT p.user, max(n.beat_at) FROM presence p "
                f"JOIN presence_nodes n ON n.node = p.node WHERE n.beat_at < ? GROUP BY p.user {_KEEP_NEWEST}",
                (fresh,))
            await db.execute("DELETE FROM presence WHERE node IN "
                             "(SELECT node FROM presence_nodes WHERE beat_at < ?)", (fresh,))
            await db.execute("DELETE FROM presence_nodes WHERE beat_at < ?", (fresh,))

    async def lookup(self, users: Sequence[str], ttl_ms: int) -> dict[str, UserPresence]:
        fresh = now_ms() - ttl_ms
        marks = ",".join("?" * len(users))
        async with self._use(write=False) as db:
            counted = await db.execute_fetchall(
                "SELECT p.user, coalesce(sum(CASE WHEN n.beat_at >= ? THEN p.streams END), 0), "
                "max(CASE WHEN n.beat_at < ? THEN n.beat_at END) "
                f"FROM presence p JOIN presence_nodes n ON n.node = p.node WHERE p.user IN ({marks}) "
                "GROUP BY p.user", (fresh, fresh, *users))
            seen = await db.execute_fetchall(
                f"SELECT user, at FROM presence_last_seen WHERE user IN ({marks})", tuple(users))
        return combine(users, counted, seen)
