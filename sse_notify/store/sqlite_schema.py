"""The SQLite store's schema and connections: the tables and their migrations, opening a
connection (WAL, ``synchronous=FULL``, a busy timeout), migrating a database file, the
identity of the file a connection uses, and the query of what one user can see.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiosqlite

from .sqlite_escalations import ESCALATIONS_V4
from .sqlite_receipts import RECEIPTS_V3, RECEIPTS_V5

__all__ = ["COLUMNS", "MIGRATIONS", "connect_to", "identity", "migrate", "visible"]

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
# Retention deletes by id range from reads and by age from idempotency.
_INDEXES_V2 = """
CREATE INDEX reads_id ON reads (id);
CREATE INDEX idempotency_created_at ON idempotency (created_at);
"""
MIGRATIONS = [_SCHEMA_V1, _INDEXES_V2, RECEIPTS_V3, ESCALATIONS_V4, RECEIPTS_V5]

COLUMNS = "id, user, topic, title, body, priority, data, created_at"


def visible(where: str = "") -> str:
    """The notifications one user can see (own + broadcast), as a UNION of two index
    range scans; the user is bound twice, and so is every parameter in ``where``."""
    return (f"SELECT {COLUMNS} FROM notifications WHERE user = :user {where} "
            f"UNION ALL SELECT {COLUMNS} FROM notifications WHERE user IS NULL {where}")


def identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # gone, or a parent is no longer a directory
        return None
    return st.st_dev, st.st_ino


async def connect_to(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
        await db.execute(f"PRAGMA {pragma}")
    return db


async def migrate(db: aiosqlite.Connection, issued: int) -> tuple[int, int]:
    """Bring the schema up to date; returns ``(highest id ever issued, pruned through)``.

    ``issued`` is the highest id this process already handed out: when the file holds
    less (it was replaced or recreated), those ids are recorded as gone.
    """
    [(version,)] = await db.execute_fetchall("PRAGMA user_version")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        await db.executescript(f"BEGIN IMMEDIATE; {script} PRAGMA user_version={number}; COMMIT;")
    [(max_id,)] = await db.execute_fetchall("SELECT coalesce(max(id), 0) FROM notifications")
    rows = await db.execute_fetchall("SELECT value FROM meta WHERE key='pruned_through'")
    pruned_through = rows[0][0] if rows else 0
    if issued > max(max_id, pruned_through):
        pruned_through = issued
        await db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('pruned_through', ?)",
                         (pruned_through,))
    return max(max_id, pruned_through), pruned_through
