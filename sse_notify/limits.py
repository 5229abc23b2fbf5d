"""Admission limits: how many streams one user and the whole server may hold open, and
how fast one publisher may publish.

Neither holds a task or a timer. A stream takes a slot before its response starts and
gives it back when it ends (:meth:`StreamSlots.take`); a publish spends a token from its
publisher's bucket, refilled from the clock when the bucket is next consulted
(:class:`PublishRate`). Refusals are :class:`~sse_notify.errors.ApiError` values, so both
transports and the HTTP API answer them the way they answer every other error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from .errors import ApiError

__all__ = ["StreamSlots", "Slot", "PublishRate"]


class StreamSlots:
    """Open-stream counters: per user (``per_user``) and in all (``total``); 0 = no limit."""

    def __init__(self, per_user: int = 0, total: int = 0):
        self.per_user = per_user
        self.total = total
        self._by_user: dict[str, int] = {}
        self._open = 0

    def take(self, user: str) -> Slot:
        """A slot for one stream of ``user``, or a refusal (503 when the server is full,
        429 when the user is); leaving the slot's ``with`` block gives it back."""
        if self.total and self._open >= self.total:
            raise ApiError(503, "server_busy", f"The server holds its maximum of {self.total} "
                           "streams; try again later.", {"Retry-After": "5"})
        held = self._by_user.get(user, 0)
        if self.per_user and held >= self.per_user:
            raise ApiError(429, "too_many_streams", f"This user already has {held} open "
                           "streams, the most allowed; close one first.")
        self._by_user[user] = held + 1
        self._open += 1
        return Slot(self, user)

    def _give_back(self, user: str) -> None:
        self._open -= 1
        left = self._by_user[user] - 1
        if left:
            self._by_user[user] = left
        else:
            del self._by_user[user]


class Slot:
    __slots__ = ("_slots", "_user")

    def __init__(self, slots: StreamSlots, user: str):
        self._slots, self._user = slots, user

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._slots._give_back(self._user)


class PublishRate:
    """A token bucket per publisher name: ``rate`` publishes per second on average, up to
    ``burst`` at once; ``rate`` 0 means no limit."""

    def __init__(self, rate: float = 0.0, burst: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(burst, 1) if burst else max(math.ceil(rate), 1)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, as of)

    def spend(self, publisher: str, count: int = 1) -> None:
        """Take ``count`` publishes from ``publisher``'s bucket, all or none, or refuse
        with 429 + Retry-After. More than the burst at once can never pass: refused
        with 429 and no Retry-After."""
        if not self.rate or count <= 0:
            return
        if count > self.burst:
            raise ApiError(429, "rate_limited", f"This publisher may publish at most {self.burst} "
                           f"at once; send {count} in smaller parts.")
        now = self._clock()
        tokens, as_of = self._buckets.get(publisher, (self.burst, now))
        tokens = min(self.burst, tokens + (now - as_of) * self.rate)
        if tokens < count:
            self._buckets[publisher] = (tokens, now)
            wait = math.ceil((count - tokens) / self.rate)
            raise ApiError(429, "rate_limited", f"This publisher may publish {self.rate:g} "
                           f"times per second; retry in {wait} s.", {"Retry-After": str(wait)})
        self._buckets[publisher] = (tokens - count, now)

    def refund(self, publisher: str, count: int = 1) -> None:
        """Give back ``count`` publishes spent for a request that was then refused."""
        if self.rate and publisher in self._buckets:
            tokens, as_of = self._buckets[publisher]
            self._buckets[publisher] = (min(self.burst, tokens + count), as_of)
