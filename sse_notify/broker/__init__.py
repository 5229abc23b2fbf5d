"""The Broker protocol and ``open_broker(url)``, which picks a backend by URL scheme.

A broker carries committed notifications and read-state changes from the node that wrote
them to the follower (:mod:`sse_notify.follower`) of every node, quickly but without a
promise: correctness comes from the ids and the store's log, which the follower reads
whenever the broker's stream has a hole. So a broker may lose or repeat a message; what
it must do is keep the order of one node's ``publish`` calls and say when it may have
lost some.

* ``open`` connects and subscribes (LISTEN) before it returns, so a follower that reads
  the store's newest id afterwards misses nothing in between; an unreachable broker
  raises :class:`BrokerUnavailable`.
* ``publish`` is synchronous and never blocks (the store's commit listener calls it in id
  order): a network broker queues the batch and sends it from a task of its own, in order.
* ``listen`` yields message batches in order, and :data:`RESYNC` after it reconnected
  (messages may have been lost meanwhile: the follower catches up from the store). It
  reconnects by itself, with backoff, and ends only when ``close`` is called.
* A batch may contain :class:`IdRange`: notifications too large for the broker's message
  size, which the follower reads back from the store.
* ``ping`` raises :class:`BrokerUnavailable` when the broker cannot be reached now
  (``/healthz`` answers 503).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, Union, runtime_checkable

from ..models import Notification, ReadChange

__all__ = ["Broker", "BrokerUnavailable", "IdRange", "Message", "RESYNC", "Resync",
           "open_broker", "is_postgres_url"]


class BrokerUnavailable(Exception):
    """The broker cannot be reached right now."""


@dataclass(frozen=True, slots=True)
class IdRange:
    """Notifications ``first..last`` (inclusive) were committed; read them from the store."""

    first: int
    last: int


class Resync:
    """The type of :data:`RESYNC`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESYNC"


#: Yielded by ``listen()`` after a (re)connection: messages may have been lost.
RESYNC: Final = Resync()

Message = Union[Notification, ReadChange, IdRange]


@runtime_checkable
class Broker(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    def publish(self, messages: Sequence[Message]) -> None: ...
    def listen(self) -> AsyncIterator[Sequence[Message] | Resync]: ...


def is_postgres_url(url: str) -> bool:
    return url.split(":", 1)[0] in ("postgresql", "postgres")


def open_broker(url: str) -> Broker:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker()
    if is_postgres_url(url):
        from .postgres import PostgresBroker

        return PostgresBroker(url)
    if scheme in ("redis", "rediss"):
        from .redis import RedisBroker

        return RedisBroker(url)
    raise ValueError(f"unsupported broker URL scheme: {scheme!r} "
                     "(use memory://, postgresql://... or redis://...)")
