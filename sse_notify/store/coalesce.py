"""Reads by key coalesced into one query: the users whose streams open together ask for
their ``hello`` state (``Store.state``) in one statement and one round trip to the
database (SQLite: one hop to the reader's thread), not one each.

A request waits for the next query that starts after it was made, so its answer is as
fresh as a query of its own would have been (a stream registered with the hub before
asking sees everything committed before its answer was read). One query runs at a time;
the requests made meanwhile form the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Coalescer", "MAX_KEYS"]

T = TypeVar("T")

#: Keys per query (SQLite binds each one; its limit is far above this).
MAX_KEYS = 500


class Coalescer(Generic[T]):
    """``await get(key)``: ``fetch(keys)`` answers every key it is given, in order."""

    def __init__(self, fetch: Callable[[Sequence[str]], Awaitable[Sequence[T]]]):
        self._fetch = fetch
        self._pending: dict[str, list[asyncio.Future[T]]] = {}
        self._task: asyncio.Task[None] | None = None

    def get(self, key: str) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="coalesced-read")
        return future

    async def _run(self) -> None:
        waiting: list[list[asyncio.Future[T]]] = []
        try:
            while self._pending:
                keys = list(self._pending)[:MAX_KEYS]
                waiting = [self._pending.pop(key) for key in keys]
                try:
                    answers = await self._fetch(keys)
                except Exception as exc:
                    _settle(waiting, error=exc)
                    continue
                _settle(waiting, answers=answers)
        except BaseException:  # cancelled: nobody will answer these
            for futures in [*waiting, *self._pending.values()]:
                for future in futures:
                    future.cancel()
            self._pending.clear()
            raise
        finally:
            self._task = None


def _settle(waiting: list[list[asyncio.Future[T]]], answers: Sequence[T] = (),
            error: Exception | None = None) -> None:
    for i, futures in enumerate(waiting):
        for future in futures:
            if future.done():  # its caller went away
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(answers[i])
