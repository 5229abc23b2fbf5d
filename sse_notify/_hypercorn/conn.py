"""A cheaper connection loop for Hypercorn's asyncio ``TCPServer``: the idle timer, the
send path, the reads and the ``Date`` header.

Per connection and per request, Hypercorn 0.18 spends more on its own machinery than on
HTTP: the keep-alive timeout is a task (``AsyncioSingleTask``: an ``asyncio.Lock``, a task
running ``wait_for`` -- a second task, a future and a timer -- cancelled and awaited when a
request starts and created again when it ends); every write takes the send lock and
awaits ``drain()`` (five coroutine frames when nothing waits); every read goes through
``StreamReader.read`` and ``_wait_for_data`` (two frames kept per idle connection); the
``Date`` header is formatted for each response. :func:`install` replaces, for the
:data:`~sse_notify._hypercorn.TESTED` versions and only where each replaced or relied-on
source is the one in :data:`CHECKED`:

* ``AsyncioSingleTask`` as ``TCPServer`` makes it, by :class:`IdleTimer`: a
  ``loop.call_later`` handle armed and cancelled synchronously, the same keep-alive
  semantics (after ``keep_alive_timeout`` idle, or at once when the worker is terminated,
  the server's ``_initiate_server_close`` runs in its task group);
* ``TCPServer.protocol_send``: a write when the send lock is free and nobody waits for it
  goes straight to the transport, awaiting ``drain()`` under the lock only when it would
  wait (paused, closing, an error), and takes along a response head waiting for its
  body (:mod:`.proto`); ``Updated`` arms or stops the timer without awaiting;
* ``TCPServer.run``: Hypercorn's, with ``_read_data``'s loop in its own frame, without
  ``wait_for`` and with the reader's wait inlined (``read`` is called once data is there,
  so it never suspends: an idle connection keeps two coroutine frames, not five), and
  the ended connection's attributes cleared (:mod:`.lean`'s reason: freed by reference
  counting); its task group :mod:`.tasks`' (where Hypercorn's ``TaskGroup`` is the checked
  one), and on plain TCP an HTTP/1.1 app without a request body run in this task once the
  data at hand is handled (:class:`_Handover`: one task per streaming connection, not two);
* ``hypercorn.config.format_date_time`` by one that formats each second once.

HTTP/2 and TLS connections go through the same ``TCPServer``: nothing here depends on the
protocol above it. Anything unchecked keeps Hypercorn's own code (``read_timeout`` set:
Hypercorn's ``_read_data``; no ``on_set`` on the worker's terminated event: its idle task).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from asyncio.streams import FlowControlMixin, StreamReader, StreamWriter
from collections import deque
from ssl import SSLError
from typing import Any

from . import tasks as _tasks

try:
    from hypercorn import config as _config
    from hypercorn.asyncio import tcp_server as _tcp_server
    from hypercorn.asyncio.worker_context import AsyncioSingleTask
    from hypercorn.events import Closed, RawData, Updated
    from hypercorn.utils import parse_socket_addr
    from wsgiref.handlers import format_date_time
except ImportError:  # pragma: no cover
    _tcp_server = None  # type: ignore[assignment]

__all__ = ["CHECKED", "IdleTimer", "install", "uninstall", "cached_date"]

#: sha256 (first 16 hex digits) of the sources replaced or relied on: Hypercorn 0.18.0's,
#: and asyncio's as Python 3.11.7 has them (the reader's wait and the lock's fast path).
CHECKED = {
    "TCPServer": "3bfa72b319509f2b",
    "AsyncioSingleTask": "305fdb8a3c30b8a5",
    "Config.response_headers": "5a637c3d48180e55",
    # asyncio's: each one unchanged or its part keeps asyncio's public way.
    "StreamReader.read": "54bc5378c6eec10b",  # with the next: the inlined wait
    "StreamReader._wait_for_data": "3064c5757b9dd9af",
    "StreamWriter.drain": "31d717c85b1be487",  # with the next: when a write needs no drain
    "Lock.acquire": "54bbd184d16df3a1",
    # Its drain waiters are used only with append, remove and iteration, which a list
    # does as well as its 760-byte deque.
    "FlowControlMixin": "5eea7d0e63642ff8",
}

_originals: dict[str, Any] = {}


def _no_head(server: Any) -> None:
    """No response head ever waits (:mod:`.proto` not installed)."""


#: proto.flush_head once proto is installed: writes a response head waiting for its body.
flush_head: Any = _no_head
#: Which asyncio-dependent parts are on (their sources are the checked ones).
_inline_wait = _direct_write = _list_drain_waiters = _lean_tasks = False


def _fingerprint(obj: Any) -> str:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return "?"


def unchanged(**objects: Any) -> bool:
    """Whether each object's source (keyed by its :data:`CHECKED` name) is the checked one."""
    return all(CHECKED.get(name) == _fingerprint(obj) for name, obj in objects.items())


def install() -> bool:
    """Put the pieces in (once); whether they are in place. The caller checked the
    version gate."""
    global _inline_wait, _direct_write, _list_drain_waiters, _lean_tasks
    if _originals:
        return True
    if (_tcp_server is None or _config.format_date_time is not format_date_time
            or not unchanged(TCPServer=_tcp_server.TCPServer, AsyncioSingleTask=AsyncioSingleTask,
                             **{"Config.response_headers": _config.Config.response_headers})):
        return False
    _inline_wait = unchanged(**{"StreamReader.read": StreamReader.read,
                                "StreamReader._wait_for_data": StreamReader._wait_for_data})
    _direct_write = unchanged(**{"StreamWriter.drain": StreamWriter.drain,
                                 "Lock.acquire": asyncio.Lock.acquire})
    _list_drain_waiters = unchanged(FlowControlMixin=FlowControlMixin)
    _lean_tasks = (_tasks._spawn_app is not None
                   and _tasks.CHECKED["TaskGroup"] == _fingerprint(_tcp_server.TaskGroup))
    server = _tcp_server.TCPServer
    _originals.update(run=server.run, send=server.protocol_send,
                      single_task=_tcp_server.AsyncioSingleTask, date=_config.format_date_time)
    server.run = _run  # type: ignore[method-assign]
    server.protocol_send = _protocol_send  # type: ignore[method-assign]
    _tcp_server.AsyncioSingleTask = IdleTimer  # type: ignore[misc]
    _config.format_date_time = cached_date  # type: ignore[assignment]
    return True


def uninstall() -> None:
    if not _originals:
        return
    server = _tcp_server.TCPServer
    server.run = _originals["run"]  # type: ignore[method-assign]
    server.protocol_send = _originals["send"]  # type: ignore[method-assign]
    _tcp_server.AsyncioSingleTask = _originals["single_task"]  # type: ignore[misc]
    _config.format_date_time = _originals["date"]  # type: ignore[assignment]
    _originals.clear()


_date: tuple[int, str] = (-1, "")


def cached_date(timestamp: float) -> str:
    """``wsgiref``'s ``format_date_time``, formatted once per second."""
    global _date
    second = int(timestamp)
    if _date[0] != second:
        _date = (second, format_date_time(second))
    return _date[1]


# -- the idle timer ---------------------------------------------------------------------------

class IdleTimer:
    """``AsyncioSingleTask`` for ``TCPServer``'s keep-alive timeout, as a timer handle.

    :meth:`arm`/:meth:`disarm` are synchronous; ``restart``/``stop`` keep the awaited
    interface. A timer armed while the worker is terminated fires at once; one armed
    before is fired by the terminated event (one callback per worker, for the timers
    armed in it)."""

    __slots__ = ("_handle", "_armed", "_server", "_stock")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._armed: set[IdleTimer] | None = None
        self._server: Any = None  # (task group, server) while armed
        self._stock: Any = None  # Hypercorn's own, where the action is not a server's timeout

    async def restart(self, task_group: Any, action: Any) -> None:
        server = getattr(action, "__self__", None)
        if (self._stock is None and type(server) is _tcp_server.TCPServer
                and getattr(action, "__func__", None) is _tcp_server.TCPServer._idle_timeout
                and self.arm(task_group, server)):
            return
        if self._stock is None:
            self._stock = _originals["single_task"]()
        await self._stock.restart(task_group, action)

    async def stop(self) -> None:
        self.disarm()
        if self._stock is not None:
            await self._stock.stop()

    def arm(self, task_group: Any, server: Any) -> bool:
        """(Re)start the timeout; False where the worker's terminated event cannot tell."""
        context = server.context
        armed = _armed_timers(context)
        if armed is None:
            return False
        self.disarm()
        delay = 0 if context.terminated.is_set() else server.config.keep_alive_timeout
        self._handle = server.loop.call_later(delay, self.fire)
        self._server = (task_group, server)
        self._armed = armed
        armed.add(self)
        return True

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed.discard(self)  # type: ignore[union-attr]
            self._armed = self._server = None

    def fire(self) -> None:
        """The timeout: Hypercorn's ``_idle_timeout`` once its wait is over."""
        if self._handle is None:
            return
        task_group, server = self._server
        self.disarm()
        if getattr(server, "protocol", None) is None:  # the connection has ended
            return
        close = server._initiate_server_close()
        try:
            task_group._task_group.create_task(close)
        except RuntimeError:  # its task group is ending: so is the connection
            close.close()


def _armed_timers(context: Any) -> set[IdleTimer] | None:
    """The worker's set of armed timers, fired when it is terminated (made once)."""
    armed = context.__dict__.get("_sse_idle_timers")
    if armed is None:
        on_set = getattr(context.terminated, "on_set", None)
        if on_set is None:
            return None
        armed = context._sse_idle_timers = set()
        on_set(lambda: [timer.fire() for timer in list(armed)])
    return armed


# -- the connection ---------------------------------------------------------------------------

async def _run(self: Any) -> None:
    """Hypercorn 0.18's ``TCPServer.run`` (the idle timer armed without awaiting), then the
    ended connection lets go of its parts (see :mod:`.lean`)."""
    socket = self.writer.get_extra_info("socket")
    try:
        client = parse_socket_addr(socket.family, socket.getpeername())
        server = parse_socket_addr(socket.family, socket.getsockname())
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            ssl = True
            alpn_protocol = ssl_object.selected_alpn_protocol()
        else:
            ssl = False
            alpn_protocol = "http/1.1"
            self._sse_plain = _direct_write  # a response head may wait for its body (.proto)

        group = _tasks.LeanTaskGroup if _lean_tasks else _tcp_server.TaskGroup
        async with group(self.loop) as task_group:
            self._task_group = task_group
            self.protocol = _tcp_server.ProtocolWrapper(
                self.app, self.config, self.context, task_group,
                _tcp_server.ConnectionState(self.state), ssl, client, server,
                self.protocol_send, alpn_protocol,
            )
            await self.protocol.initiate()
            await self.idle_task.restart(task_group, self._idle_timeout)
            if self.config.read_timeout is not None:
                await self._read_data()
            else:  # _read_data's loop, without wait_for, here: one coroutine frame less
                _lean_writer(self.writer)
                reader, loop = self.reader, self.loop
                # HTTP/1.1 on plain TCP: an app this task may run itself (see _run_held)
                hold = _inline_wait and not ssl and type(task_group) is _tasks.LeanTaskGroup
                reading = True
                while reading and not reader.at_eof():
                    try:
                        waiter = _waiter(reader, loop)
                        if waiter is not None:  # StreamReader._wait_for_data, inlined
                            try:
                                await waiter
                            finally:
                                reader._waiter = None
                        data = await reader.read(_tcp_server.MAX_RECV)
                    except (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError, SSLError):
                        break
                    if not hold:
                        await self.protocol.handle(RawData(data))
                        continue
                    task_group.hold = True
                    try:
                        await self.protocol.handle(RawData(data))
                    except BaseException:
                        held, task_group.hold = task_group.hold, None
                        if held is not True and held is not None:
                            task_group.create_task(held)  # it runs, as it would have
                        raise
                    held, task_group.hold = task_group.hold, None
                    if held is not True and held is not None:  # see _Handover
                        handover = _Handover(self, task_group)
                        try:
                            await held
                        finally:
                            reading = handover.end()
                if reading:  # else the reader task has it
                    await self.protocol.handle(Closed())
    except OSError:
        pass
    finally:
        try:
            flush_head(self)
            await self._close()
        finally:
            self.__dict__.clear()


class _Handover:
    """A held HTTP/1.1 app (:func:`.lean._may_hold`) runs in the connection's own task, so
    that a streaming response's connection keeps one task, not two. Meanwhile reading
    goes on by callback: the first data or end of stream arriving starts a task that
    reads for the rest of the connection (Hypercorn's loop: pipelined requests, the
    disconnect). Made when the app starts; :meth:`end` when it has returned."""

    __slots__ = ("server", "task_group", "waiter", "claimed")

    def __init__(self, server: Any, task_group: Any) -> None:
        self.server, self.task_group, self.claimed = server, task_group, False
        self.waiter = waiter = _waiter(server.reader, server.loop)
        if waiter is None:  # data or its end already there
            self(None)
        else:
            waiter.add_done_callback(self)

    def __call__(self, waiter: asyncio.Future[None] | None) -> None:
        if self.claimed:
            return
        self.claimed = True
        reader = self.server.reader
        if waiter is not None and reader._waiter is waiter:
            reader._waiter = None
        self.task_group.create_task(_read_loop(self.server))

    def end(self) -> bool:
        """Whether the connection task reads on (nothing arrived while the app ran)."""
        if self.claimed:
            return False
        self.claimed = True
        waiter = self.waiter
        waiter.remove_done_callback(self)  # type: ignore[union-attr]
        if self.server.reader._waiter is waiter:
            self.server.reader._waiter = None
        waiter.cancel()  # type: ignore[union-attr]
        return True


async def _read_loop(self: Any) -> None:
    """The reader task's loop: ``run``'s, for the rest of the connection."""
    reader, loop = self.reader, self.loop
    try:
        while not reader.at_eof():
            try:
                waiter = _waiter(reader, loop)
                if waiter is not None:
                    try:
                        await waiter
                    finally:
                        reader._waiter = None
                data = await reader.read(_tcp_server.MAX_RECV)
            except (ConnectionError, OSError, asyncio.TimeoutError, TimeoutError, SSLError):
                break
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())
    except OSError:
        pass


def _lean_writer(writer: Any) -> None:
    """A list for the stream protocol's drain waiters instead of its 760-byte deque."""
    if _list_drain_waiters:
        protocol = getattr(writer, "_protocol", None)
        if type(getattr(protocol, "_drain_waiters", None)) is deque and not protocol._drain_waiters:
            protocol._drain_waiters = []


def _waiter(reader: Any, loop: Any) -> asyncio.Future[None] | None:
    """When the reader has nothing yet: the future its ``feed_data``/``feed_eof`` will
    wake, as ``_wait_for_data`` makes it (awaited by the connection's own frame, so an
    idle connection keeps no reader frames); None where ``read`` would not wait."""
    if (not _inline_wait or reader._buffer or reader._eof or reader._exception is not None
            or reader._waiter is not None):
        return None
    if reader._paused:
        reader._paused = False
        reader._transport.resume_reading()
    waiter = reader._waiter = loop.create_future()
    return waiter


async def _protocol_send(self: Any, event: Any) -> None:
    """Hypercorn 0.18's ``protocol_send``: a write while nobody holds or waits for the send
    lock needs neither; ``drain()`` is awaited (under the lock) only when it would wait."""
    kind = type(event)
    if kind is RawData:
        lock = self.send_lock
        data = event.data
        if lock._locked and self.__dict__.get("_sse_head") is not None:  # .proto's head
            data = self._sse_head + data
            self._sse_head = None
            lock.release()
        if not _direct_write or lock._locked or lock._waiters:
            return await _originals["send"](self, event if data is event.data else RawData(data))
        writer = self.writer
        try:
            writer.write(data)
        except (ConnectionError, RuntimeError):
            await self.protocol.handle(Closed())
            return
        protocol = writer._protocol
        if (protocol._paused or protocol._connection_lost or writer.transport.is_closing()
                or (writer._reader is not None and writer._reader._exception is not None)):
            async with lock:
                try:
                    await writer.drain()
                except (ConnectionError, RuntimeError):
                    await self.protocol.handle(Closed())
    elif kind is Updated and type(self.idle_task) is IdleTimer and self.idle_task._stock is None:
        if not event.idle:
            self.idle_task.disarm()
        elif not self.idle_task.arm(self._task_group, self):
            await self.idle_task.restart(self._task_group, self._idle_timeout)
    else:
        flush_head(self)
        await _originals["send"](self, event)
