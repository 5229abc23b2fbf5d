"""The PostgreSQL store (asyncpg): the Store protocol for several nodes sharing one database.

Deliberate decisions:

* **Ids come from one counter row, not a sequence.** A sequence hands out numbers at
  insert time, so a transaction holding id 10 can commit after the one holding 11, and a
  client that saw 11 never replays 10. Here each batch's ids are taken by
  ``UPDATE counter SET last = last + n`` in the same statement as its insert: the row lock
  makes the next batch (on any node) wait until this one committed or rolled back, so ids
  are committed in increasing order, a rollback returns them (no holes), and the
  counter's committed value is the newest id of all nodes (``max_id``), every lower one
  already visible. The cost: the row is one lock for the whole cluster, held from a
  batch's insert to its commit (one fsync), so throughput comes from batching.
* **Group commit, as on SQLite.** One writer task per store takes everything queued
  (publishes, marks, prunes, probes) and runs it in one transaction: all the publishes in
  one ``INSERT ... SELECT FROM unnest(...)`` statement whatever their number, then the other
  writes. ``add()`` returns after COMMIT (``synchronous_commit`` on), and ``on_commit`` has
  seen the batch, in id order, by then. A job PostgreSQL refuses fails alone: the batch
  is retried job by job (PostgreSQL being unreachable fails them all at once).
* **One lock order for every transaction** -- counter, then idempotency keys, then reads,
  then the health row -- so nodes never deadlock: publishes go first in a batch (they are
  concurrent with the marks and prunes queued beside them, so either order is valid),
  then prunes, then marks, then probes.
* **Idempotency keys across nodes**: a batch first looks its keys up, then after its
  insert claims the new ones with ``INSERT ... ON CONFLICT`` (which waits for another
  node's transaction holding the same key). If a key was taken meanwhile, the whole
  transaction is rolled back -- ids included -- and run again, now finding the winner's
  ids: a key is never stored twice and its repeat returns the first answer.
* **Pruning runs on one node at a time** (``pg_try_advisory_xact_lock``); a node that
  does not get the lock removes nothing and returns 0. ``pruned_through`` and the newest
  ``created_at`` live in the counter row, so all nodes agree on them.
* **Failures are answered within seconds**: connections come from a pool that reconnects,
  with timeouts on acquiring (3 s) and on every statement (5 s); PostgreSQL down,
  restarting, or a connection killed gives :class:`StoreUnavailable` (503), and the next
  call tries again.
* **A COMMIT whose answer is lost is ambiguous**: it may have committed. The batch's
  transaction id is known, so the writer asks PostgreSQL (``pg_xact_status``) on a new
  connection for up to a few seconds: committed -> the batch is answered as committed;
  aborted or still unknown -> :class:`StoreUnavailable`. In the unknown case the
  notifications may still be in the log: followers deliver them, and a publisher that
  retries with an ``Idempotency-Key`` gets the first answer, not a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg
import orjson

from ..config import Keyring
from ..models import Notification, NotificationDraft, now_ms
from . import HistoryPage, PublishResult, StoreConfigError, StoreUnavailable
from .pg_schema import (PRUNE_LOCK, UNAVAILABLE_ERRORS, connect_pool, is_unavailable, load_keyring,
                        migrate, rotate_keyring, safe_url, unavailable)

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
ACQUIRE_TIMEOUT = 3.0  # seconds to get a connection (opening one included)
PING_TIMEOUT = 2.0
RESOLVE_TIMEOUT = 3.0  # seconds spent finding out whether a lost COMMIT committed

_COLUMNS = "id, user_id, topic, title, body, priority, data, created_at"

_INSERT = f"""
WITH c AS (
    UPDATE counter SET last = last + $1, last_created = greatest(last_created, $2)
    RETURNING last - $1 AS base, last_created),
i AS (
    INSERT INTO notifications ({_COLUMNS})
    SELECT c.base + u.n, u.user_id, u.topic, u.title, u.body, u.priority, u.data, c.last_created
    FROM c, unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
         WITH ORDINALITY AS u(user_id, topic, title, body, priority, data, n))
SELECT base, last_created, pg_current_xact_id()::text FROM c
"""
_FIND_KEYS = """
SELECT publisher, key, first_id, count FROM idempotency
WHERE (publisher, key) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND created_at > $3
"""
# An expired key (not pruned yet) is taken over; a live one (another node's) is not.
_CLAIM_KEYS = """
INSERT INTO idempotency (publisher, key, first_id, count, created_at)
SELECT p, k, f, n, $5 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) AS u(p, k, f, n)
ON CONFLICT (publisher, key) DO UPDATE
    SET first_id = EXCLUDED.first_id, count = EXCLUDED.count, created_at = EXCLUDED.created_at
    WHERE idempotency.created_at <= $6
RETURNING publisher, key
"""


def _visible(where: str = "") -> str:
    """The notifications user ``$1`` can see (own + broadcast), as two index range scans."""
    return (f"SELECT {_COLUMNS} FROM notifications WHERE user_id = $1 {where} "
            f"UNION ALL SELECT {_COLUMNS} FROM notifications WHERE user_id IS NULL {where}")


def _row_to_notification(row: Sequence[Any]) -> Notification:
    data = row[6]
    return Notification(row[0], row[1], row[2], row[3], row[4], row[5],
                        None if data is None else orjson.loads(data), row[7])


_Job = tuple[str, tuple[Any, ...], "asyncio.Future[Any]"]
_ORDER = {"add": 0, "prune": 1, "mark": 2, "mark_all": 2, "probe": 3}  # the lock order


def _fail(jobs: list[_Job], error: Exception) -> None:
    for *_, future in jobs:
        if not future.done():
            future.set_exception(error)


class _KeyTaken(Exception):
    """Another node committed one of this batch's idempotency keys first."""


class _LostCommit(Exception):
    """The connection failed while COMMIT was under way: it may or may not have committed."""

    def __init__(self, cause: BaseException, xid: str, committed: list[Notification], results: list[Any]):
        super().__init__(str(cause))
        self.xid, self.committed, self.results = xid, committed, results


class PostgresStore:
    def __init__(self, url: str):
        self.url = url
        self.on_commit: Callable[[list[Notification]], None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._jobs: list[_Job] = []
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        return cls(url)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and migrate; :class:`StoreConfigError` when that cannot be done."""
        self._pool = await connect_pool(self.url)
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await migrate(conn)
        except BaseException as exc:
            await self._close_pool()
            if isinstance(exc, (asyncpg.PostgresError, *UNAVAILABLE_ERRORS)):
                raise StoreConfigError(f"cannot set up the PostgreSQL store at {safe_url(self.url)}: "
                                       f"{str(exc).splitlines()[0]}") from None
            raise
        self._closing = False
        self._writer_task = asyncio.create_task(self._run_writer(), name="postgres-writer")

    async def close(self) -> None:
        self._closing = True
        if self._writer_task is not None:
            self._wake.set()
            await asyncio.wait([self._writer_task])  # finishes the batch in progress, then stops
            self._writer_task = None
        _fail(self._jobs, StoreUnavailable("the store is closed"))
        self._jobs = []
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), ACQUIRE_TIMEOUT)
            except (TimeoutError, *UNAVAILABLE_ERRORS):
                pool.terminate()

    async def ping(self) -> None:
        """A small write through the writer's queue, answered within ``PING_TIMEOUT``."""
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._submit("probe")
        except TimeoutError:
            raise StoreUnavailable(f"PostgreSQL did not answer within {PING_TIMEOUT:g} s") from None

    # -- the cluster's secret (read by the service at start, and by the CLI) ---------------

    async def keyring(self, create: bool) -> Keyring | None:
        async with self._connection() as conn:
            return await load_keyring(conn, create=create)

    async def rotate_secret(self, grace: int) -> Keyring | None:
        async with self._connection() as conn:
            return await rotate_keyring(conn, grace)

    # -- writes: queued to the single writer ----------------------------------------------

    def _submit(self, kind: str, *args: Any) -> asyncio.Future[Any]:
        if self._closing or self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.append((kind, args, future))
        self._wake.set()
        return future

    async def add(self, drafts: Sequence[NotificationDraft], publisher: str,
                  idempotency_key: str | None = None) -> PublishResult:
        return await self._submit("add", list(drafts), publisher, idempotency_key)

    async def mark_read(self, user: str, ids: Sequence[int]) -> list[int]:
        return await self._submit("mark", user, list(ids))

    async def mark_all_read(self, user: str) -> list[int]:
        return await self._submit("mark_all", user)

    async def prune(self, older_than_ms: int, limit: int) -> int:
        return await self._submit("prune", older_than_ms, limit)

    async def _run_writer(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._jobs = self._jobs, []
            if jobs:
                await self._commit_batch(sorted(jobs, key=lambda job: _ORDER[job[0]]))

    async def _commit_batch(self, jobs: list[_Job]) -> None:
        try:
            committed, results = await self._transaction(jobs)
        except asyncio.CancelledError:
            _fail(jobs, StoreUnavailable("the store is closing"))
            raise
        except _LostCommit as lost:
            log.error("PostgreSQL connection lost during COMMIT: %s", lost)
            if await self._committed(lost.xid) is not True:
                _fail(jobs, StoreUnavailable(f"PostgreSQL: the commit's outcome is unknown ({lost})"))
                return
            committed, results = lost.committed, lost.results
        except Exception as exc:
            if len(jobs) > 1 and not is_unavailable(exc):
                # One bad job must not fail the others queued with it: rare, so only now
                # pay for a transaction per job, and only the culprit fails.
                for job in jobs:
                    await self._commit_batch([job])
                return
            error = unavailable(exc)
            log.error("write failed: %s", error)
            _fail(jobs, error)
            return
        if committed and self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception:
                log.exception("commit listener failed")
        for (_, _, future), result in zip(jobs, results):
            if not future.done():
                future.set_result(result)

    async def _transaction(self, jobs: list[_Job]) -> tuple[list[Notification], list[Any]]:
        outcome = None
        try:
            async with self._acquire() as conn:
                for _ in range(3):
                    try:
                        outcome = await self._attempt(conn, jobs)
                        break
                    except _KeyTaken:  # run again: the lookup now finds the winner's ids
                        continue
        except Exception as exc:
            if outcome is None:
                raise
            log.warning("connection lost after a commit: %s", exc)  # committed all the same
        if outcome is None:
            raise RuntimeError("idempotency keys kept being taken by other nodes")
        return outcome

    async def _attempt(self, conn: asyncpg.Connection,
                       jobs: list[_Job]) -> tuple[list[Notification], list[Any]]:
        committed: list[Notification] = []
        results: list[Any] = []
        xid = ""
        transaction = conn.transaction()
        await transaction.start()
        try:
            adds = [args for kind, args, _ in jobs if kind == "add"]
            if adds:
                xid, results = await self._do_adds(conn, adds, committed)
            for kind, args, _ in jobs[len(adds):]:
                if kind == "prune":
                    results.append(await self._do_prune(conn, *args))
                elif kind == "mark":
                    results.append(sorted(r[0] for r in await conn.fetch(
                        "INSERT INTO reads (user_id, id) SELECT $1, id FROM notifications "
                        "WHERE id = ANY($2::bigint[]) AND (user_id = $1 OR user_id IS NULL) "
                        "ON CONFLICT DO NOTHING RETURNING id", *args)))
                elif kind == "mark_all":
                    results.append(sorted(r[0] for r in await conn.fetch(
                        f"INSERT INTO reads (user_id, id) SELECT $1, id FROM ({_visible()}) v "
                        "ON CONFLICT DO NOTHING RETURNING id", *args)))
                else:  # probe
                    results.append(await conn.execute("UPDATE health SET probed_at = $1", now_ms()))
        except BaseException as exc:
            if not is_unavailable(exc):  # else the connection is terminated, and the transaction with it
                with contextlib.suppress(Exception):
                    await transaction.rollback()
            raise
        try:
            await transaction.commit()
        except Exception as exc:
            if not xid or not is_unavailable(exc):
                raise
            raise _LostCommit(exc, xid, committed, results) from exc
        return committed, results

    async def _do_adds(self, conn: asyncpg.Connection, adds: list[tuple[Any, ...]],
                       committed: list[Notification]) -> tuple[str, list[PublishResult]]:
        """All of a batch's publishes: one statement to look their keys up, one to insert
        them, one to claim the new keys. Returns the transaction id and one result each."""
        now = now_ms()
        cutoff = now - IDEMPOTENCY_WINDOW_MS
        keys = list(dict.fromkeys((publisher, key) for _, publisher, key in adds if key is not None))
        found: dict[tuple[str, str], list[int]] = {}
        if keys:
            rows = await conn.fetch(_FIND_KEYS, [p for p, _ in keys], [k for _, k in keys], cutoff)
            found = {(r[0], r[1]): list(range(r[2], r[2] + r[3])) for r in rows}
        new: list[int] = []  # indexes into adds of what is stored now
        first_of_key: dict[tuple[str, str], int] = {}
        for index, (_, publisher, key) in enumerate(adds):
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
        next_id = base + 1
        for index in new:
            batch = [Notification(next_id + i, d.user, d.topic, d.title, d.body, d.priority, d.data,
                                  created_at) for i, d in enumerate(adds[index][0])]
            next_id += len(batch)
            committed.extend(batch)
            ids_of[index] = [n.id for n in batch]
        if first_of_key:
            claims = [(p, k, ids_of[i][0] if ids_of[i] else next_id, len(ids_of[i]))
                      for (p, k), i in first_of_key.items()]
            claimed = await conn.fetch(_CLAIM_KEYS, *map(list, zip(*claims)), created_at, cutoff)
            if len(claimed) < len(claims):
                raise _KeyTaken
        results = []
        for index, (_, publisher, key) in enumerate(adds):
            if index in ids_of:
                results.append(PublishResult(ids_of[index], created=True))
            elif (publisher, key) in found:
                results.append(PublishResult(found[publisher, key], created=False))
            else:  # a repeat of a key first used earlier in this batch
                results.append(PublishResult(ids_of[first_of_key[publisher, key]], created=False))
        return xid, results

    @staticmethod
    async def _do_prune(conn: asyncpg.Connection, older_than_ms: int, limit: int) -> int:
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
        await conn.execute("DELETE FROM idempotency WHERE created_at <= $1", now_ms() - IDEMPOTENCY_WINDOW_MS)
        return removed

    async def _committed(self, xid: str) -> bool | None:
        """Whether transaction ``xid`` committed; None when PostgreSQL cannot tell us soon."""
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                while True:
                    try:
                        async with self._connection() as conn:
                            status = await conn.fetchval("SELECT pg_xact_status($1::text::xid8)", xid)
                    except StoreUnavailable:
                        status = None
                    if status in ("committed", "aborted"):
                        return status == "committed"
                    await asyncio.sleep(0.1)  # in progress, or no connection yet
        except TimeoutError:
            return None

    # -- reads: any pooled connection -----------------------------------------------------

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("the store is not open")
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            try:
                yield conn
            except Exception as exc:
                if is_unavailable(exc):  # releasing it would wait on a server that does not answer
                    conn.terminate()
                raise

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; whatever fails in it is :class:`StoreUnavailable`."""
        try:
            async with self._acquire() as conn:
                yield conn
        except (asyncpg.PostgresError, *UNAVAILABLE_ERRORS) as exc:
            raise unavailable(exc) from exc

    async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return await conn.fetch(sql, *args)

    async def state(self, user: str) -> tuple[int, int, int]:
        [row] = await self._read(
            "SELECT coalesce(max(v.id), 0), count(*) FILTER (WHERE NOT EXISTS ("
            "  SELECT 1 FROM reads r WHERE r.user_id = $1 AND r.id = v.id)), "
            f"(SELECT pruned_through FROM counter) FROM ({_visible()}) v", user)
        return row[0], row[1], row[2]

    async def max_id(self) -> int:
        [row] = await self._read("SELECT last FROM counter")
        return row[0]

    async def replay(self, user: str, after_id: int, topics: frozenset[str] | None,
                     limit: int) -> list[Notification]:
        if topics is None:
            rows = await self._read(f"{_visible('AND id > $2')} ORDER BY id LIMIT $3", user, after_id, limit)
        else:
            rows = await self._read(f"{_visible('AND id > $2 AND topic = ANY($4::text[])')} "
                                    "ORDER BY id LIMIT $3", user, after_id, limit, sorted(topics))
        return [_row_to_notification(row) for row in rows]

    async def since(self, after_id: int, limit: int) -> list[Notification]:
        rows = await self._read(f"SELECT {_COLUMNS} FROM notifications WHERE id > $1 ORDER BY id LIMIT $2",
                                after_id, limit)
        return [_row_to_notification(row) for row in rows]

    async def history(self, user: str, limit: int, before: int | None,
                      unread: bool | None) -> HistoryPage:
        filter_ = {None: "", True: "WHERE r.id IS NULL", False: "WHERE r.id IS NOT NULL"}[unread]
        rows = await self._read(
            f"SELECT v.*, r.id IS NOT NULL FROM ({_visible('AND id < $3')}) v "
            f"LEFT JOIN reads r ON r.user_id = $1 AND r.id = v.id {filter_} "
            "ORDER BY v.id DESC LIMIT $2",
            user, limit + 1, before if before is not None else 2**63 - 1)
        items = [(_row_to_notification(row), bool(row[8])) for row in rows[:limit]]
        next_before = items[-1][0].id if len(rows) > limit else None
        return HistoryPage(items, next_before)

    async def is_visible(self, user: str, id: int) -> bool:
        rows = await self._read(
            "SELECT 1 FROM notifications WHERE id = $1 AND (user_id = $2 OR user_id IS NULL)", id, user)
        return bool(rows)
