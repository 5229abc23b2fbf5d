"""Scenario 5, soak (long form only): 10 minutes of mixed publishing, subscribing,
reconnecting, history reads and read-state changes against one server.

* publishers post at a steady pace to single users, user lists and everyone, with topics;
* subscribers (SSE and WebSocket) stay connected for seconds to half a minute, now and
  then stay away, and resume from their cursor; each must end with exactly the
  notifications meant for it, once each, in order (the checks of scenario 2);
* readers page through users' history (``limit``, ``before``, ``unread``), check that every
  page holds only that user's and broadcast notifications, newest first, and mark some read
  (one by id, several at once, now and then all).

Figures: what was done, errors (every unexpected answer or exception; must be 0), and the
server's memory: RSS sampled every 5 s, its growth per minute after a 5-minute warm-up
(a least-squares slope), and open descriptors at the start and the end.

The warm-up covers what fills once and then stays: SQLite's page cache on the read
connection (``cache_size`` default, 2 MiB; full after about 13,000 stored rows, 4 minutes
here), the malloc arenas of the connection threads around it, and the pymalloc arenas
that hold the cyclic garbage of closed connections until the first full collection (with
``app._tune_gc``'s thresholds, after about 4 minutes of this load). Measured from minute 2
these fills read as 0.5 MB a minute; from minute 5 on, 0.0-0.2.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from ..e2e.wsclient import WS_SERVER_FLAGS
from ..helpers import ServerProcess
from .support import MB, Ledger, Spec, Subscriber, fd_count, publish_loop, rss_bytes

TRANSPORTS = [("sse", "header"), ("ws", "query"), ("sse", "query"), ("ws", "frame")]
TOPICS = (None, "a", "b")


@dataclass(frozen=True)
class Form:
    minutes: float
    warmup_minutes: float
    subscribers: int
    users: int
    publishers: int
    rate: float  # publishes per second per publisher
    readers: int


LONG = Form(minutes=10, warmup_minutes=5, subscribers=40, users=20, publishers=2, rate=20, readers=4)


def session_length(rng: random.Random) -> float:
    return rng.uniform(2, 30)


def time_away(rng: random.Random) -> float:
    return rng.uniform(0.5, 5) if rng.random() < 0.3 else 0.0


async def history_reader(client: httpx.AsyncClient, tokens: dict[str, str], rng: random.Random,
                         stop: asyncio.Event, done: Counter[str], errors: list[str]) -> None:
    """Page through a random user's history and mark some of it read, until ``stop``."""
    while not stop.is_set():
        user = rng.choice(list(tokens))
        auth = {"Authorization": f"Bearer {tokens[user]}"}
        params: dict[str, str | int] = {"limit": rng.choice((1, 10, 50, 200))}
        if rng.random() < 0.3:
            params["unread"] = rng.choice(("true", "false"))
        page_ids: list[int] = []
        for _ in range(rng.randint(1, 3)):
            resp = await client.get("/notifications", params=params, headers=auth)
            done["history_reads"] += 1
            if resp.status_code != 200:
                errors.append(f"history {params}: {resp.status_code} {resp.text[:200]}")
                break
            page = resp.json()
            ids = [n["id"] for n in page["notifications"]]
            if ids != sorted(ids, reverse=True) or any(n["user"] not in (None, user) for n in page["notifications"]):
                errors.append(f"history {params} for {user}: {page['notifications'][:3]}")
            page_ids += ids
            if page["next_before"] is None:
                break
            params["before"] = page["next_before"]
        if page_ids and rng.random() < 0.5:
            choice = rng.random()
            if choice < 0.6:
                resp = await client.post(f"/notifications/{rng.choice(page_ids)}/read", headers=auth)
                ok = resp.status_code == 204
            elif choice < 0.95:
                body = {"ids": rng.sample(page_ids, min(5, len(page_ids)))}
                resp = await client.post("/notifications/read", json=body, headers=auth)
                ok = resp.status_code == 200
            else:
                resp = await client.post("/notifications/read", json={"all": True}, headers=auth)
                ok = resp.status_code == 200
            done["marks"] += 1
            if not ok:
                errors.append(f"mark read: {resp.status_code} {resp.text[:200]}")
        try:  # a reader's think time
            await asyncio.wait_for(stop.wait(), rng.uniform(0.05, 0.3))
        except TimeoutError:
            pass


def slope_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, bytes) samples, in MB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60 / MB


@pytest.mark.fault(short=None, long=1500)
async def test_ten_minutes_of_mixed_load_without_errors_or_memory_growth(
        make_server: Callable[..., ServerProcess], figures: Callable[..., str]) -> None:
    form = LONG
    rng = random.Random()
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log")
    pid = server.proc.pid  # type: ignore[union-attr]
    users = [f"soak-{i}" for i in range(form.users)]
    tokens = {u: server.token(u, ttl=3 * 3600) for u in users}
    subscribers = [
        Subscriber(Spec(users[k % form.users], *TRANSPORTS[k % len(TRANSPORTS)],
                        frozenset({"a"}) if k % 5 == 4 else None),
                   server.port, tokens.__getitem__, random.Random(rng.random()), session_length, time_away)
        for k in range(form.subscribers)
    ]
    ledger, done, errors = Ledger(), Counter[str](), []
    stop = asyncio.Event()
    samples: list[tuple[float, int]] = []
    fds_start = fd_count(pid)
    started = time.monotonic()
    readers = [asyncio.create_task(s.run()) for s in subscribers]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            workers = [asyncio.create_task(publish_loop(
                client, server.publisher_token(f"soak-{i}"), ledger, stop, random.Random(rng.random()),
                users, topics=TOPICS, rate=form.rate)) for i in range(form.publishers)]
            workers += [asyncio.create_task(history_reader(
                client, tokens, random.Random(rng.random()), stop, done, errors)) for _ in range(form.readers)]
            while (elapsed := time.monotonic() - started) < form.minutes * 60:
                samples.append((elapsed, rss_bytes(pid)))
                failed = [t for t in readers + workers if t.done()]
                if failed:  # a task that ended early failed: report it now
                    failed[0].result()
                    raise AssertionError("a soak task ended early")
                await asyncio.sleep(5)  # the sampling interval
            stop.set()
            await asyncio.gather(*workers)
        for s in subscribers:
            ids = ledger.expected(s.spec.user, s.spec.topics)
            s.finish(ids[-1] if ids else 0)
        await asyncio.gather(*readers)
    finally:
        stop.set()
        for task in readers:
            task.cancel()

    after_warmup = [(t, v) for t, v in samples if t >= form.warmup_minutes * 60]
    missing = sum(len(s.missing(ledger.expected(s.spec.user, s.spec.topics))) for s in subscribers)
    anomalies = [f"{s.spec.name}: {a}" for s in subscribers for a in s.anomalies]
    growth = slope_per_minute(after_warmup)
    figures("soak", minutes=form.minutes, published=len(ledger.sent),
            received=sum(s.received for s in subscribers),
            sessions=sum(s.sessions for s in subscribers), history_reads=done["history_reads"],
            marks=done["marks"], errors=len(errors) + len(ledger.errors) + len(anomalies),
            missing=missing, duplicated=sum(s.duplicates for s in subscribers),
            out_of_order=sum(s.out_of_order for s in subscribers),
            misaddressed=sum(s.misaddressed for s in subscribers),
            rss_mb_after_warmup=after_warmup[0][1] / MB, rss_mb_end=samples[-1][1] / MB,
            rss_growth_mb_per_min=growth, fds_start=fds_start, fds_end=fd_count(pid))
    assert not errors and not ledger.errors, (errors + ledger.errors)[:20]
    assert not anomalies, anomalies[:20]
    assert missing == 0 and not any(s.duplicates or s.out_of_order or s.misaddressed for s in subscribers)
    assert growth < 1.0, f"RSS grew {growth:.2f} MB a minute after the warm-up"
