"""Broker faults while notifications are being committed: the LISTEN connections killed
(``pg_terminate_backend``), Redis restarted, Redis subscribers kicked (``CLIENT KILL``).

Two nodes share one SQLite log: node A commits and publishes through its broker, node B
follows through a broker of its own. Whatever the broker loses, B must deliver every id
once, in order: 0 missing, 0 duplicated, 0 out of order. B's periodic check is off (60 s),
so the recovery seen here is the reconnect's catch-up, not the safety net.
The short form injects one fault; the long form a fault every second for 20 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import asyncpg
import pytest

from sse_notify.broker import Broker, BrokerUnavailable, open_broker
from sse_notify.follower import Follower
from sse_notify.models import Notification, NotificationDraft, ReadChange
from sse_notify.store.sqlite import SQLiteStore

REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1",
               "--port", "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]

Fault = Callable[[str, Broker], Awaitable[None]]  # (URL, the subscriber's broker)


async def _run(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return out.decode()


async def _redis_up() -> bool:
    return "PONG" in await _run("redis-cli", "ping")


async def ensure_redis() -> None:
    """Leave Redis running, whatever happened."""
    if not await _redis_up():
        await _run(*REDIS_START)
    async with asyncio.timeout(10):
        while not await _redis_up():
            await asyncio.sleep(0.05)


async def kill_listen_connections(url: str, subscriber: Broker) -> None:
    """Every other connection to this test's database: both nodes' LISTEN and NOTIFY ones."""
    conn = await asyncpg.connect(url)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await conn.close()
    assert killed >= 2


async def restart_redis(url: str, subscriber: Broker) -> None:
    try:
        await _run("redis-cli", "shutdown", "nosave")
        async with asyncio.timeout(10):
            while await _redis_up():
                await asyncio.sleep(0.02)
        with pytest.raises(BrokerUnavailable):  # what /healthz answers 503 on
            await subscriber.ping()
        await asyncio.sleep(0.3)  # down for a while: publishes fail, commits go on
    finally:
        await ensure_redis()


async def kick_redis_subscribers(url: str, subscriber: Broker) -> None:
    out = await _run("redis-cli", "client", "kill", "type", "pubsub")
    assert int(out.strip() or 0) >= 1, out


class Recorder:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.times: list[float] = []
        self.changed = asyncio.Event()

    def __call__(self, messages: Sequence[Notification | ReadChange]) -> None:
        now = time.monotonic()
        for m in messages:
            if isinstance(m, Notification):
                self.ids.append(m.id)
                self.times.append(now)
        self.changed.set()


async def scenario(tmp_path: Path, url: str, fault: Fault, faults: int, seconds: float,
                   name: str, figures: Callable[..., str]) -> None:
    store = SQLiteStore(tmp_path / "log.db")
    await store.open()
    a: Broker = open_broker(url)
    b: Broker = open_broker(url)
    recorder = Recorder()
    follower = Follower(store, b, recorder, check_interval=60.0)
    store.on_commit = a.publish
    await a.open()
    await b.open()
    await follower.start()
    task = asyncio.create_task(follower.run())
    committed: list[int] = []
    stop = asyncio.Event()

    async def commit() -> None:
        while not stop.is_set():
            committed.extend((await store.add([NotificationDraft("alice", "n")], "pub")).ids)
            await asyncio.sleep(0.002)

    publisher = asyncio.create_task(commit())
    try:
        for _ in range(faults):
            await asyncio.sleep(seconds / (faults + 1))
            await fault(url, b)
        await asyncio.sleep(seconds / (faults + 1))
        stop.set()
        await publisher
        last = committed[-1]
        async with asyncio.timeout(15):
            while not recorder.ids or recorder.ids[-1] < last:
                recorder.changed.clear()
                await recorder.changed.wait()
    finally:
        stop.set()
        await asyncio.gather(publisher, return_exceptions=True)
        await a.close()
        await b.close()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    ids = recorder.ids
    stall = max((t2 - t1 for t1, t2 in zip(recorder.times, recorder.times[1:])), default=0.0)
    missing = len(set(committed) - set(ids))
    duplicated = len(ids) - len(set(ids))
    out_of_order = sum(1 for x, y in zip(ids, ids[1:]) if y <= x)
    figures(name, faults=faults, committed=len(committed), delivered=len(ids), missing=missing,
            duplicated=duplicated, out_of_order=out_of_order, resyncs=follower.resyncs,
            catchup_reads=follower.catchup_reads, caught_up=follower.caught_up,
            longest_stall_ms=round(stall * 1000))
    assert ids == committed == list(range(1, len(committed) + 1))
    assert follower.resyncs >= faults  # the fault did hit the subscriber


def _form(long_mode: bool) -> tuple[int, float]:
    return (20, 20.0) if long_mode else (1, 1.5)


@pytest.mark.fault(short=60, long=180)
async def test_listen_connection_killed(tmp_path: Path, postgres_url: str, long_mode: bool,
                                        figures: Callable[..., str]) -> None:
    faults, seconds = _form(long_mode)
    await scenario(tmp_path, postgres_url, kill_listen_connections, faults, seconds,
                   "pg-listen-killed", figures)


@pytest.mark.fault(short=60, long=300)
@pytest.mark.exclusive  # every test's Redis
async def test_redis_restarted(tmp_path: Path, redis_url: str, long_mode: bool,
                               figures: Callable[..., str]) -> None:
    faults, seconds = _form(long_mode)
    try:
        await scenario(tmp_path, redis_url, restart_redis, min(faults, 5), seconds,
                       "redis-restarted", figures)
    finally:
        await ensure_redis()


@pytest.mark.fault(short=60, long=180)
@pytest.mark.exclusive  # every test's Redis
async def test_redis_subscriber_kicked(tmp_path: Path, redis_url: str, long_mode: bool,
                                       figures: Callable[..., str]) -> None:
    faults, seconds = _form(long_mode)
    await scenario(tmp_path, redis_url, kick_redis_subscribers, faults, seconds,
                   "redis-client-kill", figures)
