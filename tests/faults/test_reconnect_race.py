"""Scenario 2, replay race at scale: many subscribers (SSE and WebSocket; cursor in
``Last-Event-ID``, in ``?last_event_id=`` and in the WebSocket auth frame; some with
``topics``) drop their connection at random moments and reconnect with their cursor,
while publishing runs continuously.

When publishing stops, each subscriber stays connected until it has the newest id meant
for it; then every subscriber must have received exactly the 201'd notifications visible
to it (own and broadcast, filtered by its topics): none missing, none twice, none out of
order, none meant for someone else. The short form is the same with fewer subscribers
for a shorter time.

The ``overflow`` variant runs the server with ``--stream-buffer 16`` under publishers that
go as fast as they are answered, so commit batches are larger than a stream's buffer:
streams overflow while replaying (the replay must read again what it dropped) and while
live (the server closes them, and the client resumes from its cursor).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import pytest

from ..e2e.wsclient import WS_SERVER_FLAGS, metrics
from ..helpers import ServerProcess
from .support import Ledger, Spec, Subscriber, publish_loop, run_seed

TOPICS = (None, "a", "b")
TRANSPORTS = [("sse", "header"), ("sse", "query"), ("ws", "query"), ("ws", "frame")]
TOPIC_FILTERS = [None, None, None, frozenset({"a"}), None, frozenset({"a", "b"})]


@dataclass(frozen=True)
class Form:
    subscribers: int
    users: int
    seconds: float
    publishers: int
    rate: float | None  # publishes per second per publisher; None: as fast as answered
    stream_buffer: int | None = None  # the server's --stream-buffer; None: its default


#: variant -> (short form, long form)
FORMS = {
    "storm": (Form(subscribers=24, users=8, seconds=10, publishers=2, rate=40),
              Form(subscribers=200, users=50, seconds=60, publishers=4, rate=40)),
    "overflow": (Form(subscribers=8, users=3, seconds=6, publishers=24, rate=None, stream_buffer=16),
                 Form(subscribers=48, users=8, seconds=60, publishers=24, rate=None, stream_buffer=16)),
}


def session_length(rng: random.Random) -> float:
    """A quarter drop within 50 ms (before the head, in hello, in the replay), the rest live."""
    return rng.uniform(0, 0.05) if rng.random() < 0.25 else rng.uniform(0.2, 3.0)


def time_away(rng: random.Random) -> float:
    return rng.uniform(0.1, 1.5) if rng.random() < 0.2 else 0.0


@pytest.mark.fault(short=90, long=600)
@pytest.mark.parametrize("variant", FORMS)
async def test_no_gap_no_duplicate_no_disorder_under_reconnect_storm(
        make_server: Callable[..., ServerProcess], long_mode: bool, figures: Callable[..., str],
        variant: str) -> None:
    form = FORMS[variant][long_mode]
    seed = run_seed()
    rng = random.Random(seed)
    buffer = () if form.stream_buffer is None else ("--stream-buffer", str(form.stream_buffer))
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log", *buffer)
    users = [f"race-{i}" for i in range(form.users)]
    tokens = {user: server.token(user) for user in users}
    subscribers = [
        Subscriber(Spec(users[k % form.users], *TRANSPORTS[k % len(TRANSPORTS)],
                        TOPIC_FILTERS[k % len(TOPIC_FILTERS)]),
                   server.port, tokens.__getitem__, random.Random(rng.random()),
                   session_length, time_away)
        for k in range(form.subscribers)
    ]
    ledger = Ledger()
    stop = asyncio.Event()
    readers = [asyncio.create_task(s.run()) for s in subscribers]
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
            writers = [asyncio.create_task(publish_loop(
                client, server.publisher_token(f"race-{i}"), ledger, stop, random.Random(rng.random()),
                users, topics=TOPICS, rate=form.rate)) for i in range(form.publishers)]
            # The scenario's length, not a synchronisation: publish and churn this long --
            # and on a loaded machine, where sessions take longer, until every subscriber has
            # reconnected at least twice (checked four times a second, up to three lengths more).
            done, _ = await asyncio.wait(readers + writers, timeout=form.seconds,
                                         return_when=asyncio.FIRST_EXCEPTION)
            extra_until = time.monotonic() + 3 * form.seconds
            while not done and min(s.sessions for s in subscribers) < 3 and time.monotonic() < extra_until:
                done, _ = await asyncio.wait(readers + writers, timeout=0.25,
                                             return_when=asyncio.FIRST_EXCEPTION)
            stop.set()
            for task in done:  # a reader or writer that failed early: report it now
                task.result()
            await asyncio.gather(*writers)
        expected = [ledger.expected(s.spec.user, s.spec.topics) for s in subscribers]
        for s, ids in zip(subscribers, expected):
            s.finish(ids[-1] if ids else 0)
        await asyncio.gather(*readers)
    finally:
        for task in readers:
            task.cancel()

    missing = [s.missing(ids) for s, ids in zip(subscribers, expected)]
    unexpected = [sorted(s.seen - set(ids)) for s, ids in zip(subscribers, expected)]
    anomalies = [f"{s.spec.name}: {a}" for s in subscribers for a in s.anomalies]
    values = await metrics(server)
    replayed = values["sse_notify_events_replayed_total"]
    server_closes = sum(s.server_closes for s in subscribers)
    figures("replay-race" if variant == "storm" else f"replay-race-{variant}", subscribers=form.subscribers, seconds=form.seconds,
            published=len(ledger.sent), expected=sum(map(len, expected)),
            received=sum(s.received for s in subscribers),
            sessions=sum(s.sessions for s in subscribers),
            server_closes=server_closes, replayed=int(replayed),
            missing=sum(map(len, missing)),
            duplicated=sum(s.duplicates for s in subscribers),
            out_of_order=sum(s.out_of_order for s in subscribers),
            misaddressed=sum(s.misaddressed for s in subscribers), unexpected=sum(map(len, unexpected)),
            anomalies=len(anomalies), publish_errors=len(ledger.errors), seed=seed)
    problems = [f"{s.spec.name}: missing {gone[:10]} ({len(gone)}), not meant for it {extra[:10]}"
                for s, gone, extra in zip(subscribers, missing, unexpected) if gone or extra]
    problems += [f"{s.spec.name}: {s.duplicates} duplicated, {s.out_of_order} out of order, "
                 f"{s.misaddressed} misaddressed" for s in subscribers
                 if s.duplicates or s.out_of_order or s.misaddressed]
    assert not problems, f"[seed {seed}]\n" + "\n".join(problems[:40])
    assert not anomalies, f"[seed {seed}]\n" + "\n".join(anomalies[:40])
    assert not ledger.errors, ledger.errors[:10]
    # The run really raced: every subscriber reconnected, and streams resumed by replay.
    assert all(s.sessions >= 3 for s in subscribers), sorted(s.sessions for s in subscribers)[:5]
    assert replayed > 0
    if form.rate is not None:
        assert len(ledger.sent) >= form.seconds * form.publishers * form.rate / 4
    # Every close a client saw as "by the server" was an overflow the server counted.
    assert values["sse_notify_slow_consumer_disconnects_total"] >= server_closes
