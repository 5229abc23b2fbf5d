"""The fan-out hub: user -> live streams (:class:`~sse_notify.stream.Stream`, each with its
own bounded buffer), the flusher that writes pushed batches, and the sweep that keeps time.

Deliberate decisions:

* Fan-out never blocks: ``dispatch`` offers each event to its streams
  (:meth:`Stream.offer`), which buffer it and wake their consumer at most once per batch.
* A notification is encoded once (:class:`~sse_notify.wire.Outbound`) and the same object
  is shared by every stream it reaches.
* Push: a live stream with a ``push`` is queued instead of woken; the flusher writes each
  queued stream's batch from the dispatcher's side, waking no task; every
  :data:`PUSH_SLICE` streams it yields to the loop, so publishes and new streams are
  served in the middle of a broadcast to many.
* Time is kept by one sweep for all streams (:meth:`Hub._sweep`, every
  :data:`SWEEP_INTERVAL` s or half the shortest heartbeat, :data:`SWEEP_SLICE` streams
  per loop turn), not a timer per stream: keepalives pushed (or the task woken to send
  them), tasks woken at their :attr:`Stream.wake_at` (the token's expiry warning and
  end), a timer armed only in the last interval before it, for the exact moment.
* A user with one stream is mapped to that stream itself; a set is made only when a
  second opens (and dropped when one is left): most users hold one stream, and an empty
  set is 216 bytes.

The hub knows neither the store nor the broker.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from .models import Notification, ReadChange
from .stream import NEVER, SWEEP_INTERVAL, HubStats, Push, Stream
from .wire import Outbound, read_event

__all__ = ["Hub", "Stream", "HubStats", "Push", "PUSH_SLICE", "SWEEP_INTERVAL", "SWEEP_SLICE"]

#: Streams the flusher writes between two yields to the event loop.
PUSH_SLICE = 256
#: Streams the sweep visits between two yields to the event loop.
SWEEP_SLICE = 1024


class Hub:
    def __init__(self, stream_buffer: int = 1024):
        self.stream_buffer = stream_buffer
        self.stats = HubStats()
        #: user -> their one stream, or a set of two or more.
        self._by_user: dict[str, Stream | set[Stream]] = {}
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
        by_user, user = self._by_user, stream.user
        held = by_user.get(user)
        if held is None:
            by_user[user] = stream
        elif type(held) is set:
            held.add(stream)
        elif held is not stream:
            by_user[user] = {held, stream}  # type: ignore[arg-type]
        self._all.add(stream)
        self._changed.add(stream.user)

    def _unregister(self, stream: Stream) -> None:
        stream._stop_timer()
        stream._push = None
        stream.heartbeat, stream.wake_at = None, NEVER  # a sweep under way skips it
        self._all.discard(stream)
        by_user, user = self._by_user, stream.user
        self._changed.add(user)
        held = by_user.get(user)
        if held is stream:
            del by_user[user]
        elif type(held) is set:
            held.discard(stream)
            if len(held) == 1:
                by_user[user] = next(iter(held))
        if not self._all and self._sweep_next is not None:
            self._sweep_next.cancel()
            self._sweep_next = None

    def dispatch(self, messages: Sequence[Notification | ReadChange]) -> None:
        for message in messages:
            if isinstance(message, Notification):
                targets: Iterable[Stream] = (
                    self._all if message.user is None else self._streams_of(message.user)
                )
                if not targets:  # nobody here to reach (most users, on one node of many)
                    continue
                event = Outbound.notification(message)
                for stream in targets:  # closing only schedules the unregister: safe
                    if stream.topics is None or event.topic in stream.topics:
                        stream.offer(event)
            else:
                event = read_event(message)
                for stream in self._streams_of(message.user):
                    stream.offer(event)

    def _streams_of(self, user: str) -> Iterable[Stream]:
        held = self._by_user.get(user)
        if held is None:
            return ()
        return held if type(held) is set else (held,)  # type: ignore[return-value]

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
        return {user: _held(streams) for user, streams in self._by_user.items()}

    def take_changed(self) -> dict[str, int]:
        """The users who opened or closed a stream since the last call, each with their
        open streams now (0: none): what presence sends, without a pass over every user."""
        changed, self._changed = self._changed, set()
        by_user = self._by_user
        return {user: _held(by_user.get(user)) for user in changed}


def _held(streams: Stream | set[Stream] | None) -> int:
    """How many streams a :attr:`Hub._by_user` entry stands for."""
    if streams is None:
        return 0
    return len(streams) if type(streams) is set else 1
