"""The PostgreSQL store's delivery receipts and notification status (:class:`ReceiptStore`),
as a mixin of :class:`~sse_notify.store.postgres.PostgresStore`.

A flush is one statement on a pooled connection, outside the writer's batches: receipts
need no ordering with publishes, and keeping them out of the writer's transactions keeps
them out of its lock order. ``ON CONFLICT DO NOTHING`` keeps the first delivery time,
whichever node wrote it; rows go in (user, id) order, so two nodes flushing overlapping
pairs wait for each other instead of deadlocking. Only pairs that name a notification of
that user are inserted (a join), so nothing outlives retention, which deletes receipts by
id range with their notifications.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import Status

__all__ = ["PostgresReceipts", "RECEIPTS_V2"]

# v2: receipts, and when each read mark was made (marks made before: the migration's time,
# when they had happened at the latest).
RECEIPTS_V2 = """
CREATE TABLE receipts (
    user_id      text NOT NULL,
    id           bigint NOT NULL,
    delivered_at bigint NOT NULL,       -- epoch ms
    PRIMARY KEY (user_id, id)
);
CREATE INDEX receipts_id ON receipts (id);
ALTER TABLE reads ADD COLUMN read_at bigint;
UPDATE reads SET read_at = (extract(epoch FROM now()) * 1000)::bigint;
"""

_RECORD = """
INSERT INTO receipts (user_id, id, delivered_at)
SELECT u.user_id, u.id, u.at
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(user_id, id, at)
JOIN notifications n ON n.id = u.id AND n.user_id = u.user_id
ORDER BY u.user_id, u.id
ON CONFLICT DO NOTHING
"""
_STATUS = """
SELECT n.user_id,
       (SELECT delivered_at FROM receipts r WHERE r.user_id = n.user_id AND r.id = n.id),
       (SELECT read_at FROM reads d WHERE d.user_id = n.user_id AND d.id = n.id),
       CASE WHEN n.user_id IS NULL THEN (SELECT count(*) FROM reads d WHERE d.id = n.id) ELSE 0 END
FROM notifications n WHERE n.id = $1
"""


class PostgresReceipts:
    """Mixed into the PostgreSQL store: uses its pooled connections (``_connection``)."""

    _connection: Any
    _read: Any

    async def record_deliveries(self, rows: Sequence[tuple[str, int, int]]) -> None:
        if not rows:
            return
        rows = sorted(rows)
        async with self._connection() as conn:
            await conn.execute(_RECORD, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    async def status(self, id: int) -> Status | None:
        rows = await self._read(_STATUS, id)
        if not rows:
            return None
        user, delivered_at, read_at, read_count = rows[0]
        return Status(id, user, delivered_at, read_at, read_count)
