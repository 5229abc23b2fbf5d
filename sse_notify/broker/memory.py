"""The in-process broker of a single node: an ordered queue of message batches.

It never loses a message, so its ``listen`` never yields ``RESYNC``, and ``ping`` always
succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from . import Message

__all__ = ["MemoryBroker"]

_CLOSED: Sequence[Message] = ("closed",)  # type: ignore[assignment]  # a sentinel batch


class MemoryBroker:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[Sequence[Message]] = asyncio.Queue()
        self._closed = False

    async def open(self) -> None:
        self._queue = asyncio.Queue()  # drop a previous run's close sentinel
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self._queue.put_nowait(_CLOSED)

    async def ping(self) -> None:
        return None

    def publish(self, messages: Sequence[Message]) -> None:
        if messages and not self._closed:
            self._queue.put_nowait(messages)

    async def listen(self) -> AsyncIterator[Sequence[Message]]:
        while True:
            batch = await self._queue.get()
            if batch is _CLOSED:
                return
            yield batch
