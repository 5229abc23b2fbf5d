"""What one transaction of the PostgreSQL store's writer does with the jobs of a batch, and
the SQL it shares with the reads. Queueing, connections and failures are ``postgres.py``'s.

The jobs come ordered by :data:`ORDER`, which is the lock order of every transaction --
the counter row, then idempotency keys, then reads, then the health row -- so nodes never
deadlock: publishes go first (they are concurrent with the marks and prunes queued beside
them, so either order is a valid one), then prunes, then marks, then probes.

All of a batch's publishes take three statements at most, whatever their number: one to
look their idempotency keys up, one to take ids from the counter and insert every row
(``unnest`` of one array per column), one to claim the new keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from ..models import Notification, now_ms
from . import BulkPublishResult, PublishResult
from .pg_escalations import insert_escalations
from .pg_schema import PRUNE_LOCK
from .writer_queue import Job

__all__ = ["COLUMNS", "IDEMPOTENCY_WINDOW_MS", "ORDER", "Job", "KeyTaken", "run_jobs", "visible",
           "row_to_notification"]

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000

COLUMNS = "id, user_id, topic, title, body, priority, data, created_at"

_INSERT = f"""
WITH c AS (
    UPDATE counter SET last = last + $1, last_created = greatest(last_created, $2)
    RETURNING last - $1 AS base, last_created),
i AS (
    INSERT INTO notifications ({COLUMNS})
    SELECT c.base + u.n, u.user_id, u.topic, u.title, u.body, u.priority, u.data, c.last_created
    FROM c, unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
         WITH ORDINALITY AS u(user_id, topic, title, body, priority, data, n))
SELECT base, last_created, pg_current_xact_id()::text FROM c
"""
_FIND_KEYS = """
SELECT publisher, key, first_id, count, sizes FROM idempotency
WHERE (publisher, key) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND created_at > $3
"""
# An expired key (not pruned yet) is taken over; a live one (another node's) is not.
_CLAIM_KEYS = """
INSERT INTO idempotency (publisher, key, first_id, count, sizes, created_at)
SELECT p, k, f, n, CASE WHEN s = '' THEN NULL ELSE string_to_array(s, ',')::int[] END, $6
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[], $5::text[]) AS u(p, k, f, n, s)
ON CONFLICT (publisher, key) DO UPDATE
    SET first_id = EXCLUDED.first_id, count = EXCLUDED.count, sizes = EXCLUDED.sizes,
        created_at = EXCLUDED.created_at
    WHERE idempotency.created_at <= $7
RETURNING publisher, key
"""


def visible(where: str = "") -> str:
    """The notifications user ``$1`` can see (own + broadcast), as two index range scans."""
    return (f"SELECT {COLUMNS} FROM notifications WHERE user_id = $1 {where} "
            f"UNION ALL SELECT {COLUMNS} FROM notifications WHERE user_id IS NULL {where}")


def _answer(ids: list[int], sizes: Sequence[int] | None, bulk: bool,
            created: bool) -> PublishResult | BulkPublishResult:
    """One job's answer: ``add()``'s ids, or ``add_many()``'s split per element (``sizes``).
    A key repeated in the other shape answers in the repeat's shape."""
    if not bulk:
        return PublishResult(ids, created)
    groups, start = [], 0
    for size in sizes if sizes is not None else [len(ids)]:
        groups.append(ids[start:start + size])
        start += size
    return BulkPublishResult(groups, created)


def row_to_notification(row: Sequence[Any]) -> Notification:
    data = row[6]
    return Notification(row[0], row[1], row[2], row[3], row[4], row[5],
                        None if data is None else orjson.loads(data), row[7])


ORDER = {"add": 0, "prune": 1, "mark": 2, "mark_all": 2, "probe": 3}  # the lock order


class KeyTaken(Exception):
    """Another node committed one of this batch's idempotency keys first: roll back (the
    ids go back with the rest) and run the batch again, which then finds the winner's ids."""


async def run_jobs(conn: asyncpg.Connection, jobs: list[Job],
                   committed: list[Notification]) -> tuple[str, list[Any]]:
    """Run ``jobs`` (ordered by :data:`ORDER`) in the transaction open on ``conn``; the
    notifications inserted go to ``committed``, in id order. Returns the transaction's id
    (empty if nothing was inserted) and one result per job."""
    xid = ""
    results: list[Any] = []
    adds = [args for kind, args, _ in jobs if kind == "add"]
    if adds:
        xid, results = await _adds(conn, adds, committed)
    for kind, args, _ in jobs[len(adds):]:
        if kind == "prune":
            results.append(await _prune(conn, *args))
        elif kind == "mark":
            results.append(sorted(r[0] for r in await conn.fetch(
                "INSERT INTO reads (user_id, id, read_at) SELECT $1, id, $3 FROM notifications "
                "WHERE id = ANY($2::bigint[]) AND (user_id = $1 OR user_id IS NULL) "
                "ON CONFLICT DO NOTHING RETURNING id", *args, now_ms())))
        elif kind == "mark_all":
            results.append(sorted(r[0] for r in await conn.fetch(
                f"INSERT INTO reads (user_id, id, read_at) SELECT $1, id, $2 FROM ({visible()}) v "
                "ON CONFLICT DO NOTHING RETURNING id", *args, now_ms())))
        else:  # probe
            results.append(await conn.execute("UPDATE health SET probed_at = $1", now_ms()))
    return xid, results


async def _adds(conn: asyncpg.Connection, adds: list[tuple[Any, ...]],
                committed: list[Notification]) -> tuple[str, list[PublishResult | BulkPublishResult]]:
    """All of a batch's publishes: one statement to look their keys up, one to insert
    them, one to claim the new keys. Returns the transaction id and one result each."""
    now = now_ms()
    cutoff = now - IDEMPOTENCY_WINDOW_MS
    keys = list(dict.fromkeys((publisher, key) for _, publisher, key, _ in adds if key is not None))
    found: dict[tuple[str, str], tuple[list[int], list[int] | None]] = {}
    if keys:
        rows = await conn.fetch(_FIND_KEYS, [p for p, _ in keys], [k for _, k in keys], cutoff)
        found = {(r[0], r[1]): (list(range(r[2], r[2] + r[3])), r[4]) for r in rows}
    new: list[int] = []  # indexes into adds of what is stored now
    first_of_key: dict[tuple[str, str], int] = {}
    for index, (_, publisher, key, _) in enumerate(adds):
        if key is not None:
            if (publisher, key) in found or (publisher, key) in first_of_key:
                continue
            first_of_key[publisher, key] = index
        new.append(index)
    drafts = [d for index in new for d in adds[index][0]]
    xid, base, created_at = "", 0, now
    if drafts:
        columns = ([d.user for d in drafts], [d.topic for d in drafts], [d.title for d in drafts],
                   [d.body for d in drafts], [d.priority for d in drafts],
                   [None if d.data is None else orjson.dumps(d.data).decode() for d in drafts])
        base, created_at, xid = await conn.fetchrow(_INSERT, len(drafts), now, *columns)
    ids_of: dict[int, list[int]] = {}
    escalations: list[tuple[int, str, str, int]] = []
    next_id = base + 1
    for index in new:
        batch = [Notification(next_id + i, d.user, d.topic, d.title, d.body, d.priority, d.data,
                              created_at) for i, d in enumerate(adds[index][0])]
        escalations += [(n.id, n.user, d.escalate.unless, created_at + d.escalate.after * 1000)
                        for n, d in zip(batch, adds[index][0]) if d.escalate is not None and n.user is not None]
        next_id += len(batch)
        committed.extend(batch)
        ids_of[index] = [n.id for n in batch]
    await insert_escalations(conn, escalations)  # in this transaction: a 201 implies it is scheduled
    if first_of_key:
        claims = [(p, k, ids_of[i][0] if ids_of[i] else next_id, len(ids_of[i]),
                   "" if adds[i][3] is None else ",".join(map(str, adds[i][3])))
                  for (p, k), i in first_of_key.items()]
        claimed = await conn.fetch(_CLAIM_KEYS, *map(list, zip(*claims)), created_at, cutoff)
        if len(claimed) < len(claims):
            raise KeyTaken
    results: list[PublishResult | BulkPublishResult] = []
    for index, (_, publisher, key, sizes) in enumerate(adds):
        bulk = sizes is not None
        if index in ids_of:
            results.append(_answer(ids_of[index], sizes, bulk, created=True))
        elif (publisher, key) in found:
            results.append(_answer(*found[publisher, key], bulk, created=False))
        else:  # a repeat of a key first used earlier in this batch
            first = first_of_key[publisher, key]
            results.append(_answer(ids_of[first], adds[first][3], bulk, created=False))
    return xid, results


async def _prune(conn: asyncpg.Connection, older_than_ms: int, limit: int) -> int:
    if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
        return 0  # another node is pruning
    # Ids follow creation time, so the oldest ``limit`` rows are the lowest ids.
    through = await conn.fetchval(
        "SELECT max(id) FROM (SELECT id FROM notifications WHERE created_at < $1 "
        "ORDER BY id LIMIT $2) s", older_than_ms, limit)
    removed = 0
    if through is not None:
        await conn.execute("UPDATE counter SET pruned_through = greatest(pruned_through, $1)", through)
        removed = int((await conn.execute("DELETE FROM notifications WHERE id <= $1", through)).split()[-1])
        await conn.execute("DELETE FROM reads WHERE id <= $1", through)
        await conn.execute("DELETE FROM receipts WHERE id <= $1", through)
        await conn.execute("DELETE FROM escalations WHERE id <= $1", through)
    await conn.execute("DELETE FROM idempotency WHERE created_at <= $1", now_ms() - IDEMPOTENCY_WINDOW_MS)
    return removed
