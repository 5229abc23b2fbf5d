"""The SQLite store's reads, on a connection of their own beside the writer's (WAL).

A read runs to completion in that connection's thread whether or not its caller is
cancelled.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite
import orjson

from ..models import Notification
from . import HistoryPage, StoreUnavailable
from .coalesce import Coalescer
from .sqlite_schema import COLUMNS, visible

__all__ = ["SQLiteReads", "row_to_notification"]


def row_to_notification(row: Sequence[Any]) -> Notification:
    data = row[6]
    return Notification(row[0], row[1], row[2], row[3], row[4], row[5],
                        None if data is None else orjson.loads(data), row[7])


class SQLiteReads:
    """Mixin: the reads of :class:`~.sqlite.SQLiteStore` (its reader connection, the
    highest id issued and the pruned-through mark are the store's)."""

    _reader: aiosqlite.Connection | None
    _last_id: int
    _pruned_through: int
    _states: Coalescer[tuple[int, int]] | None = None  # made on first use

    async def _read(self, sql: str, params: Any) -> list[Any]:
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("the store is not open")
        try:
            # One call, run to completion in the connection's thread. With execute() then
            # fetchall(), a caller cancelled in between (a client dropping mid-replay) would
            # leave a stepped statement open, pinning this connection to an old snapshot:
            # every later read would miss newer commits.
            return list(await reader.execute_fetchall(sql, params))
        except (sqlite3.Error, ValueError) as exc:  # ValueError: the connection was closed
            raise StoreUnavailable(str(exc)) from exc

    async def state(self, user: str) -> tuple[int, int, int]:
        """Coalesced: the users asking together are read in one statement (coalesce.py)."""
        if self._states is None:
            self._states = Coalescer(self._read_states)
        newest, unread = await self._states.get(user)
        return newest, unread, self._pruned_through

    async def _read_states(self, users: Sequence[str]) -> list[tuple[int, int]]:
        """``(newest visible id, unread)`` of each user, in one statement. Unread is the
        visible count less the user's reads: both stores mark only what the user can see,
        and pruning removes a notification's reads with it, so a user's reads are all of
        visible notifications. Index range counts, not a lookup in ``reads`` per row."""
        values = ",".join(f"({i},?)" for i in range(len(users)))
        rows = await self._read(
            f"WITH u(i, name) AS (VALUES {values}) SELECT "
            "max(coalesce((SELECT max(id) FROM notifications WHERE user = u.name), 0), "
            "    (SELECT coalesce(max(id), 0) FROM notifications WHERE user IS NULL)), "
            "(SELECT count(*) FROM notifications WHERE user = u.name) "
            "  + (SELECT count(*) FROM notifications WHERE user IS NULL) "
            "  - (SELECT count(*) FROM reads WHERE user = u.name) "
            "FROM u ORDER BY i", tuple(users))
        return [(newest, unread) for newest, unread in rows]

    async def max_id(self) -> int:
        return self._last_id

    async def replay(self, user: str, after_id: int, topics: frozenset[str] | None,
                     limit: int) -> list[Notification]:
        return [row_to_notification(row) for row in await self.replay_rows(user, after_id, topics, limit)]

    async def replay_rows(self, user: str, after_id: int, topics: frozenset[str] | None,
                          limit: int) -> list[tuple[Any, ...]]:
        params: dict[str, Any] = {"user": user, "after": after_id, "limit": limit}
        where = "AND id > :after"
        if topics is not None:
            names = sorted(topics)
            params.update({f"t{i}": t for i, t in enumerate(names)})
            where += " AND topic IN (" + ",".join(f":t{i}" for i in range(len(names))) + ")"
        return await self._read("SELECT * FROM (" + visible(where) + ") ORDER BY id LIMIT :limit", params)

    async def since(self, after_id: int, limit: int) -> list[Notification]:
        rows = await self._read(f"SELECT {COLUMNS} FROM notifications WHERE id > ? ORDER BY id LIMIT ?",
                                (after_id, limit))
        return [row_to_notification(row) for row in rows]

    async def history(self, user: str, limit: int, before: int | None,
                      unread: bool | None) -> HistoryPage:
        params: dict[str, Any] = {"user": user, "limit": limit + 1}
        where = ""
        if before is not None:
            where = "AND id < :before"
            params["before"] = before
        filter_ = {None: "", True: "WHERE r.id IS NULL", False: "WHERE r.id IS NOT NULL"}[unread]
        rows = await self._read(
            f"SELECT v.*, r.id IS NOT NULL FROM ({visible(where)}) v "
            f"LEFT JOIN reads r ON r.user = :user AND r.id = v.id {filter_} "
            f"ORDER BY v.id DESC LIMIT :limit",
            params,
        )
        items = [(row_to_notification(row), bool(row[8])) for row in rows[:limit]]
        next_before = items[-1][0].id if len(rows) > limit else None
        return HistoryPage(items, next_before)

    async def is_visible(self, user: str, id: int) -> bool:
        rows = await self._read(
            "SELECT 1 FROM notifications WHERE id = ? AND (user = ? OR user IS NULL)", (id, user))
        return bool(rows)
