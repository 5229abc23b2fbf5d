"""The real PostgreSQL and Redis of the machine (127.0.0.1:5432 and :6379), for the tests
of the PostgreSQL store, the brokers and several nodes.

Every test gets a database of its own with a random name, dropped afterwards, so no test
touches another database; on Redis (whose pub/sub channels are global) a random channel
name plays that part. ``.ci/run`` starts both services when they are down.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg

__all__ = ["PG_ADMIN_URL", "REDIS_URL", "admin", "create_database", "drop_database", "pg_url", "random_name"]

PG_HOST = os.environ.get("SSE_NOTIFY_TEST_PG", "postgres@127.0.0.1:5432")
PG_ADMIN_URL = f"postgresql://{PG_HOST}/postgres"
REDIS_URL = os.environ.get("SSE_NOTIFY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def random_name(prefix: str = "sse_notify_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def pg_url(database: str) -> str:
    return f"postgresql://{PG_HOST}/{database}"


async def admin(sql: str) -> None:
    """Run ``sql`` on the server's ``postgres`` database (CREATE/DROP DATABASE)."""
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_database() -> str:
    """A new, empty database; returns its URL."""
    name = random_name()
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    return pg_url(name)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
