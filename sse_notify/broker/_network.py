"""What the PostgreSQL and Redis brokers share: a subscription kept alive by reconnecting,
an inbox that ``listen`` drains, and an outbox that one task sends in order.

Deliberate decisions:

* ``open`` subscribes and waits until the server confirmed it, so whatever is published
  after ``open`` returns reaches this node (the follower takes its position then).
* A subscription that fails (connection killed, server restarted, keepalive unanswered)
  is dropped and made again with backoff; then ``listen`` yields ``RESYNC``, because what
  was published meanwhile is lost to this node (the follower reads it from the store).
* ``publish`` only encodes and queues; the sender task sends everything queued in one
  round trip, in order. A failed send is retried on a fresh connection, so a message may
  arrive twice (the follower skips the repeat) but not out of order. While the server is
  unreachable the outbox keeps at most ``MAX_OUTBOX`` payloads, dropping the oldest: the
  notifications in them are in the store, and other nodes catch up on them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from . import RESYNC, BrokerUnavailable, Message, Resync
from .codec import decode, encode

__all__ = ["NetworkBroker", "split_channel"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
PING_TIMEOUT = 2.0
#: Seconds of quiet on the subscription before it is probed; no answer in as long again
#: and it is considered lost.
KEEPALIVE = 5.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
MAX_OUTBOX = 10_000

_CLOSED = object()


def split_channel(url: str, default: str) -> tuple[str, str]:
    """``scheme://...?channel=NAME&x=y`` -> (``scheme://...?x=y``, ``NAME``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    channel = default
    rest = []
    for key, value in query:
        if key == "channel":
            channel = value
        else:
            rest.append((key, value))
    if not channel:
        raise ValueError("the broker's channel name must not be empty")
    return urlunsplit(parts._replace(query=urlencode(rest))), channel


def safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class NetworkBroker:
    #: The server's name, for messages.
    kind = "the broker"
    #: The largest payload the server carries, bytes (None: no practical limit).
    limit: int | None = None

    def __init__(self, url: str, channel: str):
        self.url = url
        self.channel = channel
        self._closed = True
        self._subscribed = False
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._outbox: deque[bytes] = deque()
        self._outbox_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- what a backend provides ------------------------------------------------------

    async def _subscribe(self) -> None:
        """Connect and subscribe; return once the server confirmed it."""
        raise NotImplementedError

    async def _receive(self) -> None:
        """Hand each payload to :meth:`_received` until the subscription is lost (then
        return or raise); probe it after ``KEEPALIVE`` seconds of quiet."""
        raise NotImplementedError

    async def _unsubscribe(self) -> None:
        """Drop the subscription's connection, whatever its state; never raises."""
        raise NotImplementedError

    async def _send(self, payloads: list[bytes]) -> None:
        """Publish ``payloads`` in order, in one round trip; raise if that failed."""
        raise NotImplementedError

    async def _reset_sender(self) -> None:
        """Drop the sending connection (the next send makes a new one); never raises."""
        raise NotImplementedError

    async def _ping(self) -> None:
        raise NotImplementedError

    # -- the Broker protocol ------------------------------------------------------------

    async def open(self) -> None:
        self._inbox = asyncio.Queue()
        self._outbox.clear()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._subscribe()
        except Exception as exc:
            await self._unsubscribe()
            raise BrokerUnavailable(f"cannot reach {self.kind} at {safe_url(self.url)}: "
                                    f"{_describe(exc)}") from None
        self._closed = False
        self._subscribed = True
        self._tasks = [asyncio.create_task(self._keep_subscribed(), name=f"{self.kind}-subscriber"),
                       asyncio.create_task(self._send_queued(), name=f"{self.kind}-sender")]

    async def close(self) -> None:
        self._closed = True
        self._subscribed = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._unsubscribe()
        await self._reset_sender()
        self._outbox.clear()
        self._inbox.put_nowait(_CLOSED)

    async def ping(self) -> None:
        if self._closed:
            raise BrokerUnavailable("the broker is closed")
        if not self._subscribed:
            raise BrokerUnavailable(f"reconnecting to {self.kind}")
        try:
            async with asyncio.timeout(PING_TIMEOUT):
                await self._ping()
        except Exception as exc:
            raise BrokerUnavailable(_describe(exc)) from None

    def publish(self, messages: Sequence[Message]) -> None:
        if self._closed or not messages:
            return
        outbox = self._outbox
        outbox.extend(encode(messages, self.limit))
        if len(outbox) > MAX_OUTBOX:
            dropped = len(outbox) - MAX_OUTBOX
            for _ in range(dropped):
                outbox.popleft()
            log.warning("%s is not keeping up: %d unsent messages dropped", self.kind, dropped)
        self._outbox_wake.set()

    async def listen(self) -> AsyncIterator[Sequence[Message] | Resync]:
        inbox = self._inbox
        while True:
            item = await inbox.get()
            if item is _CLOSED:
                return
            yield item  # type: ignore[misc]

    # -- the tasks ----------------------------------------------------------------------

    def _received(self, payload: bytes | str) -> None:
        try:
            messages = decode(payload)
        except ValueError as exc:  # not ours: treat as lost, the store has the truth
            log.warning("ignored a message on %s channel %r: %s", self.kind, self.channel, exc)
            self._inbox.put_nowait(RESYNC)
            return
        self._inbox.put_nowait(messages)

    async def _keep_subscribed(self) -> None:
        while True:
            try:
                await self._receive()
                reason = "connection closed"
            except Exception as exc:
                reason = _describe(exc)
            self._subscribed = False
            await self._unsubscribe()
            log.warning("lost the subscription to %s (%s); reconnecting", self.kind, reason)
            failures = 0
            while True:
                try:
                    async with asyncio.timeout(CONNECT_TIMEOUT):
                        await self._subscribe()
                    break
                except Exception as exc:
                    await self._unsubscribe()
                    failures += 1
                    if failures == 1:
                        log.error("cannot reach %s at %s: %s (retrying)", self.kind,
                                  safe_url(self.url), _describe(exc))
                    await asyncio.sleep(min(BACKOFF_MIN * 2 ** failures, BACKOFF_MAX))
            self._subscribed = True
            log.info("subscribed to %s again; catching up from the store", self.kind)
            self._inbox.put_nowait(RESYNC)

    async def _send_queued(self) -> None:
        outbox = self._outbox
        failures = 0
        while True:
            await self._outbox_wake.wait()
            self._outbox_wake.clear()
            while outbox:
                payloads = list(outbox)
                outbox.clear()
                try:
                    await self._send(payloads)
                except Exception as exc:
                    outbox.extendleft(reversed(payloads))  # first in line again
                    while len(outbox) > MAX_OUTBOX:
                        outbox.popleft()
                    failures += 1
                    if failures == 1:
                        log.error("cannot publish to %s: %s (retrying)", self.kind, _describe(exc))
                    await self._reset_sender()
                    await asyncio.sleep(min(BACKOFF_MIN * 2 ** failures, BACKOFF_MAX))
                    continue
                if failures:
                    log.info("publishing to %s again", self.kind)
                    failures = 0


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
