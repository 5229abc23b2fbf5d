"""Scenario 1, crash: SIGKILL the server while 20 publishers POST as fast as they can,
restart it on the same data directory, again and again; then replay every user's feed
from cursor 0.

A 201 is sent only after the commit, so every id a publisher was answered 201 for must be
replayable, with the content it was published with, to every user it was addressed to
(all of them for a broadcast): zero lost acknowledged notifications. A notification whose
201 was still in flight when the process died may be committed without its publisher
ever hearing so: such ids are counted (``unacked_replayable``), not treated as errors.
Each replay must also be in increasing id order without duplicates, and an id must never
be handed out twice across restarts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from ..helpers import ServerProcess
from .support import RawSSE, random_target, run_seed

USERS = [f"crash-{i}" for i in range(5)]
PUBLISHERS = 20


@dataclass(frozen=True)
class Form:
    kills: int
    acks_before_kill: tuple[int, int]  # a kill comes after this many 201'd ids (random in range)


SHORT = Form(kills=5, acks_before_kill=(50, 400))
LONG = Form(kills=25, acks_before_kill=(200, 5000))


@dataclass(frozen=True)
class Acked:
    user: str | None
    mark: tuple[int, int]  # (publisher, sequence): what its data carried


class Publishers:
    """20 publishers posting as fast as answers come, until the server dies under them."""

    def __init__(self, seed: int):
        self.acked: dict[int, Acked] = {}
        self.answers_201 = 0
        self.other_answers: list[str] = []
        self.reused: list[int] = []
        self.seq = [0] * PUBLISHERS
        self.rngs = [random.Random(seed + i) for i in range(PUBLISHERS)]

    async def run_until_killed(self, server: ServerProcess, kill_after: int) -> None:
        token = server.publisher_token("crash")
        reached = asyncio.Event()
        start = len(self.acked)

        async def publisher(i: int) -> None:
            rng = self.rngs[i]
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
                while True:
                    target, recipients = random_target(rng, USERS, broadcast=0.05)
                    mark = (i, self.seq[i])
                    self.seq[i] += 1
                    body = {**target, "title": "crash", "data": {"m": list(mark)}}
                    try:
                        resp = await client.post("/notifications", content=orjson.dumps(body),
                                                 headers=headers)
                    except httpx.TransportError as exc:
                        self.last_error = exc
                        return  # the server died
                    if resp.status_code != 201:
                        self.other_answers.append(f"{resp.status_code} {resp.text[:200]}")
                        continue
                    self.answers_201 += 1
                    for nid, user in zip(resp.json()["ids"], recipients, strict=True):
                        if nid in self.acked:
                            self.reused.append(nid)
                        self.acked[nid] = Acked(user, mark)
                    if len(self.acked) - start >= kill_after:
                        reached.set()

        tasks = [asyncio.create_task(publisher(i)) for i in range(PUBLISHERS)]
        try:
            waiter = asyncio.create_task(reached.wait())
            done, _ = await asyncio.wait([waiter, *tasks], timeout=60,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            for task in done:
                if task is not waiter:
                    task.result()  # a publisher that stopped on its own: say why
                    raise AssertionError(f"a publisher stopped before the kill: {self.last_error!r}")
            assert reached.is_set(), f"only {len(self.acked) - start} ids acknowledged in 60 s"
            # A random moment inside the publishing, not a synchronisation.
            await asyncio.sleep(random.uniform(0, 0.05))
            server.kill()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            for task in tasks:
                task.cancel()


async def replay_from_zero(server: ServerProcess, user: str) -> list[dict[str, Any]]:
    """Every notification ``user`` gets with ``last_event_id=0``, through ``hello.newest_id``."""
    stream = await RawSSE.open(server.port, f"/events?token={server.token(user)}&last_event_id=0")
    try:
        assert stream.status == 200, stream.status
        async with asyncio.timeout(120):
            hello = await stream.next_event()
            assert hello is not None and hello.event == "hello", hello
            newest = hello.json()["newest_id"]
            out: list[dict[str, Any]] = []
            last = 0
            while last < newest:
                event = await stream.next_event()
                assert event is not None, f"replay for {user} ended at {last}, before {newest}"
                if event.event == "notification":
                    out.append(event.json())
                    last = out[-1]["id"]
        return out
    finally:
        stream.abort()


@pytest.mark.fault(short=90, long=900)
async def test_no_acknowledged_notification_is_lost_to_sigkill(
        make_server: Callable[..., ServerProcess], long_mode: bool, figures: Callable[..., str]) -> None:
    form = LONG if long_mode else SHORT
    seed = run_seed()
    rng = random.Random(seed)
    publishers = Publishers(seed)
    server = make_server("--no-access-log")
    for kill in range(form.kills):
        if kill:
            server.start()  # same data directory, same port
        await publishers.run_until_killed(server, rng.randint(*form.acks_before_kill))
    server.start()

    replayed = {user: await replay_from_zero(server, user) for user in USERS}
    disorder = sum(1 for feed in replayed.values() for a, b in zip(feed, feed[1:]) if b["id"] <= a["id"])
    stored: dict[int, tuple[str | None, tuple[int, int]]] = {}
    seen_by: dict[int, set[str]] = {}
    for user, feed in replayed.items():
        for n in feed:
            stored[n["id"]] = (n["user"], tuple(n["data"]["m"]))
            seen_by.setdefault(n["id"], set()).add(user)
    lost, corrupted = [], []
    for nid, acked in publishers.acked.items():
        must_see = set(USERS) if acked.user is None else {acked.user}
        if nid not in stored or not must_see <= seen_by[nid]:
            lost.append(nid)
        elif stored[nid] != (acked.user, acked.mark):
            corrupted.append(nid)
    unacked = sorted(set(stored) - set(publishers.acked))

    figures("crash", kills=form.kills, answers_201=publishers.answers_201,
            acked_ids=len(publishers.acked), replayable_ids=len(stored), lost=len(lost),
            unacked_replayable=len(unacked), corrupted=len(corrupted),
            reused_ids=len(publishers.reused), disorder=disorder,
            other_answers=len(publishers.other_answers), seed=seed)
    assert not lost, f"[seed {seed}] acknowledged but not replayable: {lost[:20]} ({len(lost)})"
    assert not corrupted, f"[seed {seed}] replayed with other content: {corrupted[:20]}"
    assert not publishers.reused, f"[seed {seed}] ids handed out twice: {publishers.reused[:20]}"
    assert disorder == 0, f"[seed {seed}] a replay went backwards or repeated an id"
    assert not publishers.other_answers, publishers.other_answers[:5]
    assert len(publishers.acked) >= form.kills * form.acks_before_kill[0]  # it really published
