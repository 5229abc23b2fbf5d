"""What the fault scenarios share: probes of the server process, a lean SSE client, the
checked subscriber that counts gaps, duplicates and disorder, and a paced publisher.

* :func:`rss_bytes`, :func:`fd_count`: the server's resident memory and open descriptors,
  read from ``/proc/<pid>``; :class:`MetricsProbe` scrapes ``/metrics`` over one kept
  connection. :func:`wait_until` polls a probe until it holds (for gauges and descriptor
  counts, which have no event to await).
* :class:`RawSSE`: ``GET /events`` over a bare asyncio connection (HTTP/1.1, chunked
  framing decoded by hand), so that hundreds of streams cost the test process little, a
  stream can be dropped with a reset or a clean close, and the receive buffer can be made
  small. It splits lines exactly as the SSE spec (and so ``EventSource``) does.
* :class:`Ledger` records every notification answered ``201``; :class:`Subscriber` is
  one client that drops its connection at random moments and resumes from its cursor,
  and counts what a gap-free, duplicate-free, ordered feed never shows.
* :func:`publish_loop`: one publisher task, optionally paced, recording into a ledger.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import orjson
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ..e2e.wsclient import scrape
from ..helpers import SSEEvent, read_field

__all__ = [
    "Ledger", "MetricsProbe", "RawSSE", "Sent", "Spec", "Subscriber", "fd_count", "format_figures",
    "percentile", "publish_loop", "rss_bytes", "run_seed", "wait_until",
]

T = TypeVar("T")
MB = 1024 * 1024


# -- the process under test ---------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_until(probe: Callable[[], T | Awaitable[T]], ok: Callable[[T], bool], *,
                     timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``probe`` (sync or async) until ``ok`` holds; AssertionError naming ``what``
    and the last value after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value!r} after {timeout} s")
        await asyncio.sleep(interval)


class MetricsProbe:
    """``/metrics`` as {'name{labels}': value}, over one kept-alive connection: a client per
    scrape (as ``tests.e2e.wsclient.metrics`` opens) would leave the server a closed
    keep-alive socket per scrape for its keep-alive timeout, and skew descriptor counts."""

    def __init__(self, url: str):
        self.client = httpx.AsyncClient(base_url=url, timeout=30.0)

    async def __call__(self) -> dict[str, float]:
        return await scrape(self.client)

    async def aclose(self) -> None:
        await self.client.aclose()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100); nan without values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, -(-int(q * len(ordered)) // 100) - 1))
    return ordered[rank]


def run_seed() -> int:
    """The seed of this run's random choices: ``FAULTS_SEED`` to replay a run, else fresh.
    Every scenario reports it in its figures (the interleaving with the server is, of
    course, not reproducible)."""
    return int(os.environ.get("FAULTS_SEED", time.time_ns() % 2**32))


def format_figures(scenario: str, values: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return f"FIGURES {scenario} " + " ".join(f"{k}={show(v)}" for k, v in values.items())


# -- a lean SSE client ----------------------------------------------------------------------

class RawSSE:
    """One ``GET /events`` on its own socket. :meth:`open` sends the request and reads the
    response head; :meth:`next_event` returns the next dispatched event, or None when the
    server ended the response or the connection. Lines end where the SSE spec says (CRLF,
    CR or LF) and nowhere else: unlike ``httpx``'s ``iter_lines``, not at U+2028 and
    the other Unicode line breaks, which JSON carries unescaped."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, headers: dict[str, str]):
        self.reader, self.writer = reader, writer
        self.status, self.headers = status, headers
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left = int(length) if length is not None else None
        self._buf = b""
        self._pending_cr = b""
        self.retry: int | None = None
        self.comments = 0

    @classmethod
    async def open(cls, port: int, target: str, headers: dict[str, str] | None = None, *,
                   rcvbuf: int | None = None, timeout: float = 10.0) -> RawSSE:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect, so the advertised window is small too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
                reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        except BaseException:
            sock.close()
            raise
        try:
            lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                     "Accept: text/event-stream"]
            lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            async with asyncio.timeout(timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.transport.abort()
            raise
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parsed = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
        return cls(reader, writer, int(status_line.split()[1]), parsed)

    async def _more(self) -> bytes:
        """The next piece of the body; b"" at its end (or when the connection broke)."""
        try:
            if self._chunked:
                size = int((await self.reader.readline()).split(b";")[0] or b"0", 16)
                if size == 0:
                    return b""
                return (await self.reader.readexactly(size + 2))[:-2]
            if self._left is not None:
                if self._left <= 0:
                    return b""
                data = await self.reader.read(self._left)
                self._left -= len(data)
                return data
            return await self.reader.read(65536)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return b""

    async def body(self) -> bytes:
        """The rest of the body (for error answers)."""
        parts = []
        while piece := await self._more():
            parts.append(piece)
        return b"".join(parts)

    async def next_event(self) -> SSEEvent | None:
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                more = await self._more()
                if not more:
                    return None
                self._feed(more)
                continue
            block, self._buf = self._buf[:end], self._buf[end + 2:]
            event = SSEEvent()
            dispatch = False
            for line in block.split(b"\n"):
                if line.startswith(b":"):
                    self.comments += 1
                    continue
                dispatch = read_field(event, line.decode(), dispatch)
                if event.retry is not None:
                    self.retry = event.retry
            if dispatch:
                return event

    def _feed(self, data: bytes) -> None:
        """Append body bytes with every line end (CRLF, CR, LF: the SSE spec's, and no
        others) as LF; a CR at the end waits for the next piece, which may start with LF."""
        data = self._pending_cr + data
        self._pending_cr = b"\r" if data.endswith(b"\r") else b""
        if self._pending_cr:
            data = data[:-1]
        self._buf += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def abort(self) -> None:
        """Drop the connection with a reset, no goodbye."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


# -- what was published, and who must see it -------------------------------------------------

@dataclass(frozen=True, slots=True)
class Sent:
    """A notification answered 201: its id, recipient (None: broadcast) and topic."""

    id: int
    user: str | None
    topic: str | None


class Ledger:
    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.errors: list[str] = []
        self.refused: dict[int, int] = {}  # tolerated statuses -> how many
        self.slowest = 0.0  # seconds, the longest a publish waited for its answer

    def record(self, ids: Sequence[int], targets: Sequence[str | None], topic: str | None) -> None:
        if len(ids) != len(targets):
            self.errors.append(f"{len(targets)} targets answered with ids {ids}")
        self.sent.extend(Sent(i, t, topic) for i, t in zip(ids, targets))

    def expected(self, user: str, topics: frozenset[str] | None) -> list[int]:
        return sorted(s.id for s in self.sent
                      if s.user in (None, user) and (topics is None or s.topic in topics))


def random_target(rng: random.Random, users: Sequence[str], *, broadcast: float = 0.03,
                  multi: float = 0.2) -> tuple[dict[str, Any], list[str | None]]:
    """A publish body's target and the recipients it stands for."""
    r = rng.random()
    if r < broadcast:
        return {"broadcast": True}, [None]
    if r < broadcast + multi:
        chosen = rng.sample(list(users), min(3, len(users)))
        return {"users": chosen}, list(chosen)
    user = rng.choice(users)
    return {"user": user}, [user]


async def publish_loop(client: httpx.AsyncClient, token: str, ledger: Ledger, stop: asyncio.Event,
                       rng: random.Random, users: Sequence[str], *,
                       topics: Sequence[str | None] = (None,), rate: float | None = None,
                       broadcast: float = 0.03, tolerate: frozenset[int] = frozenset()) -> int:
    """Publish until ``stop``, ``rate`` per second (None: as fast as answers come); every
    answer other than 201 (or a ``tolerate``d status, counted apart) is an error in the
    ledger. Returns how many were sent."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    sent = 0
    next_at = time.monotonic()
    while not stop.is_set():
        target, recipients = random_target(rng, users, broadcast=broadcast)
        topic = rng.choice(topics)
        body = {**target, "title": "fault", "data": {"n": sent}}
        if topic is not None:
            body["topic"] = topic
        began = time.monotonic()
        try:
            resp = await client.post("/notifications", content=orjson.dumps(body), headers=headers)
        except httpx.HTTPError as exc:
            ledger.errors.append(f"publish: {exc!r}")
            continue
        finally:
            ledger.slowest = max(ledger.slowest, time.monotonic() - began)
        sent += 1
        if resp.status_code == 201:
            ledger.record(resp.json()["ids"], recipients, topic)
        elif resp.status_code in tolerate:
            ledger.refused[resp.status_code] = ledger.refused.get(resp.status_code, 0) + 1
        else:
            ledger.errors.append(f"publish answered {resp.status_code}: {resp.text[:200]}")
        if rate is not None:
            next_at += 1 / rate
            delay = next_at - time.monotonic()
            if delay > 0:  # pacing, not synchronisation
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
            else:
                next_at = time.monotonic()
    return sent


# -- the checked subscriber ---------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    """Which user a subscriber is, over which transport, where its cursor travels
    (``header``: Last-Event-ID; ``query``: ?last_event_id; ``frame``: the WebSocket auth
    frame) and which topics it asked for (None: all)."""

    user: str
    transport: str
    cursor_in: str
    topics: frozenset[str] | None = None

    @property
    def name(self) -> str:
        topics = "" if self.topics is None else "+topics=" + ",".join(sorted(self.topics))
        return f"{self.transport}/{self.cursor_in}/{self.user}{topics}"


@dataclass
class Subscriber:
    """A client that keeps resuming from its cursor (the last notification it received).

    :meth:`run` connects, reads ``hello``, then notifications, and drops the connection
    after ``session(rng)`` seconds (sometimes with a reset, sometimes cleanly; sometimes
    before the head or during the replay), now and then stays away a while, and reconnects.
    Once :meth:`finish` gives it a target (publishing stopped) it stays connected until
    it has received that id. Everything a correct feed never does is counted."""

    spec: Spec
    port: int
    token: Callable[[str], str]
    rng: random.Random
    session: Callable[[random.Random], float]
    away: Callable[[random.Random], float] = lambda rng: 0.0
    catch_up: float = 60.0
    #: Several nodes: each session connects to one of the ports this returns (the live nodes).
    ports: Callable[[], Sequence[int]] | None = None
    #: Connections that fail or break are expected (a node is killed): count, don't flag.
    tolerate_drops: bool = False
    dropped: int = 0
    target: int | None = None
    last: int = 0
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    misaddressed: int = 0
    sessions: int = 0
    server_closes: int = 0
    anomalies: list[str] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    _scope: asyncio.Timeout | None = field(default=None, repr=False)

    def finish(self, target: int) -> None:
        """Publishing stopped and ``target`` is the newest id meant for this subscriber:
        from now on :meth:`run` ends as soon as it has it (or after ``catch_up`` s)."""
        self.target = target
        scope = self._scope
        if scope is not None and not scope.expired():
            now = asyncio.get_running_loop().time()
            limit = now if self.done() else now + self.catch_up
            when = scope.when()
            scope.reschedule(limit if when is None else min(when, limit))

    def done(self) -> bool:
        return self.target is not None and self.last >= self.target

    def accept(self, payload: dict[str, Any]) -> None:
        nid = payload["id"]
        self.received += 1
        if nid in self.seen:
            self.duplicates += 1
            return
        if nid < self.last:
            self.out_of_order += 1
        if payload["user"] not in (None, self.spec.user) or (
                self.spec.topics is not None and payload["topic"] not in self.spec.topics):
            self.misaddressed += 1
        self.seen.add(nid)
        self.last = max(self.last, nid)

    def missing(self, expected: Sequence[int]) -> list[int]:
        return [i for i in expected if i not in self.seen]

    def _hello(self, hello: dict[str, Any]) -> None:
        if hello.get("replay") != "resumed" or hello.get("user") != self.spec.user:
            self.anomalies.append(f"hello {hello} for cursor {self.last}")

    async def run(self) -> None:
        while not self.done():
            final = self.target is not None
            limit = self.catch_up if final else self.session(self.rng)
            if self.ports is not None:
                self.port = self.rng.choice(self.ports())
            try:
                async with asyncio.timeout(limit) as scope:
                    self._scope = scope
                    if self.spec.transport == "sse":
                        await self._sse()
                    else:
                        await self._ws()
            except TimeoutError:
                if not scope.expired():
                    raise
                if final:
                    self.anomalies.append(f"never caught up: at {self.last}, target {self.target}")
                    return
            except (OSError, InvalidHandshake, asyncio.IncompleteReadError, ConnectionClosed) as exc:
                if not self.tolerate_drops:
                    self.anomalies.append(f"connection failed: {exc!r}")
                self.dropped += 1
            self.sessions += 1
            if self.target is None:
                pause = self.away(self.rng)
                if pause > 0:
                    await asyncio.sleep(pause)  # offline a while: a longer replay next time

    def _query(self) -> list[str]:
        params = []
        if self.spec.topics is not None:
            params.append("topics=" + ",".join(sorted(self.spec.topics)))
        if self.spec.cursor_in == "query":
            params.append(f"last_event_id={self.last}")
        return params

    async def _sse(self) -> None:
        params = [f"token={self.token(self.spec.user)}", *self._query()]
        headers = {"Last-Event-ID": str(self.last)} if self.spec.cursor_in == "header" else {}
        stream = await RawSSE.open(self.port, "/events?" + "&".join(params), headers)
        try:
            if stream.status != 200:
                self.anomalies.append(f"GET /events answered {stream.status}")
                return
            hello = await stream.next_event()
            if hello is None or hello.event != "hello":
                self.anomalies.append(f"first event {hello}")
                return
            self._hello(hello.json())
            while not self.done():
                event = await stream.next_event()
                if event is None:  # the server ended the response (overflow)
                    self.server_closes += 1
                    return
                if event.event == "notification":
                    payload = event.json()
                    if event.id != str(payload["id"]):
                        self.anomalies.append(f"id line {event.id!r} for {payload['id']}")
                    self.accept(payload)
                elif event.event != "read":
                    self.anomalies.append(f"unexpected event {event.event!r}")
        finally:
            if self.rng.random() < 0.5:
                stream.abort()
            else:
                await stream.close()

    async def _ws(self) -> None:
        token = self.token(self.spec.user)
        params = self._query()
        if self.spec.cursor_in != "frame":
            params.append(f"token={token}")
        url = f"ws://127.0.0.1:{self.port}/ws" + ("?" + "&".join(params) if params else "")
        async with ws_connect(url, open_timeout=10, close_timeout=1, max_size=None) as ws:
            try:
                if self.spec.cursor_in == "frame":
                    await ws.send(orjson.dumps({"type": "auth", "token": token,
                                                "last_event_id": self.last}).decode())
                hello = orjson.loads(await ws.recv())
                if hello.pop("type", None) != "auth_success":
                    self.anomalies.append(f"first frame {hello}")
                    return
                self._hello(hello)
                while not self.done():
                    frame = orjson.loads(await ws.recv())
                    if frame["type"] == "notification":
                        self.accept(frame)
                    elif frame["type"] != "read":
                        self.anomalies.append(f"unexpected frame {frame}")
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
                if code == 1013:  # overflow: resume from the cursor
                    self.server_closes += 1
                elif code is None and self.tolerate_drops:  # its node went away
                    self.dropped += 1
                else:
                    self.anomalies.append(f"closed by the server with {code}")
            except asyncio.CancelledError:
                if self.rng.random() < 0.5:
                    ws.transport.abort()  # vanish without a close handshake
                raise
