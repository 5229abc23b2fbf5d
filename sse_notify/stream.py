"""One open stream (an SSE response or a WebSocket) as the hub sees it: its filter, its
bounded buffer, how new events reach the client, and its clocks.

* :meth:`Stream.offer` never blocks: it appends to the buffer and either wakes the
  stream's task (a waiter future is set only while the task waits) or, once the stream is
  live with a ``push`` (:meth:`Stream.go_live`), queues it for the hub's flusher, which
  writes the batch from the dispatcher's side (:meth:`Stream._flush`). A push that
  refuses (the socket is not keeping up), or a task sending itself, leaves the batch to
  the task, which sends with the transport's back-pressure.
* A live stream whose buffer would exceed its bound is closed ("overflow": the client
  reconnects with its cursor and replays from storage). While the stream is still
  replaying, an overflow only drops the buffered notifications and marks it ``lagged``:
  the replay reads them from storage.
* Time is kept by the hub's sweep (:meth:`Stream._sweep`): a keepalive pushed after
  ``heartbeat`` quiet seconds (or the task woken to send it), the task woken at
  :attr:`Stream.wake_at`, with a timer only in the last sweep interval before it.
* The stream is its own async context manager (registered with the hub on entry, always
  unregistered on exit); :class:`~sse_notify.feed.Feed` extends it with the run that
  serves it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .wire import KEEPALIVE, Outbound

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["Stream", "HubStats", "Push", "SWEEP_INTERVAL", "NEVER"]

#: Writes a batch to the client now, without blocking, or answers False and writes nothing.
Push = Callable[[list[Outbound]], bool]
#: The longest time between two sweeps (:meth:`Hub._sweep`); shorter when a stream's
#: heartbeat is under twice this.
SWEEP_INTERVAL = 1.0

NEVER = float("inf")
_KEEPALIVE_BATCH = [KEEPALIVE]


class HubStats:
    __slots__ = ("delivered", "replayed", "slow_disconnects")

    def __init__(self) -> None:
        self.delivered = 0
        self.replayed = 0
        self.slow_disconnects = 0


class Stream:
    """One open SSE response or WebSocket: its filter and its bounded buffer."""

    __slots__ = ("user", "topics", "transport", "limit", "replaying", "lagged",
                 "close_reason", "on_close", "last", "written_at", "sending", "heartbeat",
                 "wake_at", "_push", "_queued", "_hub", "_buffer", "_waiter", "_timer", "_stats")

    def __init__(self, user: str, topics: frozenset[str] | None, transport: str,
                 limit: int, stats: HubStats, hub: Hub | None = None):
        self.user = user
        self.topics = topics
        self.transport = transport
        self.limit = limit
        self.replaying = True
        self.lagged = False
        self.close_reason: str | None = None
        self.on_close: Callable[[], object] | None = None
        #: The newest notification id sent on this stream (replay or live).
        self.last = 0
        #: loop.time() of the last write to the client, by anyone (the keepalive's clock).
        self.written_at = 0.0
        #: Set by the stream's task while it sends itself: the flusher leaves it alone.
        self.sending = False
        #: Once live: a keepalive is due after this many quiet seconds (None: never).
        self.heartbeat: float | None = None
        #: Wall-clock time (time.time()) at which the stream's task is woken (its token's
        #: expiry warning or end): set with :meth:`wake_at_time`.
        self.wake_at = NEVER
        self._push: Push | None = None
        self._queued = False
        self._hub = hub
        self._buffer: list[Outbound] = []
        self._waiter: asyncio.Future[None] | None = None
        #: Only in the last sweep interval before :attr:`wake_at`: the exact wake-up.
        self._timer: asyncio.TimerHandle | None = None
        self._stats = stats

    async def __aenter__(self) -> Stream:
        assert self._hub is not None
        self._hub._register(self)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._hub is not None
        self._hub._unregister(self)

    def wants(self, event: Outbound) -> bool:
        return self.topics is None or event.topic in self.topics

    def offer(self, event: Outbound) -> None:
        """Queue ``event`` without blocking; close the stream if it fell too far behind."""
        if self.close_reason is not None:
            return
        buffer = self._buffer
        buffer.append(event)
        if len(buffer) > self.limit:
            if self.replaying:
                # Storage has every notification; keep only the unstored control events.
                buffer[:] = [e for e in buffer if e.id is None]
                self.lagged = True
            if len(buffer) > self.limit:
                self._stats.slow_disconnects += 1
                self.close("overflow")
                return
        if self._push is None or self.sending:
            self._wake()
        elif not self._queued and self._hub is not None:
            self._queued = True
            self._hub._queue(self)

    def go_live(self, last: int, push: Push | None, heartbeat: float | None = None) -> None:
        """The replay is over, ``last`` the newest id sent: from now on the flusher writes
        new events with ``push`` (if given) instead of waking the stream's task, and the
        hub's sweep keeps the stream alive after ``heartbeat`` quiet seconds (written by
        ``push``, else by the task it wakes)."""
        self.last = last
        self.replaying = False
        self._push = push
        self.heartbeat = heartbeat
        hub = self._hub
        if hub is None:
            return
        self.written_at = hub._loop_time()
        hub._start_sweep(SWEEP_INTERVAL if heartbeat is None else min(SWEEP_INTERVAL, heartbeat / 2))
        if push is not None and self._buffer and not self._queued:
            self._queued = True
            hub._queue(self)

    def fresh(self) -> list[Outbound]:
        """:meth:`take`, minus notifications already sent (ids up to :attr:`last`),
        counting the rest as delivered."""
        batch, self.last, delivered = self._unsent()
        self._buffer.clear()
        self._stats.delivered += delivered
        return batch

    def _unsent(self) -> tuple[list[Outbound], int, int]:
        """The buffer minus ids up to :attr:`last` (a notification the replay read from
        storage may reach the hub after it), the newest id in it, how many ids."""
        buffer = self._buffer
        last = self.last
        batch = []
        delivered = 0
        for event in buffer:  # in id order
            if event.id is None:
                batch.append(event)
            elif event.id > last:
                batch.append(event)
                last = event.id
                delivered += 1
        return batch, last, delivered

    def _flush(self, now: float) -> None:
        """The flusher's turn: push what is buffered, or leave it to the task."""
        self._queued = False
        if self.close_reason is not None or not self._buffer:
            return
        push = self._push
        if push is None or self.sending:
            self._wake()
            return
        batch, last, delivered = self._unsent()
        if batch:
            try:
                pushed = push(batch)
            except Exception:  # a transport failing here fails the same way for the task
                pushed = False
            if not pushed:
                self._wake()  # not writable now: the task sends, waiting for the socket
                return
            self.written_at = now
            hub = self._hub
            if hub is not None and hub.on_delivered is not None:
                hub.on_delivered(self.user, batch)
        self.last = last
        self._stats.delivered += delivered
        self._buffer.clear()

    def wait(self) -> asyncio.Future[None]:
        """A future done when something is buffered or the stream closes -- at once if
        that is so already -- or when the hub's sweep wakes the task (a keepalive it could
        not push, :attr:`wake_at` reached). Then :meth:`take` the batch; an empty one
        means "check your clocks". Nothing made here outlives the wait but the future."""
        waiter = asyncio.get_running_loop().create_future()
        if self._buffer or self.close_reason is not None:
            waiter.set_result(None)
            return waiter
        self._waiter = waiter
        return waiter

    def wake_at_time(self, at: float) -> None:
        """Wake the stream's task at wall-clock time ``at`` (time.time()). The hub's sweep
        sees it coming; only within one sweep interval of it is a timer armed, for the
        exact moment."""
        self.wake_at = at
        hub = self._hub
        if hub is not None and self._timer is None and at - time.time() <= hub._sweep_every:
            self._arm(asyncio.get_running_loop().time(), at - time.time())

    def _arm(self, now: float, until: float) -> None:
        # A hair late rather than early: the task reads time.time(), the timer loop.time().
        self._timer = asyncio.get_running_loop().call_at(now + max(until, 0.0) + 0.001, self._ring)

    def take(self) -> list[Outbound]:
        """Everything buffered, oldest first."""
        batch = self._buffer.copy()
        self._buffer.clear()
        return batch

    def _ring(self) -> None:
        self._timer = None
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():  # a cancelled wait leaves a done future behind
                waiter.set_result(None)

    def close(self, reason: str) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._push = None
        self._buffer.clear()
        self._stop_timer()
        self._wake()
        if self.on_close is not None:
            self.on_close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, now: float, wall: float, horizon: float) -> None:
        """The sweep's turn (``now``: loop time, ``wall``: time.time()): keep the stream
        alive; wake its task if :attr:`wake_at` is within ``horizon`` s. (A replaying
        stream's task is writing its pages.)"""
        if self.close_reason is not None or self.replaying:
            return
        until = self.wake_at - wall
        if until <= horizon and self._timer is None:
            if until <= 0:
                self._wake()
            else:  # the exact moment, with a timer that lives less than one interval
                self._arm(now, until)
        heartbeat = self.heartbeat
        if heartbeat is None or self.sending or now - self.written_at < heartbeat:
            return
        push = self._push
        if push is not None:
            try:
                pushed = push(_KEEPALIVE_BATCH)
            except Exception:  # a transport failing here fails the same way for the task
                pushed = False
            if pushed:
                self.written_at = now
                return
        self._wake()  # no push, or not writable now: the task sends it, with back-pressure
