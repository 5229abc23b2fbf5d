"""Replay-then-live for one stream, shared by the SSE and WebSocket transports.

The order that gives no gap and no duplicate while publishes race with a reconnect:

1. register the live stream with the hub first (it buffers from now on);
2. read the user's state (newest id, unread), let the transport start its response (the
   SSE headers and ``retry:``, the WebSocket accept), then send ``hello``;
3. replay from storage everything after the cursor, page by page, until a short page;
4. then release the buffered live events, skipping any id already sent; from then on the
   hub may push new events itself (:meth:`~sse_notify.hub.Stream.go_live`), never before:
   the replay's pages are written by the stream's task, in order, before the push starts.

Every notification is either committed before step 3's last query (so storage has it) or
dispatched after step 1 (so the buffer has it): the union is complete, and skipping ids
``<= last sent`` removes the overlap. The hub dispatches in commit (= id) order, so the
buffer is ordered too. Without a cursor the stream starts live at ``hello.newest_id``.

The response starts only after the state is read, not as soon as the stream is
registered: a live start skips buffered ids up to ``newest_id``, so a notification
committed between registering and reading the state would be skipped although the client
may already have seen the headers (``EventSource.onopen``). Started after the read, the
response promises exactly what the contract says: whatever commits after a client has
seen the response start has an id above ``newest_id`` and reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable

from .hub import Hub, Push, Stream
from .store import Store
from .wire import KEEPALIVE, Outbound, hello, replayed, token_expiring

__all__ = ["Feed", "parse_cursor", "parse_topics", "REPLAY_PAGE"]

log = logging.getLogger(__name__)

REPLAY_PAGE = 1000
EXPIRY_WARNING = 60.0
_CURSOR_RE = re.compile(r"[0-9]{1,18}")

Send = Callable[[list[Outbound]], Awaitable[None]]
Start = Callable[[], Awaitable[None]]


def parse_cursor(value: str | None) -> int | None:
    """A valid cursor is 1-18 digits; anything else -- surrounding whitespace included --
    means "start live"."""
    if value is None:
        return None
    return int(value) if _CURSOR_RE.fullmatch(value) else None


def parse_topics(value: str | None) -> frozenset[str] | None:
    """``"a,b"`` -> {"a", "b"}; absent or empty -> None (no filter)."""
    if not value:
        return None
    topics = frozenset(t.strip() for t in value.split(",") if t.strip())
    return topics or None


class Feed(Stream):
    """A stream that serves itself: :meth:`run` registers it, starts the response, sends
    ``hello`` and the replay, then live events until the token expires or the stream is
    ended (the client gone: :meth:`client_gone`; the hub closing it: :meth:`close`).

    It is the stream rather than an object beside it, and :meth:`run` is one coroutine
    from start to end (the replay in a helper that has returned by then): a live stream
    is this object and one frame parked on :meth:`Stream.wait` -- no feed, closures or
    further frames per open stream.
    """

    __slots__ = ("store", "cursor", "expires_at", "keepalive", "start", "started", "push",
                 "gone", "_task")

    def __init__(self, hub: Hub, store: Store, user: str, *, transport: str,
                 topics: frozenset[str] | None = None, cursor: int | None = None,
                 expires_at: float | None = None, heartbeat: float = 15.0,
                 start: Start | None = None, push: Push | None = None):
        super().__init__(user, topics, transport, hub.stream_buffer, hub.stats, hub)
        self.store = store
        self.cursor = cursor
        self.expires_at = expires_at
        #: The heartbeat once live (:attr:`Stream.heartbeat` is set by ``go_live``).
        self.keepalive = heartbeat
        #: Starts the transport's response (SSE headers and ``retry:``, the WebSocket
        #: accept); called once, then dropped, so nothing it holds lives with the stream.
        self.start = start
        #: Writes live events from the hub's side without blocking, once the replay is
        #: over (:meth:`~sse_notify.hub.Stream.go_live`); None: the task sends them.
        self.push = push
        #: Whether the stream got as far as starting its response: if not (storage failed
        #: before), the transport can still answer with an error.
        self.started = False
        #: Whether the client went away (:meth:`client_gone`).
        self.gone = False
        self._task: asyncio.Task[object] | None = None

    def client_gone(self, _: object = None) -> None:
        """The client went away: end :meth:`run` (at once if it is running, else as it
        starts). A callback for the server's disconnect hook or a watcher's end."""
        if not self.gone:
            self.gone = True
            if self._task is not None:
                self._task.cancel()

    def close(self, reason: str) -> None:
        """The hub ends the stream (overflow, shutdown): the running task is cancelled, so
        a send blocked on a client that stopped reading is abandoned too."""
        if self.close_reason is None:
            super().close(reason)
            if self._task is not None:
                self._task.cancel()

    async def run(self, send: Send) -> str:
        """Serve the stream in the calling task; returns why it ended: ``"gone"`` (the
        client), the hub's close reason (``"overflow"``, ``"shutdown"``), ``"expired"``
        (the token), or ``"error"`` (logged; :attr:`started` says whether the response
        began). Any other cancellation (the server going away) propagates.

        The response is started (:attr:`start`) once the stream is registered and the
        user's state read, before ``hello`` (see the module's notes). Live, time is kept by
        the hub's sweep: it pushes keepalives itself where it can and wakes this task for
        the rest (a keepalive with no push, the expiry warning and end at
        :attr:`Stream.wake_at`), so a quiet stream holds no timer of its own.
        """
        if self.gone:
            return "gone"
        task = self._task = asyncio.current_task()
        assert task is not None and self._hub is not None
        hub = self._hub
        hub._register(self)
        try:
            newest, unread, pruned_through = await self.store.state(self.user)
            self.started = True
            start, self.start = self.start, None
            if start is not None:
                await start()
                del start
            last = await self._replay(send, newest, unread, pruned_through)
            loop = asyncio.get_running_loop()
            heartbeat = self.keepalive
            expires_at = self.expires_at
            warn_at = None if expires_at is None else expires_at - EXPIRY_WARNING
            push, self.push = self.push, None
            self.go_live(last, push, heartbeat)  # from here the hub may write new events itself
            del push
            while True:
                if expires_at is not None:
                    now = time.time()
                    if now >= expires_at:
                        return "expired"
                    if warn_at is not None and now >= warn_at:
                        warn_at = None
                        await _send_own(send, self, [token_expiring(expires_at)])
                        continue
                    wake_at = expires_at if warn_at is None else warn_at
                    if self.wake_at != wake_at:
                        self.wake_at_time(wake_at)
                if loop.time() - self.written_at >= heartbeat:  # the sweep could not push it
                    await _send_own(send, self, [KEEPALIVE])
                    continue
                await self.wait()
                fresh = self.fresh()  # in id order, minus what the replay already sent
                if fresh:
                    await _send_own(send, self, fresh)
                    if hub.on_delivered is not None:
                        hub.on_delivered(self.user, fresh)
        except asyncio.CancelledError:
            if not self.gone and self.close_reason is None:
                raise
            task.uncancel()
            return "gone" if self.gone else self.close_reason  # type: ignore[return-value]
        except Exception as exc:
            log.error("%s stream failed: %r", self.transport, exc)
            return "error"
        finally:
            self._task = None
            hub._unregister(self)

    async def _replay(self, send: Send, newest: int, unread: int, pruned_through: int) -> int:
        """``hello``, then the replay from storage; returns the newest id sent."""
        hub = self._hub
        assert hub is not None
        cursor = self.cursor
        if cursor is None:
            replay, last = "live", newest
        elif cursor < pruned_through or cursor > await self.store.max_id():
            # Retention removed part of what was missed, or the cursor is from no history
            # this store ever had: replay everything retained, and say so.
            replay, last = "reset", 0
        else:
            replay, last = "resumed", cursor
        await send([hello(self.user, newest, unread, replay)])
        if replay == "live" and not self.lagged:
            return last
        while True:
            # One row over the page: a page that comes back short ends the replay
            # without a second query to find out (1,000 missed: one read, not two).
            events = replayed(await self.store.replay_rows(self.user, last, self.topics, REPLAY_PAGE + 1))
            if events:
                await send(events)
                if hub.on_delivered is not None:
                    hub.on_delivered(self.user, events)
                hub.stats.replayed += len(events)
                last = events[-1].id  # type: ignore[assignment]
            if len(events) > REPLAY_PAGE:
                continue
            if not self.lagged:
                return last
            self.lagged = False  # live events were dropped meanwhile: read them again


async def _send_own(send: Send, stream: Stream, events: list[Outbound]) -> None:
    """A send by the stream's task: the hub's flusher and sweep keep off the stream
    meanwhile; once written it counts as traffic for the keepalive."""
    stream.sending = True
    try:
        await send(events)
    finally:
        stream.sending = False
    stream.written_at = asyncio.get_running_loop().time()
