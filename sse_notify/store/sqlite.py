"""The embedded SQLite store (aiosqlite, WAL).

Deliberate decisions:

* **One writer, group commit.** Every write (publish, mark read, prune) is queued to a single
  writer task, which takes everything queued so far and runs it in one transaction with one
  commit, so a burst of concurrent publishes costs one fsync, not one each. ``add()``
  returns only after that commit.
* **Ids are assigned by the writer**, in commit order, from a high-water mark that also
  covers pruned rows (kept in ``meta``), so an id is never reused and ids increase in the
  order notifications are committed.
* **Reads use their own connection**; WAL lets them run beside the writer. Each read
  runs to completion in that connection's thread, whether or not its caller is cancelled.
* ``synchronous=FULL``: a committed batch survives power loss, not just a process crash.
  Group commit keeps that affordable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from ..models import Notification, NotificationDraft, now_ms
from . import HistoryPage, PublishResult, StoreUnavailable

__all__ = ["SQLiteStore"]

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000
PRUNE_CHUNK = 5000

_SCHEMA_V1 = """
CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY,
    user       TEXT,               -- NULL: broadcast
    topic      TEXT,
    title      TEXT NOT NULL,
    body       TEXT,
    priority   TEXT NOT NULL,
    data       TEXT,               -- JSON object or NULL
    created_at INTEGER NOT NULL    -- epoch ms
);
CREATE INDEX notifications_user_id ON notifications (user, id);
CREATE TABLE reads (
    user TEXT NOT NULL,
    id   INTEGER NOT NULL,
    PRIMARY KEY (user, id)
) WITHOUT ROWID;
CREATE TABLE idempotency (
    publisher  TEXT NOT NULL,
    key        TEXT NOT NULL,
    ids        TEXT NOT NULL,      -- JSON list
    created_at INTEGER NOT NULL,
    PRIMARY KEY (publisher, key)
) WITHOUT ROWID;
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""
_MIGRATIONS = [_SCHEMA_V1]

_COLUMNS = "id, user, topic, title, body, priority, data, created_at"


def _row_to_notification(row: Sequence[Any]) -> Notification:
    data = row[6]
    return Notification(row[0], row[1], row[2], row[3], row[4], row[5],
                        None if data is None else orjson.loads(data), row[7])


def _visible(where: str = "") -> str:
    """The notifications one user can see (own + broadcast), as a UNION of two index
    range scans; the user is bound twice, and so is every parameter in ``where``."""
    return (f"SELECT {_COLUMNS} FROM notifications WHERE user = :user {where} "
            f"UNION ALL SELECT {_COLUMNS} FROM notifications WHERE user IS NULL {where}")


_Job = tuple[str, tuple[Any, ...], "asyncio.Future[Any]"]


def _fail(jobs: list[_Job], error: Exception) -> None:
    for *_, future in jobs:
        if not future.done():
            future.set_exception(error)


class SQLiteStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.on_commit: Callable[[list[Notification]], None] | None = None
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._jobs: list[_Job] = []
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = await self._connect()
        await self._migrate()
        self._reader = await self._connect()
        async with self._writer.execute("SELECT coalesce(max(id), 0) FROM notifications") as cur:
            (max_id,) = await cur.fetchone()
        async with self._writer.execute("SELECT value FROM meta WHERE key='pruned_through'") as cur:
            row = await cur.fetchone()
        self._pruned_through = row[0] if row else 0
        self._last_id = max(max_id, self._pruned_through)
        self._writer_task = asyncio.create_task(self._run_writer(), name="sqlite-writer")

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
            await db.execute(f"PRAGMA {pragma}")
        return db

    async def _migrate(self) -> None:
        assert self._writer is not None
        async with self._writer.execute("PRAGMA user_version") as cur:
            (version,) = await cur.fetchone()
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await self._writer.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version={number}; COMMIT;")

    async def close(self) -> None:
        if self._writer_task is not None:
            self._writer_task.cancel()
            try:
                await self._writer_task
            except asyncio.CancelledError:
                pass
            self._writer_task = None
        _fail(self._jobs, StoreUnavailable("the store is closed"))  # queued, never started
        self._jobs = []
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    async def ping(self) -> None:
        await self._read("SELECT 1", ())

    # -- writes: queued to the single writer ----------------------------------------------

    def _submit(self, kind: str, *args: Any) -> asyncio.Future[Any]:
        if self._writer_task is None or self._writer_task.done():
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

    async def prune(self, older_than_ms: int) -> int:
        return await self._submit("prune", older_than_ms)

    async def _run_writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._jobs = self._jobs, []
            if jobs:
                await self._commit_batch(jobs)

    async def _commit_batch(self, jobs: list[_Job]) -> None:
        try:
            committed, results = await self._transaction(jobs)
        except asyncio.CancelledError:
            _fail(jobs, StoreUnavailable("the store is closing"))
            raise
        except Exception as exc:
            if len(jobs) > 1:
                # One bad job must not fail the others queued with it: rare, so only now
                # pay for a transaction per job, and only the culprit fails.
                for job in jobs:
                    await self._commit_batch([job])
                return
            log.error("storage write failed: %s", exc)
            _fail(jobs, StoreUnavailable(str(exc)))
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
        """Run ``jobs`` in one transaction; on any failure undo all of it, ids included."""
        db = self._writer
        assert db is not None
        saved = self._last_id, self._last_created, self._pruned_through
        committed: list[Notification] = []
        results: list[Any] = []
        await db.execute("BEGIN IMMEDIATE")
        try:
            for kind, args, _ in jobs:
                if kind == "add":
                    results.append(await self._do_add(db, committed, *args))
                elif kind == "mark":
                    results.append(await self._do_mark(db, *args))
                elif kind == "mark_all":
                    results.append(await self._do_mark_all(db, *args))
                else:
                    results.append(await self._do_prune(db, *args))
            await db.execute("COMMIT")
        except BaseException:
            self._last_id, self._last_created, self._pruned_through = saved
            try:
                await db.execute("ROLLBACK")
            except Exception:  # the transaction may already be gone
                pass
            raise
        return committed, results

    async def _do_add(self, db: aiosqlite.Connection, committed: list[Notification],
                      drafts: list[NotificationDraft], publisher: str,
                      key: str | None) -> PublishResult:
        now = max(now_ms(), self._last_created)
        if key is not None:
            async with db.execute(
                "SELECT ids FROM idempotency WHERE publisher=? AND key=? AND created_at>?",
                (publisher, key, now - IDEMPOTENCY_WINDOW_MS),
            ) as cur:
                row = await cur.fetchone()
            if row is not None:
                return PublishResult(orjson.loads(row[0]), created=False)
        batch = []
        for draft in drafts:
            self._last_id += 1
            batch.append(Notification(self._last_id, draft.user, draft.topic, draft.title,
                                      draft.body, draft.priority, draft.data, now))
        self._last_created = now
        await db.executemany(
            f"INSERT INTO notifications ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
            [(n.id, n.user, n.topic, n.title, n.body, n.priority,
              None if n.data is None else orjson.dumps(n.data).decode(), n.created_at)
             for n in batch],
        )
        ids = [n.id for n in batch]
        if key is not None:
            await db.execute(
                "INSERT OR REPLACE INTO idempotency (publisher, key, ids, created_at) VALUES (?,?,?,?)",
                (publisher, key, orjson.dumps(ids).decode(), now),
            )
        committed.extend(batch)
        return PublishResult(ids, created=True)

    async def _do_mark(self, db: aiosqlite.Connection, user: str, ids: list[int]) -> list[int]:
        changed: list[int] = []
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            async with db.execute(
                f"INSERT OR IGNORE INTO reads (user, id) SELECT ?, id FROM notifications "
                f"WHERE id IN ({marks}) AND (user = ? OR user IS NULL) RETURNING id",
                (user, *chunk, user),
            ) as cur:
                changed.extend(row[0] for row in await cur.fetchall())
        return sorted(changed)

    async def _do_mark_all(self, db: aiosqlite.Connection, user: str) -> list[int]:
        async with db.execute(
            "INSERT OR IGNORE INTO reads (user, id) SELECT :user, id FROM ("
            + _visible() + ") RETURNING id",
            {"user": user},
        ) as cur:
            return sorted(row[0] for row in await cur.fetchall())

    async def _do_prune(self, db: aiosqlite.Connection, older_than_ms: int) -> int:
        async with db.execute(
            "SELECT max(id) FROM notifications WHERE created_at < ?", (older_than_ms,)
        ) as cur:
            (through,) = await cur.fetchone()
        removed = 0
        if through is not None:
            cur = await db.execute("DELETE FROM notifications WHERE id <= ?", (through,))
            removed = cur.rowcount
            await db.execute("DELETE FROM reads WHERE id <= ?", (through,))
            self._pruned_through = max(self._pruned_through, through)
            await db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)",
                (self._pruned_through,),
            )
        await db.execute("DELETE FROM idempotency WHERE created_at <= ?",
                         (now_ms() - IDEMPOTENCY_WINDOW_MS,))
        return removed

    # -- reads: their own connection ------------------------------------------------------

    async def _read(self, sql: str, params: Any) -> list[Any]:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        try:
            # One call in the connection's thread: execute and fetch to the end there. With
            # execute() then fetchall(), a caller cancelled in between (a client that drops
            # mid-replay) leaves a stepped statement open, and that pins this connection to
            # an old snapshot, so every later read misses newer commits.
            return list(await self._reader.execute_fetchall(sql, params))
        except aiosqlite.Error as exc:
            raise StoreUnavailable(str(exc)) from exc

    async def state(self, user: str) -> tuple[int, int, int]:
        rows = await self._read(
            "SELECT coalesce(max(id), 0), coalesce(sum(NOT EXISTS ("
            "  SELECT 1 FROM reads r WHERE r.user = :user AND r.id = v.id)), 0) "
            "FROM (" + _visible() + ") v",
            {"user": user},
        )
        newest, unread = rows[0]
        return newest, unread, self._pruned_through

    async def max_id(self) -> int:
        return self._last_id

    async def replay(self, user: str, after_id: int, topics: frozenset[str] | None,
                     limit: int) -> list[Notification]:
        params: dict[str, Any] = {"user": user, "after": after_id, "limit": limit}
        where = "AND id > :after"
        if topics is not None:
            names = sorted(topics)
            params.update({f"t{i}": t for i, t in enumerate(names)})
            where += " AND topic IN (" + ",".join(f":t{i}" for i in range(len(names))) + ")"
        rows = await self._read(
            "SELECT * FROM (" + _visible(where) + ") ORDER BY id LIMIT :limit", params)
        return [_row_to_notification(row) for row in rows]

    async def history(self, user: str, limit: int, before: int | None,
                      unread: bool | None) -> HistoryPage:
        params: dict[str, Any] = {"user": user, "limit": limit + 1}
        where = ""
        if before is not None:
            where = "AND id < :before"
            params["before"] = before
        filter_ = {None: "", True: "WHERE r.id IS NULL", False: "WHERE r.id IS NOT NULL"}[unread]
        rows = await self._read(
            f"SELECT v.*, r.id IS NOT NULL FROM ({_visible(where)}) v "
            f"LEFT JOIN reads r ON r.user = :user AND r.id = v.id {filter_} "
            f"ORDER BY v.id DESC LIMIT :limit",
            params,
        )
        items = [(_row_to_notification(row), bool(row[8])) for row in rows[:limit]]
        next_before = items[-1][0].id if len(rows) > limit else None
        return HistoryPage(items, next_before)

    async def is_visible(self, user: str, id: int) -> bool:
        rows = await self._read(
            "SELECT 1 FROM notifications WHERE id = ? AND (user = ? OR user IS NULL)", (id, user))
        return bool(rows)
