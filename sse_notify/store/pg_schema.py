"""The PostgreSQL store's schema, its migrations, its connections, and the cluster's secret.

* **Migrations** are a list of scripts, like SQLite's; the version applied is kept in
  ``schema_version``. They run on open inside one transaction holding an advisory lock,
  so nodes starting together migrate once, one after the other.
* **One counter row** (``counter``) hands out ids, and also keeps ``pruned_through`` and the
  newest ``created_at``, so every node agrees on them (see ``postgres.py`` for why ids come
  from a row and not a sequence).
* **Connections** come from an asyncpg pool that replaces a dead connection on the next
  acquire, so the store recovers by itself when PostgreSQL is back. ``synchronous_commit``
  is set on every connection, whatever the server's default.
* **Configuration errors** found when connecting (refused, unknown host, wrong password,
  unknown user, no such database) become :class:`StoreConfigError` with a one-line reason
  and the URL without its password.
* **The signing secret** of a cluster lives in ``secrets`` (current, previous, previous
  until): the first node creates it with ``INSERT ... ON CONFLICT DO NOTHING`` and every node
  reads the one that won. Nothing else ever invents one: ``token`` reads it or fails.
"""

from __future__ import annotations

import re
import secrets
import time

import asyncpg

from ..config import Keyring
from . import StoreConfigError, StoreUnavailable
from .pg_escalations import ESCALATIONS_V3
from .pg_receipts import RECEIPTS_V2

__all__ = ["connect_pool", "migrate", "load_keyring", "rotate_keyring", "safe_url", "is_unavailable",
           "unavailable", "MIGRATIONS", "UNAVAILABLE_ERRORS"]

_PASSWORD = re.compile(r"(://[^:/@?#]*):[^@/?#]*@")  # user:password@ -> user@
_PASSWORD_PARAM = re.compile(r"([?&]password=)[^&#]*")
CONNECT_TIMEOUT = 3.0  # seconds to open one connection
COMMAND_TIMEOUT = 5.0  # seconds any one statement may take
POOL_SIZE = 10
MIGRATION_LOCK = 0x55e_0001  # pg_advisory_xact_lock keys of this application
PRUNE_LOCK = 0x55e_0002
PRESENCE_EXPIRY_LOCK = 0x55e_0010

_SCHEMA_V1 = """
CREATE TABLE counter (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    last           bigint NOT NULL,     -- the highest id ever handed out (committed)
    last_created   bigint NOT NULL,     -- the newest created_at, so it never goes backwards
    pruned_through bigint NOT NULL      -- ids up to here were removed by retention
);
INSERT INTO counter VALUES (true, 0, 0, 0);
CREATE TABLE notifications (
    id         bigint PRIMARY KEY,
    user_id    text,                    -- NULL: broadcast
    topic      text,
    title      text NOT NULL,
    body       text,
    priority   text NOT NULL,
    data       text,                    -- JSON object as sent (text keeps its key order)
    created_at bigint NOT NULL          -- epoch ms
);
CREATE INDEX notifications_user_id ON notifications (user_id, id);
CREATE TABLE reads (
    user_id text NOT NULL,
    id      bigint NOT NULL,
    PRIMARY KEY (user_id, id)
);
CREATE INDEX reads_id ON reads (id);
CREATE TABLE idempotency (
    publisher  text NOT NULL,
    key        text NOT NULL,
    first_id   bigint NOT NULL,         -- a publish's ids are first_id .. first_id+count-1
    count      integer NOT NULL,
    sizes      integer[],               -- a bulk publish: how many ids each element got
    created_at bigint NOT NULL,
    PRIMARY KEY (publisher, key)
);
CREATE INDEX idempotency_created_at ON idempotency (created_at);
CREATE TABLE health (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    probed_at bigint NOT NULL
);
INSERT INTO health VALUES (true, 0);
CREATE TABLE secrets (
    one            boolean PRIMARY KEY DEFAULT true CHECK (one),
    current        text NOT NULL,
    previous       text,
    previous_until double precision     -- epoch seconds
);
"""
# Presence: each node's stream counts per user and its heartbeat (store/presence.py).
_PRESENCE = """
CREATE TABLE presence_nodes (
    node    text PRIMARY KEY,
    beat_at bigint NOT NULL             -- epoch ms, the database server's clock
);
CREATE TABLE presence (
    user_id text NOT NULL,
    node    text NOT NULL,
    streams integer NOT NULL,
    PRIMARY KEY (user_id, node)
);
CREATE INDEX presence_node ON presence (node);
CREATE TABLE presence_last_seen (
    user_id text PRIMARY KEY,
    at      bigint NOT NULL             -- epoch ms
);
"""
MIGRATIONS = [_SCHEMA_V1, _PRESENCE, RECEIPTS_V2, ESCALATIONS_V3]

#: Errors that mean "PostgreSQL cannot answer now" (down, restarting, connection killed,
#: out of disk), as opposed to a statement it refused.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.PostgresSystemError, asyncpg.exceptions.ReadOnlySQLTransactionError,
    # a connection whose backend was terminated while idle can be left in a state where
    # the next statement fails with this
    asyncpg.exceptions.InternalClientError,
)


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs (also when it is malformed)."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1@", url))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return "password authentication failed"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"not allowed to connect ({exc})"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"no such database ({exc})"
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError):
        return f"unreachable ({exc.strerror or exc})"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def connect_pool(url: str) -> asyncpg.Pool:
    """A pool to ``url``, with one connection opened now to check the configuration.

    The pool keeps no minimum of connections: asyncpg would log a traceback each time it
    failed to restore one while PostgreSQL is away; connections open on demand instead."""
    pool = None
    try:
        pool = await asyncpg.create_pool(
            url, min_size=0, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={"application_name": "sse-notify", "synchronous_commit": "on"})
        async with pool.acquire(timeout=CONNECT_TIMEOUT + 1):
            return pool
    except (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if pool is not None:
            pool.terminate()
        if isinstance(exc, ValueError) and not isinstance(exc, asyncpg.InterfaceError):
            raise StoreConfigError(f"invalid PostgreSQL store URL {safe_url(url)}: {exc}") from None
        raise StoreConfigError(f"cannot use the PostgreSQL store at {safe_url(url)}: {_reason(exc)}") from None


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema up to date, one node at a time; returns the version now in place."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > len(MIGRATIONS):
            raise StoreConfigError(f"the database has schema version {version}, newer than this "
                                   f"sse-notify knows ({len(MIGRATIONS)}): upgrade sse-notify")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await conn.execute(script)
            await conn.execute("INSERT INTO schema_version VALUES ($1)", number)
    return len(MIGRATIONS)


def _keyring(row: asyncpg.Record) -> Keyring:
    previous, until = row["previous"], row["previous_until"]
    if previous is None or until is None or until <= time.time():
        return Keyring(row["current"])
    return Keyring(row["current"], previous, until)


async def load_keyring(conn: asyncpg.Connection, *, create: bool) -> Keyring | None:
    """The cluster's secret; with ``create``, made first if no node has made one yet."""
    if create:
        await conn.execute("INSERT INTO secrets (current) VALUES ($1) ON CONFLICT DO NOTHING",
                           secrets.token_urlsafe(48))
    row = await conn.fetchrow("SELECT current, previous, previous_until FROM secrets")
    return None if row is None else _keyring(row)


async def rotate_keyring(conn: asyncpg.Connection, grace: int) -> Keyring | None:
    """A new signing secret; the current one is accepted ``grace`` more seconds. None (and
    nothing changed) when the cluster has no secret yet."""
    row = await conn.fetchrow(
        "UPDATE secrets SET previous = current, previous_until = $1, current = $2 "
        "RETURNING current, previous, previous_until",
        time.time() + grace, secrets.token_urlsafe(48))
    return None if row is None else _keyring(row)


def is_unavailable(exc: BaseException) -> bool:
    """PostgreSQL cannot answer (as opposed to refusing one statement, or a value that
    cannot be sent, which asyncpg reports as an InterfaceError that is also a ValueError)."""
    return isinstance(exc, StoreUnavailable) or (
        isinstance(exc, UNAVAILABLE_ERRORS) and not isinstance(exc, ValueError))


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The error a caller gets when PostgreSQL cannot answer."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, TimeoutError):
        return StoreUnavailable(f"PostgreSQL did not answer within {COMMAND_TIMEOUT:g} s")
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return StoreUnavailable(f"PostgreSQL: {text}")
