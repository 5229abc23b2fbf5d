"""The Broker protocol and ``open_broker(url)``, which picks a backend by URL scheme.

A broker carries committed notifications and read-state changes from the node that wrote
them to the hub of every node. ``publish`` is synchronous and keeps order (it is called
from the store's commit listener, in id order); ``listen`` yields batches in that order.
On one node the in-process ``memory://`` broker is a loop-back; a Redis broker would be
one more module here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol, Union, runtime_checkable

from ..models import Notification, ReadChange

__all__ = ["Broker", "Message", "open_broker"]

Message = Union[Notification, ReadChange]


@runtime_checkable
class Broker(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def publish(self, messages: Sequence[Message]) -> None: ...
    def listen(self) -> AsyncIterator[Sequence[Message]]: ...


def open_broker(url: str) -> Broker:
    scheme = url.split(":", 1)[0]
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker()
    raise ValueError(f"unsupported broker URL scheme: {scheme!r}")
