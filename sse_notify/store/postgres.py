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
  (publishes, marks, prunes, probes) and runs it in one transaction on a connection it
  keeps (``pg_batch.py``: all the publishes in one insert statement whatever their
  number, and one lock order for every transaction, so nodes never deadlock). ``add()``
  returns after COMMIT (``synchronous_commit`` on), and ``on_commit`` has seen the batch,
  in id order, by then. A job PostgreSQL refuses fails alone: the batch is retried job by
  job (PostgreSQL being unreachable fails them all at once).
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
  notifications may still be in the log, and ``on_commit`` has not seen them: the
  followers (this node's included) deliver them when they catch up with the store, and a
  publisher that retries with an ``Idempotency-Key`` gets the first answer, not a second
  copy (without a key, a retry may store a second copy). A lost answer to a batch of only
  marks or prunes is answered 503 too: doing them again is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import asyncpg

from ..config import Keyring
from ..models import MAX_ID, Notification, NotificationDraft
from . import BulkPublishResult, HistoryPage, PublishResult, StoreConfigError, StoreUnavailable
from .coalesce import Coalescer
from .pg_escalations import PostgresEscalations
from .pg_receipts import PostgresReceipts
from .pg_batch import COLUMNS, ORDER, Job, KeyTaken, row_to_notification, run_jobs, visible
from .pg_schema import (UNAVAILABLE_ERRORS, connect_pool, is_unavailable, load_keyring, migrate,
                        rotate_keyring, safe_url, unavailable)
from .writer_queue import WriterQueue, fail_jobs

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)

ACQUIRE_TIMEOUT = 3.0  # seconds to get a connection (opening one included)
PING_TIMEOUT = 2.0
RESOLVE_TIMEOUT = 3.0  # seconds spent finding out whether a lost COMMIT committed


def _usable(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # the pool took it back when it closed
        return False


class _LostCommit(Exception):
    """The connection failed while COMMIT was under way: it may or may not have committed."""

    def __init__(self, cause: BaseException, xid: str, committed: list[Notification], results: list[Any]):
        super().__init__(str(cause))
        self.xid, self.committed, self.results = xid, committed, results


class PostgresStore(WriterQueue, PostgresReceipts, PostgresEscalations):
    def __init__(self, url: str):
        self.url = url
        self.on_commit: Callable[[list[Notification]], None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._init_queue()
        self._writer_conn: asyncpg.Connection | None = None
        self._states: Coalescer[tuple[int, int, int]] | None = None  # made on first use

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
        self._start_writer("postgres-writer")

    async def close(self) -> None:
        await self._stop_writer()
        await self._release_writer_connection(healthy=True)
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

    async def add(self, drafts: Sequence[NotificationDraft], publisher: str,
                  idempotency_key: str | None = None) -> PublishResult:
        return await self._submit("add", list(drafts), publisher, idempotency_key, None)

    async def add_many(self, requests: Sequence[Sequence[NotificationDraft]], publisher: str,
                       idempotency_key: str | None = None) -> BulkPublishResult:
        # One job: one contiguous run of ids in the batch's insert, whatever else it holds.
        return await self._submit("add", [d for r in requests for d in r], publisher, idempotency_key,
                                  [len(r) for r in requests])

    async def mark_read(self, user: str, ids: Sequence[int]) -> list[int]:
        return await self._submit("mark", user, list(ids))

    async def mark_all_read(self, user: str) -> list[int]:
        return await self._submit("mark_all", user)

    async def prune(self, older_than_ms: int, limit: int) -> int:
        return await self._submit("prune", older_than_ms, limit)

    def _ordered(self, jobs: list[Job]) -> list[Job]:
        return sorted(jobs, key=lambda job: ORDER[job[0]])  # the lock order (pg_batch.py)

    async def _commit_batch(self, jobs: list[Job]) -> None:
        try:
            committed, results = await self._transaction(jobs)
        except asyncio.CancelledError:
            fail_jobs(jobs, StoreUnavailable("the store is closing"))
            raise
        except _LostCommit as lost:
            log.error("PostgreSQL connection lost during COMMIT: %s", lost)
            outcome = await self._committed(lost.xid)
            if outcome is not True:
                what = "did not commit" if outcome is False else "may or may not have committed"
                fail_jobs(jobs, StoreUnavailable(f"PostgreSQL: the connection was lost; the batch {what}"))
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
            fail_jobs(jobs, error)
            return
        if committed and self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception:
                log.exception("commit listener failed")
        for (_, _, future), result in zip(jobs, results):
            if not future.done():
                future.set_result(result)

    async def _transaction(self, jobs: list[Job]) -> tuple[list[Notification], list[Any]]:
        conn = await self._writer_connection()
        try:
            for _ in range(3):
                try:
                    return await self._attempt(conn, jobs)
                except KeyTaken:  # run again: the lookup now finds the winner's ids
                    continue
        except Exception as exc:
            if is_unavailable(exc) or isinstance(exc, _LostCommit):
                await self._release_writer_connection()
            raise
        raise RuntimeError("idempotency keys kept being taken by other nodes")

    async def _writer_connection(self) -> asyncpg.Connection:
        """The writer keeps one connection across batches (a release costs a round trip)."""
        if self._writer_conn is not None and not _usable(self._writer_conn):
            await self._release_writer_connection()
        if self._writer_conn is None:
            if self._pool is None:
                raise StoreUnavailable("the store is not open")
            self._writer_conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT)
        return self._writer_conn

    async def _release_writer_connection(self, healthy: bool = False) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is None or self._pool is None:
            return
        # A connection that failed is terminated: a reset would wait on a server that does
        # not answer. One the pool already took back (it closed) raises: nothing to do.
        with contextlib.suppress(Exception):
            if not healthy:
                conn.terminate()
            await self._pool.release(conn, timeout=ACQUIRE_TIMEOUT)

    async def _attempt(self, conn: asyncpg.Connection,
                       jobs: list[Job]) -> tuple[list[Notification], list[Any]]:
        committed: list[Notification] = []
        transaction = conn.transaction()
        await transaction.start()
        try:
            xid, results = await run_jobs(conn, jobs, committed)
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

    def connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection for what shares this store's database (presence);
        whatever fails in it is :class:`StoreUnavailable`."""
        return self._connection()

    async def _read(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            return await conn.fetch(sql, *args)

    async def state(self, user: str) -> tuple[int, int, int]:
        """Coalesced: the users asking together are read in one statement (coalesce.py)."""
        if self._states is None:
            self._states = Coalescer(self._read_states)
        return await self._states.get(user)

    async def _read_states(self, users: Sequence[str]) -> list[tuple[int, int, int]]:
        rows = await self._read(
            "SELECT s.newest, s.unread, (SELECT pruned_through FROM counter) "
            "FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i) CROSS JOIN LATERAL ("
            "  SELECT coalesce(max(v.id), 0) AS newest, count(*) FILTER (WHERE NOT EXISTS ("
            "    SELECT 1 FROM reads r WHERE r.user_id = u.name AND r.id = v.id)) AS unread "
            f"  FROM ({visible().replace('$1', 'u.name')}) v) s ORDER BY u.i", list(users))
        return [(row[0], row[1], row[2]) for row in rows]

    async def max_id(self) -> int:
        [row] = await self._read("SELECT last FROM counter")
        return row[0]

    async def replay(self, user: str, after_id: int, topics: frozenset[str] | None,
                     limit: int) -> list[Notification]:
        return [row_to_notification(row) for row in await self.replay_rows(user, after_id, topics, limit)]

    async def replay_rows(self, user: str, after_id: int, topics: frozenset[str] | None,
                          limit: int) -> list[asyncpg.Record]:
        if topics is None:
            return await self._read(f"{visible('AND id > $2')} ORDER BY id LIMIT $3", user, after_id, limit)
        return await self._read(f"{visible('AND id > $2 AND topic = ANY($4::text[])')} "
                                "ORDER BY id LIMIT $3", user, after_id, limit, sorted(topics))

    async def since(self, after_id: int, limit: int) -> list[Notification]:
        rows = await self._read(f"SELECT {COLUMNS} FROM notifications WHERE id > $1 ORDER BY id LIMIT $2",
                                after_id, limit)
        return [row_to_notification(row) for row in rows]

    async def history(self, user: str, limit: int, before: int | None,
                      unread: bool | None) -> HistoryPage:
        filter_ = {None: "", True: "WHERE r.id IS NULL", False: "WHERE r.id IS NOT NULL"}[unread]
        rows = await self._read(
            f"SELECT v.*, r.id IS NOT NULL FROM ({visible('AND id < $3')}) v "
            f"LEFT JOIN reads r ON r.user_id = $1 AND r.id = v.id {filter_} "
            "ORDER BY v.id DESC LIMIT $2",
            user, limit + 1, before if before is not None else MAX_ID)  # no id reaches MAX_ID
        items = [(row_to_notification(row), bool(row[8])) for row in rows[:limit]]
        next_before = items[-1][0].id if len(rows) > limit else None
        return HistoryPage(items, next_before)

    async def is_visible(self, user: str, id: int) -> bool:
        rows = await self._read(
            "SELECT 1 FROM notifications WHERE id = $1 AND (user_id = $2 OR user_id IS NULL)", id, user)
        return bool(rows)
