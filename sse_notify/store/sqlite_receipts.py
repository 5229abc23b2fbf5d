"""The SQLite store's delivery receipts and notification status (:class:`ReceiptStore`),
kept beside ``sqlite.py`` as a mixin of :class:`~sse_notify.store.sqlite.SQLiteStore`.

Receipts are written through the store's single writer (a ``run`` job, so in a batch with
whatever else is queued), with multi-row statements (``sqlite_rows``: a few per flush);
``INSERT OR IGNORE`` keeps the first delivery time. A row is inserted only while its
notification exists and is that user's, so a receipt noted just before retention removed
its notification is not left behind (retention deletes ``receipts`` by id range with the
notifications).

A receipt is written on every targeted delivery, so its row is kept cheap: since v5 the
table's key is ``(id, user)``, which serves every query of it (a status or an escalation
asks for one pair, retention deletes an id range), and there is no second index to write
(v3's ``(user, id)`` key needed ``receipts_id`` beside it for retention).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import aiosqlite

from . import Status
from .sqlite_rows import insert_rows

__all__ = ["SQLiteReceipts", "RECEIPTS_V3", "RECEIPTS_V5"]

# v3: receipts, and when each read mark was made. Marks made before this migration get
# the migration's time: they happened at the latest then.
RECEIPTS_V3 = """
CREATE TABLE receipts (
    user         TEXT NOT NULL,
    id           INTEGER NOT NULL,
    delivered_at INTEGER NOT NULL,   -- epoch ms
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE INDEX receipts_id ON receipts (id);
ALTER TABLE reads ADD COLUMN read_at INTEGER;
UPDATE reads SET read_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
"""

# v5: keyed by (id, user), no second index (see the module's notes).
RECEIPTS_V5 = """
CREATE TABLE receipts_v5 (
    id           INTEGER NOT NULL,
    user         TEXT NOT NULL,
    delivered_at INTEGER NOT NULL,   -- epoch ms
    PRIMARY KEY (id, user)
) WITHOUT ROWID;
INSERT INTO receipts_v5 (id, user, delivered_at) SELECT id, user, delivered_at FROM receipts;
DROP TABLE receipts;
ALTER TABLE receipts_v5 RENAME TO receipts;
"""

_RECORD_HEAD = "INSERT OR IGNORE INTO receipts (id, user, delivered_at) SELECT * FROM ("
_RECORD_ROW = "(?,?,?)"
_RECORD_TAIL = (") AS r WHERE EXISTS (SELECT 1 FROM notifications n "
                "WHERE n.id = r.column1 AND n.user = r.column2)")
_STATUS = """
SELECT n.user,
       (SELECT delivered_at FROM receipts r WHERE r.user = n.user AND r.id = n.id),
       (SELECT read_at FROM reads d WHERE d.user = n.user AND d.id = n.id),
       CASE WHEN n.user IS NULL THEN (SELECT count(*) FROM reads d WHERE d.id = n.id) ELSE 0 END
FROM notifications n WHERE n.id = ?
"""


async def _record(params: list[Any], db: aiosqlite.Connection) -> None:
    await insert_rows(db, _RECORD_HEAD, _RECORD_ROW, params, _RECORD_TAIL)


class SQLiteReceipts:
    """Mixed into the SQLite store: uses its writer queue (``_submit``) and reader (``_read``)."""

    _submit: Any
    _read: Any

    async def record_deliveries(self, rows: Sequence[tuple[str, int, int]]) -> None:
        if rows:
            params: list[Any] = []
            for user, id, at in rows:
                params += (id, user, at)
            await self._submit("run", partial(_record, params))

    async def status(self, id: int) -> Status | None:
        rows = await self._read(_STATUS, (id,))
        if not rows:
            return None
        user, delivered_at, read_at, read_count = rows[0]
        return Status(id, user, delivered_at, read_at, read_count)
