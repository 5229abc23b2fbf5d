"""The presence tables in PostgreSQL (:class:`~sse_notify.store.presence.PresenceStore`).

Deliberate decisions:

* **The store's connection pool**, not its writer queue: a heartbeat is a short
  transaction of its own that never waits behind a batch of publishes (nor holds one up:
  it touches no table a publish does).
* **The database server's clock** (``now()``) for heartbeats, freshness and ``last_seen``,
  so nodes whose clocks disagree still agree on who is alive.
* **Expiry deletes the silent node's row first** (one statement: node row, then its
  presence rows, folded into ``last_seen``). A node that beats at the same moment either
  refreshed its row first (the delete re-checks it and leaves it) or finds it gone and
  sends all its counts again; its counts are never dropped while its row stays. One node
  expires at a time (``pg_try_advisory_xact_lock``); the others skip.
* Rows are written in user order in every statement, so concurrent beats of several nodes
  take the rows of ``presence_last_seen`` in one order and do not deadlock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .pg_schema import PRESENCE_EXPIRY_LOCK
from .presence import UserPresence, combine

if TYPE_CHECKING:
    from .postgres import PostgresStore

__all__ = ["PostgresPresence"]

_NOW = "(extract(epoch FROM now()) * 1000)::bigint"
_KEEP_NEWEST = "ON CONFLICT (user_id) DO UPDATE SET at = greatest(presence_last_seen.at, excluded.at)"


class PostgresPresence:
    def __init__(self, store: PostgresStore):
        self.store = store

    async def open(self) -> None:
        """Nothing to open: the store's pool is used."""

    async def close(self) -> None:
        """Nothing to close: the store closes its pool."""

    async def beat(self, node: str, changes: Mapping[str, int]) -> bool:
        counted = sorted((user, streams) for user, streams in changes.items() if streams > 0)
        gone = sorted(user for user, streams in changes.items() if streams <= 0)
        async with self.store.connection() as conn, conn.transaction():
            known = await conn.fetchval(
                f"UPDATE presence_nodes SET beat_at = {_NOW} WHERE node = $1 RETURNING true", node)
            if not known:
                await conn.execute(f"INSERT INTO presence_nodes (node, beat_at) VALUES ($1, {_NOW}) "
                                   "ON CONFLICT (node) DO UPDATE SET beat_at = excluded.beat_at", node)
            if counted:
                await conn.execute(
                    "INSERT INTO presence (user_id, node, streams) "
                    "SELECT u, $1, s FROM unnest($2::text[], $3::int[]) AS t(u, s) "
                    "ON CONFLICT (user_id, node) DO UPDATE SET streams = excluded.streams",
                    node, [user for user, _ in counted], [streams for _, streams in counted])
            if gone:
                await conn.execute("DELETE FROM presence WHERE node = $1 AND user_id = ANY($2::text[])",
                                   node, gone)
                await conn.execute(f"INSERT INTO presence_last_seen (user_id, at) "
                                   f"SELECT u, {_NOW} FROM unnest($1::text[]) AS u {_KEEP_NEWEST}", gone)
        return bool(known)

    async def leave(self, node: str) -> None:
        async with self.store.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM presence_nodes WHERE node = $1", node)
            await conn.execute(
                f"WITH gone AS (DELETE FROM presence WHERE node = $1 RETURNING user_id) "
                f"INSERT INTO presence_last_seen (user_id, at) SELECT user_id, {_NOW} FROM gone "
                f"ORDER BY user_id {_KEEP_NEWEST}", node)

    async def expire(self, ttl_ms: int) -> None:
        async with self.store.connection() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRESENCE_EXPIRY_LOCK):
                return  # another node is at it
            await conn.execute(
                f"WITH dead AS (DELETE FROM presence_nodes WHERE beat_at < {_NOW} - $1 "
                f"              RETURNING node, beat_at), "
                f"     gone AS (DELETE FROM presence p USING dead WHERE p.node = dead.node "
                f"              RETURNING p.user_id, dead.beat_at) "
                f"INSERT INTO presence_last_seen (user_id, at) SELECT user_id, max(beat_at) FROM gone "
                f"GROUP BY user_id ORDER BY user_id {_KEEP_NEWEST}", ttl_ms)

    async def lookup(self, users: Sequence[str], ttl_ms: int) -> dict[str, UserPresence]:
        names = list(users)
        async with self.store.connection() as conn:
            counted = await conn.fetch(
                f"SELECT p.user_id, coalesce(sum(p.streams) FILTER (WHERE n.beat_at >= {_NOW} - $2), 0)::int, "
                f"max(n.beat_at) FILTER (WHERE n.beat_at < {_NOW} - $2) "
                "FROM presence p JOIN presence_nodes n ON n.node = p.node "
                "WHERE p.user_id = ANY($1::text[]) GROUP BY p.user_id", names, ttl_ms)
            seen = await conn.fetch("SELECT user_id, at FROM presence_last_seen WHERE user_id = ANY($1::text[])",
                                    names)
        return combine(users, counted, seen)
