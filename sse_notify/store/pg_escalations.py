"""The PostgreSQL store's pending escalations (:class:`EscalationStore`) and the cluster's
webhook secret, a mixin of :class:`~sse_notify.store.postgres.PostgresStore`. The rows
are inserted by the writer's publish statement group (``pg_batch``), in the
notifications' own transaction.

**Once for the whole cluster.** A claim is one ``UPDATE ... FROM (SELECT ... FOR UPDATE
SKIP LOCKED)``: nodes polling together each take different due rows, and a taken row's
``next_at`` moves a lease ahead, so no other node sees it as due until the lease ends (the
node sends, then deletes it or sets its retry time well within the lease). A node that
dies mid-send leaves its rows to be claimed again when their lease ends: at-least-once.

**The webhook secret** lives in ``webhook_secret`` (one row): the first node to start
makes it with ``INSERT ... ON CONFLICT DO NOTHING``, every node reads the winner, and
``sse-notify webhook-secret --store`` only reads it.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ..config import new_webhook_secret
from ..models import Notification
from . import DueEscalation

__all__ = ["PostgresEscalations", "ESCALATIONS_V3", "insert_escalations", "load_webhook_secret"]

ESCALATIONS_V3 = """
CREATE TABLE escalations (
    id       bigint NOT NULL,
    user_id  text NOT NULL,
    unless   text NOT NULL,             -- read | delivered
    due_at   bigint NOT NULL,           -- epoch ms
    next_at  bigint NOT NULL,           -- when it may be claimed (due, retry, or lease end)
    attempts integer NOT NULL DEFAULT 0,
    PRIMARY KEY (id, user_id)
);
CREATE INDEX escalations_next_at ON escalations (next_at);
CREATE TABLE webhook_secret (
    one    boolean PRIMARY KEY DEFAULT true CHECK (one),
    secret text NOT NULL
);
"""

_INSERT = """
INSERT INTO escalations (id, user_id, unless, due_at, next_at)
SELECT i, u, k, d, d FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[]) AS e(i, u, k, d)
"""
_CLAIM = """
UPDATE escalations e SET next_at = $1 + $2, attempts = e.attempts + 1
FROM (SELECT id, user_id FROM escalations WHERE next_at <= $1 ORDER BY next_at LIMIT $3
      FOR UPDATE SKIP LOCKED) due
WHERE e.id = due.id AND e.user_id = due.user_id
RETURNING e.id, e.user_id, e.unless, e.due_at, e.attempts
"""
_CONTEXT = """
SELECT n.id, n.user_id, n.topic, n.title, n.body, n.priority, n.data, n.created_at,
       EXISTS (SELECT 1 FROM reads r WHERE r.user_id = $2 AND r.id = n.id),
       EXISTS (SELECT 1 FROM receipts d WHERE d.user_id = $2 AND d.id = n.id)
FROM notifications n WHERE n.id = $1
"""


async def insert_escalations(conn: asyncpg.Connection, rows: list[tuple[int, str, str, int]]) -> None:
    """``(id, user, unless, due_at)`` rows, in the publishing transaction."""
    if rows:
        await conn.execute(_INSERT, *map(list, zip(*rows)))


async def load_webhook_secret(conn: asyncpg.Connection, *, create: bool) -> str | None:
    if create:
        await conn.execute("INSERT INTO webhook_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING",
                           new_webhook_secret())
    return await conn.fetchval("SELECT secret FROM webhook_secret")


class PostgresEscalations:
    _connection: Any
    _read: Any

    async def webhook_secret(self, create: bool) -> str | None:
        async with self._connection() as conn:
            return await load_webhook_secret(conn, create=create)

    async def claim_escalations(self, now: int, lease_ms: int, limit: int) -> list[DueEscalation]:
        from .pg_batch import row_to_notification

        claimed = []
        async with self._connection() as conn:
            for id, user, unless, due_at, attempts in await conn.fetch(_CLAIM, now, lease_ms, limit):
                row = await conn.fetchrow(_CONTEXT, id, user)
                notification: Notification | None = None if row is None else row_to_notification(row)
                claimed.append(DueEscalation(id, user, unless, due_at, attempts, notification,
                                             bool(row and row[8]), bool(row and row[9])))
        return claimed

    async def finish_escalation(self, id: int, user: str) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM escalations WHERE id = $1 AND user_id = $2", id, user)

    async def retry_escalation(self, id: int, user: str, next_at: int) -> None:
        async with self._connection() as conn:
            await conn.execute("UPDATE escalations SET next_at = $3 WHERE id = $1 AND user_id = $2",
                               id, user, next_at)

    async def pending_escalations(self) -> int:
        return (await self._read("SELECT count(*) FROM escalations"))[0][0]
