"""The SQLite store's pending escalations (:class:`EscalationStore`), a mixin of
:class:`~sse_notify.store.sqlite.SQLiteStore`. The rows themselves are inserted by the
store's publish path (``_Inserts``), in the notification's own transaction.

One process writes a SQLite file, through one writer: a claim (select the due rows, move
their ``next_at`` a lease ahead) is one writer job, so no two claims overlap.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import aiosqlite

from . import DueEscalation

__all__ = ["SQLiteEscalations", "ESCALATIONS_V4", "INSERT_ESCALATIONS"]

ESCALATIONS_V4 = """
CREATE TABLE escalations (
    id       INTEGER NOT NULL,
    user     TEXT NOT NULL,
    unless   TEXT NOT NULL,          -- read | delivered
    due_at   INTEGER NOT NULL,       -- epoch ms
    next_at  INTEGER NOT NULL,       -- when it may be claimed (due, retry, or lease end)
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
CREATE INDEX escalations_next_at ON escalations (next_at);
"""
INSERT_ESCALATIONS = "INSERT INTO escalations (id, user, unless, due_at, next_at) VALUES (?,?,?,?,?)"

_DUE = "SELECT id, user, unless, due_at, attempts FROM escalations WHERE next_at <= ? ORDER BY next_at LIMIT ?"
_CONTEXT = """
SELECT n.id, n.user, n.topic, n.title, n.body, n.priority, n.data, n.created_at,
       EXISTS (SELECT 1 FROM reads r WHERE r.user = ? AND r.id = n.id),
       EXISTS (SELECT 1 FROM receipts d WHERE d.user = ? AND d.id = n.id)
FROM notifications n WHERE n.id = ?
"""


async def _claim(now: int, lease_ms: int, limit: int, db: aiosqlite.Connection) -> list[DueEscalation]:
    from .sqlite_reads import row_to_notification  # the row shape is the store's (it imports this module)

    claimed = []
    for id, user, unless, due_at, attempts in await db.execute_fetchall(_DUE, (now, limit)):
        await db.execute("UPDATE escalations SET next_at = ?, attempts = attempts + 1 WHERE id = ? AND user = ?",
                         (now + lease_ms, id, user))
        rows = list(await db.execute_fetchall(_CONTEXT, (user, user, id)))
        notification = row_to_notification(rows[0]) if rows else None
        claimed.append(DueEscalation(id, user, unless, due_at, attempts + 1, notification,
                                     bool(rows and rows[0][8]), bool(rows and rows[0][9])))
    return claimed


async def _execute(sql: str, params: tuple[Any, ...], db: aiosqlite.Connection) -> None:
    await db.execute(sql, params)


class SQLiteEscalations:
    _submit: Any
    _read: Any

    async def claim_escalations(self, now: int, lease_ms: int, limit: int) -> list[DueEscalation]:
        return await self._submit("run", partial(_claim, now, lease_ms, limit))

    async def finish_escalation(self, id: int, user: str) -> None:
        await self._submit("run", partial(_execute, "DELETE FROM escalations WHERE id = ? AND user = ?", (id, user)))

    async def retry_escalation(self, id: int, user: str, next_at: int) -> None:
        await self._submit("run", partial(_execute, "UPDATE escalations SET next_at = ? WHERE id = ? AND user = ?",
                                          (next_at, id, user)))

    async def pending_escalations(self) -> int:
        return (await self._read("SELECT count(*) FROM escalations", ()))[0][0]
