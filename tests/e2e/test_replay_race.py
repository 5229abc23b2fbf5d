"""No gap, no duplicate, in order — while publishes race with reconnects.

Several publisher tasks publish continuously (to one user, to several, broadcasts; some with
topics) while subscriber tasks (SSE and WebSocket, cursor in ``Last-Event-ID``, in
``?last_event_id=`` and in the WebSocket auth frame, with and without ``topics``) drop
their connection at random moments — before the response head, during ``hello``, during
the replay, while live — sometimes stay away a while, and reconnect with the id of the last
notification they fully received. At the end every subscriber must have received exactly
the ids that were answered 201 and are visible to it, each once, in increasing order.

The variant with ``--stream-buffer 16`` and many concurrent publishers makes commit
batches larger than a stream's buffer, so streams overflow both while replaying (the
replay loop must re-read what it dropped) and while live (the server closes them and the
client resumes from its cursor).

Set ``RACE_SEED`` to replay one run's random choices (the seed is in every failure message;
the interleaving with the server is not reproducible, of course).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ..helpers import ServerProcess, SSEStream
from .wsclient import WS_SERVER_FLAGS, Publisher, metrics

pytestmark = pytest.mark.timeout(90)

PUBLISH_SECONDS = 6.0
CATCH_UP_TIMEOUT = 30.0
TOPICS = (None, "a", "b")


@dataclass(frozen=True)
class Published:
    id: int
    user: str | None  # None: broadcast
    topic: str | None


@dataclass(frozen=True)
class Spec:
    name: str
    user: str
    transport: str  # "sse" | "ws"
    cursor_in: str  # "header" | "query" | "frame"
    topics: frozenset[str] | None = None


SUBSCRIBERS = [
    Spec("sse/Last-Event-ID", "alice", "sse", "header"),
    Spec("sse/query+topics=a,b", "alice", "sse", "query", frozenset({"a", "b"})),
    Spec("ws/query", "alice", "ws", "query"),
    Spec("ws/auth-frame", "bob", "ws", "frame"),
    Spec("sse/bob+topics=a", "bob", "sse", "header", frozenset({"a"})),
    Spec("ws/query+topics=b", "alice", "ws", "query", frozenset({"b"})),
]


@dataclass
class Subscriber:
    spec: Spec
    server: ServerProcess
    rng: random.Random
    seed: int
    seen: list[int] = field(default_factory=list)
    last: int = 0  # the cursor: the last notification fully received (0 = from the start)
    target: int | None = None  # set when publishing stopped: the newest id it must reach
    sessions: int = 0
    server_closes: int = 0
    anomalies: list[str] = field(default_factory=list)

    def sees(self, p: Published) -> bool:
        spec = self.spec
        return p.user in (None, spec.user) and (spec.topics is None or p.topic in spec.topics)

    def done(self) -> bool:
        return self.target is not None and self.last >= self.target

    def accept(self, payload: dict[str, object]) -> None:
        nid = payload["id"]
        assert isinstance(nid, int)
        if payload["user"] not in (None, self.spec.user):
            self.anomalies.append(f"{nid} is addressed to {payload['user']!r}")
        if self.spec.topics is not None and payload["topic"] not in self.spec.topics:
            self.anomalies.append(f"{nid} has topic {payload['topic']!r}")
        self.seen.append(nid)
        self.last = nid

    def check_hello(self, hello: dict[str, object]) -> None:
        if hello.get("replay") != "resumed" or hello.get("user") != self.spec.user:
            self.anomalies.append(f"hello {hello} with cursor {self.last}")

    async def run(self, client: httpx.AsyncClient) -> None:
        rng = self.rng
        while not self.done():
            final = self.target is not None
            if final:
                limit = CATCH_UP_TIMEOUT
            else:  # drop early (connect, hello, replay) or after a while (live)
                limit = rng.uniform(0, 0.03) if rng.random() < 0.3 else rng.uniform(0.03, 0.5)
            try:
                async with asyncio.timeout(limit) as scope:
                    if self.spec.transport == "sse":
                        await self._sse(client)
                    else:
                        await self._ws()
            except TimeoutError:
                if not scope.expired():
                    raise
                if final:
                    raise AssertionError(
                        f"[seed {self.seed}] {self.spec.name} never caught up: at {self.last}, "
                        f"target {self.target}") from None
            self.sessions += 1
            if not final and rng.random() < 0.2:
                await asyncio.sleep(rng.uniform(0.05, 0.5))  # offline a while: a longer replay

    async def _sse(self, client: httpx.AsyncClient) -> None:
        spec = self.spec
        params = [f"token={self.server.token(spec.user)}"]
        headers = {}
        if spec.topics is not None:
            params.append("topics=" + ",".join(sorted(spec.topics)))
        if spec.cursor_in == "header":
            headers["Last-Event-ID"] = str(self.last)
        else:
            params.append(f"last_event_id={self.last}")
        async with client.stream("GET", "/events?" + "&".join(params), headers=headers,
                                 timeout=httpx.Timeout(10.0, read=None)) as resp:
            assert resp.status_code == 200, resp.status_code
            stream = SSEStream(resp)
            try:
                self.check_hello((await stream.next_of("hello", timeout=60)).json())
                while not self.done():
                    event = await stream.next(timeout=60)
                    if event.event == "notification":
                        payload = event.json()
                        if event.id != str(payload["id"]):
                            self.anomalies.append(f"id line {event.id!r} for {payload['id']}")
                        self.accept(payload)
                    elif event.event != "read":
                        self.anomalies.append(f"unexpected event {event.event!r}")
            except EOFError:  # the server ended the response (overflow)
                self.server_closes += 1

    async def _ws(self) -> None:
        spec = self.spec
        url = self.server.ws_url
        token = self.server.token(spec.user)
        params = []
        if spec.topics is not None:
            params.append("topics=" + ",".join(sorted(spec.topics)))
        if spec.cursor_in == "query":
            params += [f"token={token}", f"last_event_id={self.last}"]
        if params:
            url += "?" + "&".join(params)
        async with connect(url, open_timeout=10, close_timeout=1, max_size=None) as ws:
            try:
                if spec.cursor_in == "frame":
                    await ws.send(orjson.dumps({"type": "auth", "token": token,
                                                "last_event_id": self.last}).decode())
                hello = orjson.loads(await ws.recv())
                if hello.pop("type", None) != "auth_success":
                    self.anomalies.append(f"first frame {hello}")
                self.check_hello(hello)
                while not self.done():
                    frame = orjson.loads(await ws.recv())
                    if frame["type"] == "notification":
                        self.accept(frame)
                    elif frame["type"] != "read":
                        self.anomalies.append(f"unexpected frame {frame}")
            except ConnectionClosed as closed:  # the server closed it (overflow: 1013)
                self.server_closes += 1
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code != 1013:
                    self.anomalies.append(f"closed by the server with {code}")
            except asyncio.CancelledError:
                if self.rng.random() < 0.5:
                    ws.transport.abort()  # vanish without a close handshake
                raise

    def verdict(self, expected: list[int]) -> str | None:
        if self.seen == expected and not self.anomalies:
            return None
        seen = set(self.seen)
        missing = sorted(set(expected) - seen)
        extra = sorted(seen - set(expected))
        dups = sorted({i for i in self.seen if self.seen.count(i) > 1})
        disorder = [(a, b) for a, b in zip(self.seen, self.seen[1:]) if b <= a]
        return (f"{self.spec.name}: missing {missing[:20]} ({len(missing)}), extra {extra[:20]}, "
                f"duplicates {dups[:20]}, out of order {disorder[:10]}, "
                f"anomalies {self.anomalies[:10]}")


async def _publisher(server: ServerProcess, rng: random.Random, stop: asyncio.Event,
                     out: list[Published]) -> None:
    async with server.client() as client:
        publish = Publisher(server, client)
        while not stop.is_set():
            topic = rng.choice(TOPICS)
            body: dict[str, object] = {"title": "race", "data": {"n": len(out)}}
            if topic is not None:
                body["topic"] = topic
            r = rng.random()
            targets: list[str | None]
            if r < 0.3:
                targets = ["alice"]
                body["user"] = "alice"
            elif r < 0.5:
                targets = ["bob"]
                body["user"] = "bob"
            elif r < 0.7:
                targets = rng.sample(["alice", "bob", "carol"], 3)
                body["users"] = targets
            else:
                targets = [None]
                body["broadcast"] = True
            ids = await publish(**body)  # asserts 201
            assert len(ids) == len(targets)
            out.extend(Published(i, t, topic) for i, t in zip(ids, targets))


async def _race(server: ServerProcess, publishers: int) -> list[Subscriber]:
    seed = int(os.environ.get("RACE_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    subscribers = [Subscriber(spec, server, random.Random(rng.random()), seed) for spec in SUBSCRIBERS]
    published: list[Published] = []
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        readers = [asyncio.create_task(s.run(client)) for s in subscribers]
        writers = [asyncio.create_task(_publisher(server, random.Random(rng.random()), stop, published))
                   for _ in range(publishers)]
        # The test's length (not a synchronisation): publish and churn for a while.
        done, _ = await asyncio.wait(readers + writers, timeout=PUBLISH_SECONDS,
                                     return_when=asyncio.FIRST_EXCEPTION)
        stop.set()
        for task in done:  # a reader or writer that failed early: report it now
            task.result()
        await asyncio.gather(*writers)
        assert len(published) == len({p.id for p in published}), "an id was issued twice"
        expected = {}
        for s in subscribers:
            expected[s.spec.name] = sorted(p.id for p in published if s.sees(p))
            s.target = expected[s.spec.name][-1] if expected[s.spec.name] else 0
        await asyncio.gather(*readers)

    problems = [v for s in subscribers if (v := s.verdict(expected[s.spec.name])) is not None]
    assert not problems, f"[seed {seed}, {len(published)} published]\n" + "\n".join(problems)
    for s in subscribers:  # the run really churned
        assert s.sessions >= 8, (s.spec.name, s.sessions)
        assert len(expected[s.spec.name]) >= 50, (s.spec.name, len(expected[s.spec.name]))
    print(f"\nseed {seed}: {len(published)} published; "
          + ", ".join(f"{s.spec.name}: {len(s.seen)} in {s.sessions} sessions"
                      f" ({s.server_closes} closed by server)" for s in subscribers))
    return subscribers


async def test_no_gap_no_duplicate_while_reconnecting(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log")
    await _race(server, publishers=4)
    values = await metrics(server)
    assert values["sse_notify_events_replayed_total"] > 0


async def test_no_gap_no_duplicate_with_overflowing_buffers(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log", "--stream-buffer", "16")
    subscribers = await _race(server, publishers=24)
    values = await metrics(server)
    assert values["sse_notify_events_replayed_total"] > 0
    # Every close the clients saw as "by the server" was an overflow the server counted.
    assert values["sse_notify_slow_consumer_disconnects_total"] >= sum(s.server_closes for s in subscribers)
