"""The fan-out hub: user -> live streams, each with its own bounded buffer.

Deliberate decisions:

* Fan-out never blocks: ``dispatch`` appends to each stream's buffer and wakes its
  consumer at most once per batch (a waiter future is set only while the consumer waits).
* Time is kept by one sweep for all streams (:meth:`Hub._sweep`, every
  :data:`SWEEP_INTERVAL` s or half the shortest heartbeat, :data:`SWEEP_SLICE` streams
  per loop turn), not a timer per stream: it pushes a live stream's keepalive after
  ``heartbeat`` quiet seconds (or wakes its task to send it: no push, or the push
  refused), and wakes a task at its :attr:`Stream.wake_at` (the token's expiry warning
  and end), arming a timer only in the last interval before it, for the exact moment.
* Push: once a stream has finished its replay, its transport may give it a ``push``
  function (:meth:`Stream.go_live`) that writes a batch without blocking or refuses. Then
  ``dispatch`` only buffers and queues the stream, and the hub's flusher writes each
  queued stream's batch from the dispatcher's side, waking no task; every
  :data:`PUSH_SLICE` streams it yields to the loop, so publishes and new streams are
  served in the middle of a broadcast to many. A stream whose push refuses (its socket
  is not keeping up), or whose task is sending itself, is woken instead: its task sends
  with ASGI's back-pressure while its buffer stays bounded as before.
* A notification is encoded once (:class:`~sse_notify.wire.Outbound`) and the same object
  is shared by every stream it reaches.
* A live stream whose buffer would exceed its bound is closed (the client reconnects with
  its cursor and replays from storage). While a stream is still replaying from storage,
  an overflow only drops the buffered notifications and marks the stream ``lagged``: the
  replay loop then reads them from storage, so a long replay under load is not cut off.
* ``subscribe`` gives a stream that is its own async context manager: it always
  unregisters.

The hub knows neither the store nor the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from .models import Notification, ReadChange
from .wire import KEEPALIVE, Outbound, read_event

__all__ = ["Hub", "Stream", "HubStats", "Push", "PUSH_SLICE", "SWEEP_INTERVAL", "SWEEP_SLICE"]

#: Writes a batch to the client now, without blocking, or answers False and writes nothing.
Push = Callable[[list[Outbound]], bool]
#: Streams the flusher writes between two yields to the event loop.
PUSH_SLICE = 256
#: The longest time between two sweeps (:meth:`Hub._sweep`); shorter when a stream's
#: heartbeat is under twice this.
SWEEP_INTERVAL = 1.0
#: Streams the sweep visits between two yields to the event loop.
SWEEP_SLICE = 1024

_NEVER = float("inf")
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
        self.wake_at = _NEVER
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


class Hub:
    def __init__(self, stream_buffer: int = 1024):
        self.stream_buffer = stream_buffer
        self.stats = HubStats()
        self._by_user: dict[str, set[Stream]] = {}
        self._all: set[Stream] = set()
        self._changed: set[str] = set()  # users who opened or closed a stream: presence
        #: Told, once per batch written to a stream (by its feed, or pushed from here), the
        #: user and the events written (delivery receipts, :mod:`sse_notify.receipts`);
        #: None: nobody listens.
        self.on_delivered: Callable[[str, Sequence[Outbound]], None] | None = None
        self._pending: deque[Stream] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._sweep_every = SWEEP_INTERVAL
        #: The sweep's next turn (a timer, or a call_soon between slices); None: stopped.
        self._sweep_next: asyncio.Handle | None = None

    def _loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _start_sweep(self, every: float) -> None:
        """Sweep at least every ``every`` seconds from now on (while streams are open)."""
        if every < self._sweep_every:
            self._sweep_every = every
            if self._sweep_next is not None:  # the pending turn may be too far away
                self._sweep_next.cancel()
                self._sweep_next = None
        if self._sweep_next is None:
            self._sweep_next = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)

    def _sweep(self, streams: list[Stream] | None = None, start: int = 0) -> None:
        """Every stream's time-based duties (:meth:`Stream._sweep`, see the module's
        notes), :data:`SWEEP_SLICE` streams per loop turn; stops when none is open."""
        loop = asyncio.get_running_loop()
        if streams is None:
            streams = list(self._all)
        now, wall = loop.time(), time.time()
        horizon = self._sweep_every
        end = min(start + SWEEP_SLICE, len(streams))
        for i in range(start, end):
            streams[i]._sweep(now, wall, horizon)
        if end < len(streams):
            self._sweep_next = loop.call_soon(self._sweep, streams, end)
        elif self._all:
            self._sweep_next = loop.call_later(self._sweep_every, self._sweep)
        else:
            self._sweep_next = None

    def _queue(self, stream: Stream) -> None:
        self._pending.append(stream)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_pending())

    async def _flush_pending(self) -> None:
        """Write every queued stream's batch, :data:`PUSH_SLICE` streams per loop turn."""
        pending = self._pending
        loop = asyncio.get_running_loop()
        try:
            while pending:
                now = loop.time()
                for _ in range(min(PUSH_SLICE, len(pending))):
                    pending.popleft()._flush(now)
                if pending:
                    await asyncio.sleep(0)
        finally:
            self._flusher = None

    def subscribe(self, user: str, topics: frozenset[str] | None = None,
                  transport: str = "sse") -> Stream:
        """A stream for ``user``, registered by ``async with`` and always unregistered
        when the block ends. (The stream is its own context manager: a generator-based
        one would keep a generator and its frame per open stream.)"""
        return Stream(user, topics, transport, self.stream_buffer, self.stats, self)

    def _register(self, stream: Stream) -> None:
        self._by_user.setdefault(stream.user, set()).add(stream)
        self._all.add(stream)
        self._changed.add(stream.user)

    def _unregister(self, stream: Stream) -> None:
        stream._stop_timer()
        stream._push = None
        stream.heartbeat, stream.wake_at = None, _NEVER  # a sweep under way skips it
        self._all.discard(stream)
        user = stream.user
        self._changed.add(user)
        streams = self._by_user.get(user)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._by_user[user]
        if not self._all and self._sweep_next is not None:
            self._sweep_next.cancel()
            self._sweep_next = None

    def dispatch(self, messages: Sequence[Notification | ReadChange]) -> None:
        for message in messages:
            if isinstance(message, Notification):
                event = Outbound.notification(message)
                targets: Iterable[Stream] = (
                    self._all if message.user is None else self._by_user.get(message.user, ())
                )
                for stream in targets:  # closing only schedules the unregister: safe
                    if stream.topics is None or event.topic in stream.topics:
                        stream.offer(event)
            else:
                event = read_event(message)
                for stream in self._by_user.get(message.user, ()):
                    stream.offer(event)

    def close_all(self, reason: str = "shutdown") -> None:
        for stream in tuple(self._all):
            stream.close(reason)

    def count(self, transport: str | None = None) -> int:
        if transport is None:
            return len(self._all)
        return sum(1 for s in self._all if s.transport == transport)

    def user_count(self) -> int:
        return len(self._by_user)

    def user_streams(self) -> dict[str, int]:
        """Open streams per user (users with none left out)."""
        return {user: len(streams) for user, streams in self._by_user.items()}

    def take_changed(self) -> dict[str, int]:
        """The users who opened or closed a stream since the last call, each with their
        open streams now (0: none): what presence sends, without a pass over every user."""
        changed, self._changed = self._changed, set()
        by_user = self._by_user
        return {user: len(by_user.get(user, ())) for user in changed}
