"""Scenario 8, several nodes: three ``sse-notify serve`` processes share one PostgreSQL
database (a fresh one per test). Publishers post to every node while subscribers (SSE and
WebSocket, cursors in every carrier, some with topics) drop and reconnect to a random node.

* ``race``: the replay race across nodes, with the default PostgreSQL broker.
* ``redis``: the same with ``--broker redis://`` (at-most-once; the follower makes up for it).
* ``kill``: halfway through, one node is SIGKILLed while its publisher and subscribers are
  busy. Its subscribers reconnect to the other nodes and resume from their cursors; a publish
  in flight on it may have committed without an answer, so a subscriber may receive an id no
  201 named (never one meant for someone else).

Every subscriber must end with exactly the acknowledged notifications visible to it: none
missing, none twice, none out of order.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from ..e2e.wsclient import WS_SERVER_FLAGS
from ..helpers import ServerProcess
from .support import Ledger, Spec, Subscriber, publish_loop, run_seed

NODES = 3
TOPICS = (None, "a", "b")
TRANSPORTS = [("sse", "header"), ("sse", "query"), ("ws", "query"), ("ws", "frame")]
TOPIC_FILTERS = [None, None, frozenset({"a"}), None, frozenset({"a", "b"})]


@dataclass(frozen=True)
class Form:
    subscribers: int
    users: int
    seconds: float
    rate: float  # publishes per second per node


FORMS = {False: Form(subscribers=15, users=5, seconds=8, rate=25),
         True: Form(subscribers=150, users=40, seconds=60, rate=40)}


def session_length(rng: random.Random) -> float:
    return rng.uniform(0, 0.05) if rng.random() < 0.25 else rng.uniform(0.2, 2.5)


def start_cluster(make_server: Callable[..., ServerProcess], store: str, *flags: str) -> list[ServerProcess]:
    env = {"SSE_NOTIFY_SECRET": secrets.token_urlsafe(32)}
    return [make_server("--store", store, "--no-access-log", *WS_SERVER_FLAGS, *flags, env=env)
            for _ in range(NODES)]


@pytest.mark.fault(short=120, long=600)
@pytest.mark.parametrize("variant", ["race", "redis", "kill"])
async def test_no_gap_no_duplicate_across_nodes(
        make_server: Callable[..., ServerProcess], postgres_url: str, redis_url: str,
        long_mode: bool, figures: Callable[..., str], variant: str) -> None:
    form = FORMS[long_mode]
    seed = run_seed()
    rng = random.Random(seed)
    flags = ("--broker", redis_url) if variant == "redis" else ()
    nodes = start_cluster(make_server, postgres_url, *flags)
    alive = list(nodes)
    victim = nodes[1] if variant == "kill" else None
    users = [f"node-{i}" for i in range(form.users)]
    tokens = {user: nodes[0].token(user) for user in users}
    subscribers = [
        Subscriber(Spec(users[k % form.users], *TRANSPORTS[k % len(TRANSPORTS)],
                        TOPIC_FILTERS[k % len(TOPIC_FILTERS)]),
                   nodes[k % NODES].port, tokens.__getitem__, random.Random(rng.random()),
                   session_length, ports=lambda: [n.port for n in alive],
                   tolerate_drops=victim is not None)
        for k in range(form.subscribers)
    ]
    ledgers = [Ledger() for _ in nodes]
    stops = [asyncio.Event() for _ in nodes]
    readers = [asyncio.create_task(s.run()) for s in subscribers]
    clients = [httpx.AsyncClient(base_url=n.url, timeout=30.0) for n in nodes]
    try:
        writers = [asyncio.create_task(publish_loop(
            client, nodes[0].publisher_token(f"pub-{i}"), ledger, stop, random.Random(rng.random()),
            users, topics=TOPICS, rate=form.rate))
            for i, (client, ledger, stop) in enumerate(zip(clients, ledgers, stops))]
        if victim is not None:
            # The scenario's timeline, not a synchronisation: run, kill one node, run on.
            await asyncio.sleep(form.seconds / 2)
            alive.remove(victim)
            await asyncio.to_thread(victim.kill)
            stops[1].set()
            await asyncio.sleep(form.seconds / 2)
        else:
            await asyncio.sleep(form.seconds)
        for stop in stops:
            stop.set()
        await asyncio.gather(*writers)
        acknowledged, expected = await finish(subscribers, readers, ledgers)
    finally:
        await stop_all(readers, clients)

    acked = {s.id for s in acknowledged.sent}
    missing = [s.missing(ids) for s, ids in zip(subscribers, expected)]
    # Ids no 201 named: only a killed node's unanswered publishes may have produced them.
    unexpected = [sorted(i for i in s.seen - set(ids) if victim is None or i in acked)
                  for s, ids in zip(subscribers, expected)]
    anomalies = [f"{s.spec.name}: {a}" for s in subscribers for a in s.anomalies]
    figures(f"cluster-{variant}", nodes=NODES, subscribers=form.subscribers, seconds=form.seconds,
            published=len(acknowledged.sent), expected=sum(map(len, expected)),
            received=sum(s.received for s in subscribers), sessions=sum(s.sessions for s in subscribers),
            dropped=sum(s.dropped for s in subscribers),
            server_closes=sum(s.server_closes for s in subscribers), missing=sum(map(len, missing)),
            duplicated=sum(s.duplicates for s in subscribers),
            out_of_order=sum(s.out_of_order for s in subscribers),
            misaddressed=sum(s.misaddressed for s in subscribers), seed=seed)
    problems = [f"{s.spec.name}: missing {gone[:10]} ({len(gone)}), not meant for it {extra[:10]}"
                for s, gone, extra in zip(subscribers, missing, unexpected) if gone or extra]
    problems += [f"{s.spec.name}: {s.duplicates} duplicated, {s.out_of_order} out of order, "
                 f"{s.misaddressed} misaddressed" for s in subscribers
                 if s.duplicates or s.out_of_order or s.misaddressed]
    assert not problems, f"[seed {seed}]\n" + "\n".join(problems[:40])
    assert not anomalies, f"[seed {seed}]\n" + "\n".join(anomalies[:40])
    survivors_errors = [e for i, ledger in enumerate(ledgers) if nodes[i] is not victim for e in ledger.errors]
    assert not survivors_errors, survivors_errors[:10]
    assert all(s.sessions >= 2 for s in subscribers), sorted(s.sessions for s in subscribers)[:5]
    # Every node really published (at least once a second; how fast is the benchmark's business).
    assert all(len(ledger.sent) >= form.seconds / 2 for ledger in ledgers), [len(l.sent) for l in ledgers]
    if victim is not None:
        # The kill really cut streams off: a WebSocket on the victim counts as dropped, an
        # SSE response cut short as ended by the server (the client cannot tell them apart).
        assert sum(s.dropped + s.server_closes for s in subscribers) > 0


async def finish(subscribers: list[Subscriber], readers: list[asyncio.Task[None]],
                 ledgers: list[Ledger]) -> tuple[Ledger, list[list[int]]]:
    """Publishing has stopped: give each subscriber the newest id meant for it and wait
    until all have it. Returns every node's acknowledged publishes and each one's ids."""
    acknowledged = Ledger()
    for ledger in ledgers:
        acknowledged.sent += ledger.sent
    expected = [acknowledged.expected(s.spec.user, s.spec.topics) for s in subscribers]
    for s, ids in zip(subscribers, expected):
        s.finish(ids[-1] if ids else 0)
    await asyncio.gather(*readers)
    return acknowledged, expected


async def stop_all(readers: list[asyncio.Task[None]], clients: list[httpx.AsyncClient]) -> None:
    for task in readers:
        task.cancel()
    for client in clients:
        await client.aclose()


def restart_postgresql() -> None:
    """Restart the machine's PostgreSQL (fast shutdown: every connection is cut)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
                   check=True, capture_output=True, timeout=60)


@pytest.mark.fault(short=120, long=300)
@pytest.mark.exclusive  # every test's PostgreSQL
async def test_postgresql_restart_under_load(
        make_server: Callable[..., ServerProcess], postgres_url: str, long_mode: bool,
        figures: Callable[..., str]) -> None:
    """Publishes answer 201 or 503 (never 500, never a hang), streams stay up, and once the
    database is back every acknowledged notification reaches every stream, in order."""
    seed = run_seed()
    rng = random.Random(seed)
    nodes = start_cluster(make_server, postgres_url)[:2]
    users = [f"pg-{i}" for i in range(4)]
    tokens = {user: nodes[0].token(user) for user in users}
    subscribers = [Subscriber(Spec(users[k % len(users)], *TRANSPORTS[k % len(TRANSPORTS)]),
                              nodes[k % 2].port, tokens.__getitem__, random.Random(rng.random()),
                              lambda _: 3600.0, catch_up=30.0)
                   for k in range(8)]
    ledgers = [Ledger() for _ in nodes]
    stop = asyncio.Event()
    readers = [asyncio.create_task(s.run()) for s in subscribers]
    clients = [httpx.AsyncClient(base_url=n.url, timeout=30.0) for n in nodes]
    try:
        writers = [asyncio.create_task(publish_loop(
            client, nodes[0].publisher_token(f"pub-{i}"), ledger, stop, random.Random(rng.random()),
            users, rate=20, tolerate=frozenset({503})))
            for i, (client, ledger) in enumerate(zip(clients, ledgers))]
        # The scenario's timeline: publish, restart the database under it, publish on.
        await asyncio.sleep(2)
        await asyncio.to_thread(restart_postgresql)
        await asyncio.sleep(6 if long_mode else 3)
        stop.set()
        await asyncio.gather(*writers)
        acknowledged, expected = await finish(subscribers, readers, ledgers)
    finally:
        await stop_all(readers, clients)

    refused = sum(ledger.refused.get(503, 0) for ledger in ledgers)
    slowest = max(ledger.slowest for ledger in ledgers)
    figures("postgresql-restart", published=len(acknowledged.sent), refused_503=refused,
            slowest_publish_s=round(slowest, 2),
            missing=sum(len(s.missing(ids)) for s, ids in zip(subscribers, expected)),
            duplicated=sum(s.duplicates for s in subscribers),
            out_of_order=sum(s.out_of_order for s in subscribers), seed=seed)
    errors = [e for ledger in ledgers for e in ledger.errors]
    assert not errors, errors[:10]  # every answer was a 201 or a 503
    assert slowest < 10.0, f"a publish waited {slowest:.1f} s"
    problems = [f"{s.spec.name}: missing {s.missing(ids)[:10]}, {s.duplicates} duplicated, "
                f"{s.out_of_order} out of order" for s, ids in zip(subscribers, expected)
                if s.missing(ids) or s.duplicates or s.out_of_order]
    assert not problems, f"[seed {seed}]\n" + "\n".join(problems)
    anomalies = [f"{s.spec.name}: {a}" for s in subscribers for a in s.anomalies]
    assert not anomalies, anomalies[:10]
    # The streams stayed up through it: each subscriber had exactly one session.
    assert [s.sessions for s in subscribers] == [1] * len(subscribers)
    assert all(len(ledger.sent) > 0 for ledger in ledgers)
