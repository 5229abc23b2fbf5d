"""The embedded SQLite store (aiosqlite, WAL).

Deliberate decisions:

* **One writer, group commit.** Every write (publish, mark read, prune) is queued to a single
  writer task, which takes everything queued so far and runs it in one transaction with one
  commit, so a burst of concurrent publishes costs one fsync, not one each. ``add()``
  returns only after that commit.
* **Few statements per batch.** Each aiosqlite statement is a round trip to the
  connection's thread, so the publishes of a batch are inserted together (flushed before
  any other kind of write, to keep the jobs' order): the notifications with multi-row
  ``INSERT``s (``sqlite_rows``: a few statements whatever the batch's size, each run once,
  not once per row), the other tables with one ``executemany`` each.
* **A bulk publish is one job** (``add_many``): all its notifications go into the one
  transaction, in order, whatever else the batch holds.
* **Ids are assigned by the writer**, in commit order, from a high-water mark that also
  covers pruned rows (kept in ``meta``), so an id is never reused and ids increase in the
  order notifications are committed.
* **Reads use their own connection**; WAL lets them run beside the writer. A read runs to
  completion in that connection's thread whether or not its caller is cancelled.
* ``synchronous=FULL``: a committed batch survives power loss, not just a process crash.
  Group commit keeps that affordable.
* **Storage failures are answered, not hidden.** A write that SQLite refuses (locked by
  another process, disk full, I/O error) fails its whole batch with
  :class:`StoreUnavailable` (503) at once. Before each commit the writer checks that the
  database file is still the one it opened: if it was removed or replaced, the batch is
  rolled back (never committed into a deleted file) and the store reopens its path,
  recording every id issued so far as gone, so a cursor from before gets ``reset``, never a
  silent gap. ``ping`` is a small write through the same queue (reads keep working in
  WAL mode through all of these) plus a check for free disk space.
* Closing lets a batch already being written finish (so what a caller was told committed
  is what is on disk) and fails only the jobs that never started.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ..models import Notification, NotificationDraft, now_ms
from . import BulkPublishResult, PublishResult, StoreUnavailable
from .sqlite_escalations import INSERT_ESCALATIONS, SQLiteEscalations
from .sqlite_reads import SQLiteReads
from .sqlite_rows import NULL, insert_rows
from .sqlite_receipts import SQLiteReceipts
from .sqlite_schema import COLUMNS, connect_to, identity, migrate, visible
from .writer_queue import Job, WriterQueue, fail_jobs

__all__ = ["SQLiteStore"]

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
PING_TIMEOUT = 2.0  # seconds a health probe may wait for the writer
#: Below this much free space on the database's filesystem, ``ping`` reports trouble: a
#: small probe write still fits in space SQLite already holds when a publish no longer does.
MIN_FREE_BYTES = 1 << 20


class _FileGone(sqlite3.OperationalError):
    """The database file was removed or replaced under the open connections."""


def _repeat(stored: list[Any], bulk: bool) -> PublishResult | BulkPublishResult:
    """The answer to a repeated idempotency key. The key's row holds the first publish's
    ids: a list of ids for an ``add()``, a list of id lists for an ``add_many()``."""
    groups: list[list[int]] = stored if stored and isinstance(stored[0], list) else [stored]
    if bulk:
        return BulkPublishResult(groups, created=False)
    return PublishResult([id for ids in groups for id in ids], created=False)


_INSERT_NOTIFICATIONS = f"INSERT INTO notifications ({COLUMNS})"
#: The nullable columns (user, topic, body, data) are bound as ``NULL`` (``sqlite_rows``).
_NOTIFICATION_ROW = "(?,NULLIF(?,0),NULLIF(?,0),?,NULLIF(?,0),?,NULLIF(?,0),?)"


class _Inserts:
    """The rows one transaction's publishes add, written in one statement per table, and
    the idempotency keys they used (so a repeat later in the same batch finds them)."""

    def __init__(self) -> None:
        self.notifications: list[Any] = []  # flat: _NOTIFICATION_ROW's parameters, row after row
        self.keys: list[tuple[str, str, str, int]] = []
        self.escalations: list[tuple[int, str, str, int, int]] = []
        self.ids_by_key: dict[tuple[str, str], list[Any]] = {}  # as stored: see _repeat()

    async def flush(self, db: aiosqlite.Connection) -> None:
        if self.notifications:
            await insert_rows(db, _INSERT_NOTIFICATIONS, _NOTIFICATION_ROW, self.notifications)
            self.notifications = []
        if self.keys:
            await db.executemany("INSERT OR REPLACE INTO idempotency (publisher, key, ids, created_at) "
                                 "VALUES (?,?,?,?)", self.keys)
            self.keys = []
        if self.escalations:  # in the notifications' transaction: a 201 implies it is scheduled
            await db.executemany(INSERT_ESCALATIONS, self.escalations)
            self.escalations = []


class SQLiteStore(WriterQueue, SQLiteReads, SQLiteReceipts, SQLiteEscalations):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.on_commit: Callable[[list[Notification]], None] | None = None
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._identity: tuple[int, int] | None = None  # of the file the connections use
        self._init_queue()
        self._last_id = 0
        self._last_created = 0
        self._pruned_through = 0

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        # sqlite:///relative/path.db and sqlite:////absolute/path.db
        path = url.split("://", 1)[1]
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise ValueError("sqlite URL needs a file path, e.g. sqlite:///data/notifications.db")
        return cls(path)

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._connect()
        self._start_writer("sqlite-writer")

    async def _connect(self) -> None:
        """Open both connections, or (on failure) neither."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = await connect_to(self.path)
            self._identity = identity(self.path)
            self._last_id, self._pruned_through = await migrate(self._writer, self._last_id)
            self._reader = await connect_to(self.path)
        except BaseException:
            await self._disconnect()
            raise

    async def _disconnect(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    async def _reopen(self) -> None:
        """Connect afresh to whatever file the path names now (creating it if it is gone);
        if that fails too, the next batch tries again."""
        await self._disconnect()
        try:
            await self._connect()
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot reopen %s: %s", self.path, exc)
            return
        log.error("reopened %s; notifications up to id %d are no longer stored",
                  self.path, self._pruned_through)

    async def close(self) -> None:
        await self._stop_writer()
        await self._disconnect()

    async def ping(self) -> None:
        """A small write through the writer's queue, answered within ``PING_TIMEOUT``, on a
        filesystem with room to grow."""
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._submit("probe")
        except TimeoutError:
            raise StoreUnavailable(f"storage did not answer within {PING_TIMEOUT:g} s") from None
        free = shutil.disk_usage(self.path.parent).free
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(f"the database's disk is full ({free} bytes free)")

    # -- writes: queued to the single writer ----------------------------------------------

    async def add(self, drafts: Sequence[NotificationDraft], publisher: str,
                  idempotency_key: str | None = None) -> PublishResult:
        return await self._submit("add", [list(drafts)], publisher, idempotency_key, False)

    async def add_many(self, requests: Sequence[Sequence[NotificationDraft]], publisher: str,
                       idempotency_key: str | None = None) -> BulkPublishResult:
        # One job, so one transaction even when the writer is idle and takes it alone.
        return await self._submit("add", [list(r) for r in requests], publisher, idempotency_key, True)

    async def mark_read(self, user: str, ids: Sequence[int]) -> list[int]:
        return await self._submit("mark", user, list(ids))

    async def mark_all_read(self, user: str) -> list[int]:
        return await self._submit("mark_all", user)

    async def prune(self, older_than_ms: int, limit: int) -> int:
        return await self._submit("prune", older_than_ms, limit)

    async def _commit_batch(self, jobs: list[Job]) -> None:
        try:
            if self._writer is None:  # an earlier reopen failed
                await self._connect()
            assert self._writer is not None
            committed, results = await self._transaction(self._writer, jobs)
        except asyncio.CancelledError:
            fail_jobs(jobs, StoreUnavailable("the store is closing"))
            raise
        except Exception as exc:
            if len(jobs) > 1 and not isinstance(exc, sqlite3.OperationalError):
                # One bad job must not fail the others queued with it: rare, so only now
                # pay for a transaction per job, and only the culprit fails. (Storage
                # itself failing -- locked, full, I/O -- would fail each of them alike.)
                for job in jobs:
                    await self._commit_batch([job])
                return
            log.error("storage write failed: %s", exc)
            if isinstance(exc, _FileGone):
                await self._reopen()  # before answering, so a retry finds the store usable
            fail_jobs(jobs, StoreUnavailable(str(exc)))
            return
        if committed and self.on_commit is not None:
            try:
                self.on_commit(committed)
            except Exception:
                log.exception("commit listener failed")
        for (_, _, future), result in zip(jobs, results):
            if not future.done():
                future.set_result(result)

    async def _transaction(self, db: aiosqlite.Connection,
                           jobs: list[Job]) -> tuple[list[Notification], list[Any]]:
        """Run ``jobs`` in one transaction; on any failure undo all of it, ids included."""
        saved = self._last_id, self._last_created, self._pruned_through
        committed: list[Notification] = []
        results: list[Any] = []
        inserts = _Inserts()
        await db.execute("BEGIN IMMEDIATE")
        try:
            for kind, args, _ in jobs:
                if kind == "add":
                    results.append(await self._do_add(db, inserts, committed, *args))
                    continue
                await inserts.flush(db)  # what came before is in the tables first
                if kind == "mark":
                    results.append(await self._do_mark(db, *args))
                elif kind == "mark_all":
                    results.append(await self._do_mark_all(db, *args))
                elif kind == "prune":
                    results.append(await self._do_prune(db, *args))
                elif kind == "run":  # a helper module's write (receipts): fn(db)
                    results.append(await args[0](db))
                else:  # probe
                    results.append(await db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('probed_at', ?)", (now_ms(),)))
            await inserts.flush(db)
            if identity(self.path) != self._identity:
                raise _FileGone(f"the database file {self.path} was removed or replaced")
            await db.execute("COMMIT")
        except Exception:
            self._last_id, self._last_created, self._pruned_through = saved
            try:
                await db.execute("ROLLBACK")
            except sqlite3.Error:  # the transaction may already be gone
                pass
            raise
        return committed, results

    async def _do_add(self, db: aiosqlite.Connection, inserts: _Inserts, committed: list[Notification],
                      groups: list[list[NotificationDraft]], publisher: str, key: str | None,
                      bulk: bool) -> PublishResult | BulkPublishResult:
        """One ``add()`` (a single group) or ``add_many()`` (``bulk``)."""
        now = max(now_ms(), self._last_created)
        if key is not None:
            stored = inserts.ids_by_key.get((publisher, key))  # a repeat within this batch
            if stored is None:
                rows = await db.execute_fetchall(
                    "SELECT ids FROM idempotency WHERE publisher=? AND key=? AND created_at>?",
                    (publisher, key, now - IDEMPOTENCY_WINDOW_MS))
                stored = orjson.loads(rows[0][0]) if rows else None
            if stored is not None:
                return _repeat(stored, bulk)
        results: list[list[int]] = []
        rows, escalations, dumps = inserts.notifications, inserts.escalations, orjson.dumps
        id = self._last_id
        for drafts in groups:
            ids = []
            for d in drafts:
                id += 1
                ids.append(id)
                committed.append(Notification(id, d.user, d.topic, d.title, d.body, d.priority, d.data, now))
                user, topic, body, data = d.user, d.topic, d.body, d.data
                rows += (id, NULL if user is None else user, NULL if topic is None else topic, d.title,
                         NULL if body is None else body, d.priority,
                         NULL if data is None else dumps(data).decode(), now)
                if d.escalate is not None and d.user is not None:
                    due = now + d.escalate.after * 1000
                    escalations.append((id, d.user, d.escalate.unless, due, due))
            results.append(ids)
        self._last_id = id
        self._last_created = now
        stored = results if bulk else results[0]
        if key is not None:
            inserts.ids_by_key[publisher, key] = stored
            inserts.keys.append((publisher, key, orjson.dumps(stored).decode(), now))
        return BulkPublishResult(results, created=True) if bulk else PublishResult(results[0], created=True)

    @staticmethod
    async def _do_mark(db: aiosqlite.Connection, user: str, ids: list[int]) -> list[int]:
        changed: list[int] = []
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            changed.extend(row[0] for row in await db.execute_fetchall(
                f"INSERT OR IGNORE INTO reads (user, id, read_at) SELECT ?, id, ? FROM notifications "
                f"WHERE id IN ({marks}) AND (user = ? OR user IS NULL) RETURNING id",
                (user, now_ms(), *chunk, user)))
        return sorted(changed)

    @staticmethod
    async def _do_mark_all(db: aiosqlite.Connection, user: str) -> list[int]:
        return sorted(row[0] for row in await db.execute_fetchall(
            "INSERT OR IGNORE INTO reads (user, id, read_at) SELECT :user, id, :now FROM ("
            + visible() + ") RETURNING id",
            {"user": user, "now": now_ms()}))

    async def _do_prune(self, db: aiosqlite.Connection, older_than_ms: int, limit: int) -> int:
        # Ids follow creation time, so the oldest ``limit`` rows are the lowest ids.
        [(through,)] = await db.execute_fetchall(
            "SELECT max(id) FROM (SELECT id FROM notifications WHERE created_at < ? "
            "ORDER BY id LIMIT ?)", (older_than_ms, limit))
        removed = 0
        if through is not None:
            async with db.execute("DELETE FROM notifications WHERE id <= ?", (through,)) as cursor:
                removed = cursor.rowcount
            await db.execute("DELETE FROM reads WHERE id <= ?", (through,))
            await db.execute("DELETE FROM receipts WHERE id <= ?", (through,))
            await db.execute("DELETE FROM escalations WHERE id <= ?", (through,))
            self._pruned_through = max(self._pruned_through, through)
            await db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)",
                             (self._pruned_through,))
        await db.execute("DELETE FROM idempotency WHERE created_at <= ?",
                         (now_ms() - IDEMPOTENCY_WINDOW_MS,))
        return removed
