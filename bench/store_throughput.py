"""Durable publishes per second through the Store alone (no HTTP), SQLite beside PostgreSQL.

    .venv/bin/python -m bench.store_throughput            # about 30 s
    .venv/bin/python -m bench.store_throughput --seconds 5 --adders 1,10,100,1000
    .venv/bin/python -m bench.store_throughput --nodes 3    # PostgreSQL: three nodes, one database

For each store and each number of concurrent adders, that many tasks each call
``store.add([one notification])`` in a loop for ``--seconds``; every call returns only
after its commit (SQLite ``synchronous=FULL``; PostgreSQL ``synchronous_commit=on``), so
the rate is of durable publishes. The table also shows the mean batch (publishes per
commit, from ``on_commit``): group commit is what turns more adders into more throughput,
and on PostgreSQL each batch is one statement taking ids from the counter row.

SQLite runs in a temporary directory; PostgreSQL in a temporary database created on the
server of ``--postgres`` (an admin URL) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg

from sse_notify.models import Notification, NotificationDraft
from sse_notify.store import Store
from sse_notify.store.postgres import PostgresStore
from sse_notify.store.sqlite import SQLiteStore

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def measure(make: Callable[[], Store], adders: int, seconds: float,
                  nodes: int = 1) -> tuple[float, float]:
    """``(publishes per second, mean publishes per commit)`` with ``adders`` concurrent
    adders spread over ``nodes`` store instances on the same database."""
    stores = [make() for _ in range(nodes)]
    for store in stores:
        await store.open()
    commits = published = 0

    def counted(batch: list[Notification]) -> None:
        nonlocal commits
        commits += 1

    for store in stores:
        store.on_commit = counted
    draft = NotificationDraft("bench-user", "a benchmark notification", body="x" * 100)
    deadline = time.monotonic() + seconds

    async def adder(store: Store) -> None:
        nonlocal published
        while time.monotonic() < deadline:
            await store.add([draft], "bench")
            published += 1

    try:
        started = time.monotonic()
        await asyncio.gather(*(adder(stores[i % nodes]) for i in range(adders)))
        elapsed = time.monotonic() - started
    finally:
        for store in stores:
            await store.close()
    return published / elapsed, published / max(commits, 1)


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def run(admin_url: str, adders: list[int], seconds: float,
              nodes: int) -> list[tuple[str, int, float, float]]:
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="sse-notify-bench-"))
    name = f"sse_notify_bench_{uuid.uuid4().hex[:10]}"
    pg_url = admin_url.rsplit("/", 1)[0] + "/" + name
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        for n in adders:
            for label, make, count in (
                    ("SQLite", lambda n=n: SQLiteStore(tmp / f"bench-{n}.db"), 1),
                    ("PostgreSQL" + (f" x{nodes}" if nodes > 1 else ""), lambda: PostgresStore(pg_url), nodes)):
                rate, batch = await measure(make, n, seconds, count)
                rows.append((label, n, rate, batch))
                print(f"{label:<14} {n:>6} adders {rate:>10,.0f} publishes/s  {batch:>7.1f} per commit",
                      flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default=DEFAULT_ADMIN_URL, help="admin URL of a PostgreSQL server")
    parser.add_argument("--adders", default="1,10,100", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=4.0, help="duration of each measurement")
    parser.add_argument("--nodes", type=int, default=1,
                        help="PostgreSQL store instances (nodes) sharing the adders and one database")
    args = parser.parse_args()
    adders = [int(n) for n in args.adders.split(",")]
    rows = asyncio.run(run(args.postgres, adders, args.seconds, args.nodes))
    print("\n| store | adders | durable publishes/s | publishes per commit |\n|---|---:|---:|---:|")
    for label, n, rate, batch in rows:
        print(f"| {label} | {n} | {rate:,.0f} | {batch:.1f} |")


if __name__ == "__main__":
    main()
