"""Smaller per-connection objects for Hypercorn's asyncio worker, and a disconnect hook.

An idle SSE stream costs Hypercorn and asyncio more than it costs sse-notify: each of
``asyncio.Queue`` (the ASGI app queue: three deques and an ``Event`` with a fourth) and
``asyncio.Event`` (the HTTP/1.1 ``can_read`` event) allocates a 760-byte deque up front,
and every read is wrapped in ``asyncio.wait_for`` even without a read timeout.
:func:`install` replaces, for the asyncio worker and the :data:`~sse_notify._hypercorn.TESTED`
versions only:

* ``TaskGroup.spawn_app``'s queue by :class:`AppQueue`: the same bound
  (``config.max_app_queue_size``) and the same ``put``/``get`` behaviour as
  ``asyncio.Queue`` (FIFO, ``put`` waits while full, ``get`` while empty, a cancelled wait
  leaves the queue as it was and passes a wake-up on), in lists made only when needed;
* ``WorkerContext.event_class`` by :class:`LeanEvent`, ``EventWrapper``'s interface over
  a flag and a list of waiters made only while someone waits;
* the task of an ASGI app awaits the app itself, not ``ASGIWrapper`` around it;
* and, through :mod:`.conn`, ``TCPServer``'s connection loop: a timer handle for the
  idle timeout, writes without the send lock when nobody waits for it, reads without
  ``wait_for`` or reader frames, a ``Date`` header formatted once a second, and the
  ended connection's attributes cleared: its objects (the server, its protocol, h11
  connection, streams, task group, reader and writer: about 35 per connection) refer to
  one another in cycles, so without this every closed connection stays in memory until a
  full enough collection finds it -- under connect/disconnect churn the heap's
  high-water mark kept rising. Cleared, they are freed by reference counting the moment
  the connection ends.

:func:`disconnect_hook` is the other half, shaped as an ASGI extension a server could
offer: from an ASGI ``receive`` it finds the :class:`AppQueue` behind it and returns a
function that registers a callback, called (synchronously, from Hypercorn's side) when
``http.disconnect`` or ``websocket.disconnect`` is put. An app that registers one says it
will not call ``receive`` again: the queue then keeps no messages, so a request body can
never fill it and hold the disconnect back. With it an SSE stream needs no task waiting
for ``http.disconnect``; where it is not available (another server, version or worker)
the caller keeps that task.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from . import conn, proto, supported, tasks

try:  # what is replaced and what the replacements call (absent: nothing is installed)
    from hypercorn.asyncio import task_group as _task_group
    from hypercorn.asyncio import worker_context as _worker_context
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio.task_group import _handle
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream
    import h11
except ImportError:  # pragma: no cover
    _task_group = None  # type: ignore[assignment]

__all__ = ["AppQueue", "LeanEvent", "DisconnectHook", "CHECKED", "disconnect_hook", "install",
           "installed", "uninstall", "unchanged"]

#: Registers the callback called when the client disconnects (None: no callback).
DisconnectHook = Callable[[Callable[[], object] | None], None]

#: What is replaced or called, as the source of Hypercorn 0.18.0 has it (sha256 of
#: ``inspect.getsource``, first 16 hex digits): any other source and nothing is installed.
CHECKED = {
    "TaskGroup.spawn_app": "6606faaadfc368e3",
    "EventWrapper": "04c3221b13f0a31f",
    "_handle": "e37cfe3db06eb470",
    "ASGIWrapper.__call__": "5d03a825739dd4e8",
}

_DISCONNECTS = frozenset({"http.disconnect", "websocket.disconnect"})
_SENTINEL_WATCHING = object()


def _wake_next(waiters: list[asyncio.Future[None]] | None) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            break


class AppQueue:
    """A bounded FIFO with ``asyncio.Queue``'s ``put``/``get``, no deques, and an
    optional disconnect callback (:meth:`watch_disconnect`)."""

    __slots__ = ("_maxsize", "_items", "_getters", "_putters", "_on_disconnect", "_gone")

    def __init__(self, maxsize: int = 0):
        self._maxsize = maxsize
        self._items: list[Any] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None
        #: None: the app reads; else its callback (or a placeholder: watching, no callback).
        self._on_disconnect: Any = None
        self._gone = False

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return 0 < self._maxsize <= len(self._items)

    def empty(self) -> bool:
        return not self._items

    async def put(self, item: Any) -> None:
        if self._on_disconnect is not None:  # the app reads no more: nothing is kept
            self._disconnect_seen(item)
            return
        while self.full():
            putter = asyncio.get_running_loop().create_future()
            if self._putters is None:
                self._putters = []
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                putter.cancel()
                try:
                    self._putters.remove(putter)
                except ValueError:
                    pass
                if not self.full() and not putter.cancelled():
                    _wake_next(self._putters)
                raise
            if self._on_disconnect is not None:  # started watching while this put waited
                self._disconnect_seen(item)
                return
        self.put_nowait(item)

    def put_nowait(self, item: Any) -> None:
        if self.full():
            raise asyncio.QueueFull
        self._items.append(item)
        _wake_next(self._getters)

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                try:
                    self._getters.remove(getter)
                except ValueError:
                    pass
                if self._items and not getter.cancelled():
                    _wake_next(self._getters)
                raise
        return self.get_nowait()

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.pop(0)
        _wake_next(self._putters)
        return item

    def watch_disconnect(self, callback: Callable[[], object] | None) -> None:
        """From now on the app reads nothing more: drop what is queued, keep nothing put
        later, and call ``callback`` when the disconnect is put (at once if it was
        already). None drops a callback given before (the queue keeps discarding)."""
        self._on_disconnect = _SENTINEL_WATCHING if callback is None else callback
        items, self._items = self._items, []
        _wake_next(self._putters)
        if callback is not None and (self._gone or any(
                isinstance(m, dict) and m.get("type") in _DISCONNECTS for m in items)):
            self._gone = True
            callback()

    def _disconnect_seen(self, item: Any) -> None:
        if isinstance(item, dict) and item.get("type") in _DISCONNECTS and not self._gone:
            self._gone = True
            callback = self._on_disconnect
            if callback is not _SENTINEL_WATCHING:
                callback()


class LeanEvent:
    """``WorkerContext.event_class``: Hypercorn's ``EventWrapper`` interface (async
    ``set``/``clear``/``wait``, ``is_set``) without an ``asyncio.Event`` and its deque."""

    __slots__ = ("_flag", "_waiters")

    def __init__(self) -> None:
        self._flag = False
        self._waiters: list[asyncio.Future[None]] | None = None

    async def clear(self) -> None:
        self._flag = False

    async def set(self) -> None:
        if not self._flag:
            self._flag = True
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    async def wait(self) -> None:
        if self._flag:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            waiter.cancel()
            if self._waiters is waiters:  # set() has not taken the list away
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
            raise

    def is_set(self) -> bool:
        return self._flag

    def on_set(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` from the loop once the event is set (soon, if it is)."""
        waiter = asyncio.get_running_loop().create_future()
        waiter.add_done_callback(lambda _: callback())
        if self._flag:
            waiter.set_result(None)
        else:
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)


def disconnect_hook(receive: Callable[..., Any]) -> DisconnectHook | None:
    """For an ASGI ``receive`` served by :class:`AppQueue`: its
    :meth:`~AppQueue.watch_disconnect`; otherwise None (keep reading ``receive``)."""
    queue = getattr(receive, "__self__", None)
    if type(queue) is not AppQueue or getattr(receive, "__func__", None) is not AppQueue.get:
        return None
    return queue.watch_disconnect


# -- installing ------------------------------------------------------------------------------

_originals: dict[str, Any] = {}


def installed() -> bool:
    return bool(_originals)


def unchanged(*objects: Any) -> bool:
    """Whether each object's source is the one in :data:`CHECKED`."""
    for obj in objects:
        try:
            source = inspect.getsource(obj)
        except (OSError, TypeError):
            return False
        if CHECKED.get(obj.__qualname__) != hashlib.sha256(source.encode()).hexdigest()[:16]:
            return False
    return True


def install() -> bool:
    """Put the lean pieces into Hypercorn's asyncio worker (once); returns whether they
    are in place. Only for the tested versions, and only where the source of everything
    replaced is still the one this module was checked against (:data:`CHECKED`)."""
    if _originals:
        return True
    if not supported() or _task_group is None:
        return False
    task_group, worker_context = _task_group, _worker_context
    spawn_app = task_group.TaskGroup.spawn_app
    if (worker_context.WorkerContext.event_class is not worker_context.EventWrapper
            or not unchanged(spawn_app, worker_context.EventWrapper, _handle, ASGIWrapper.__call__)):
        return False
    _originals.update(spawn_app=spawn_app, event_class=worker_context.WorkerContext.event_class)
    task_group.TaskGroup.spawn_app = _spawn_app  # type: ignore[method-assign]
    worker_context.WorkerContext.event_class = LeanEvent  # type: ignore[assignment]
    tasks._spawn_app = _spawn_app  # the connection's LeanTaskGroup spawns apps as above
    conn.install()  # the connection loop (its own checks; Hypercorn's where they fail)
    proto.install()  # the request's header walk and the head with its body (the same)
    return True


def uninstall() -> None:
    """Put Hypercorn's own pieces back (for tests)."""
    if not _originals:
        return
    proto.uninstall()
    conn.uninstall()
    tasks._spawn_app = None
    task_group, worker_context = _task_group, _worker_context
    task_group.TaskGroup.spawn_app = _originals["spawn_app"]  # type: ignore[method-assign]
    worker_context.WorkerContext.event_class = _originals["event_class"]
    _originals.clear()


async def _spawn_app(self: Any, app: Any, config: Any, scope: Any, send: Any) -> Any:
    """Hypercorn 0.18's ``TaskGroup.spawn_app`` with an :class:`AppQueue`; an ASGI app is
    called directly (:func:`_handle_asgi`), without the wrapper's frame and the two
    callables only a WSGI app uses."""
    app_queue = AppQueue(config.max_app_queue_size)
    if type(app) is ASGIWrapper:
        if self.__class__ is tasks.LeanTaskGroup and self.hold is True and _may_hold(scope, send):
            self.hold = _handle_asgi(app.app, config, scope, app_queue.get, send)
        else:
            self.spawn(_handle_asgi, app.app, config, scope, app_queue.get, send)
        return app_queue.put
    loop = self._loop

    def _call_soon(func: Callable[..., Any], *args: Any) -> Any:
        future = asyncio.run_coroutine_threadsafe(func(*args), loop)
        return future.result()

    self.spawn(_handle, app, config, scope, app_queue.get, send,
               partial(loop.run_in_executor, None), _call_soon)
    return app_queue.put


def _may_hold(scope: Any, send: Any) -> bool:
    """Whether the connection task may run this request's app itself, once the data it
    is handling is handled: an HTTP/1.1 request (not a WebSocket, not HTTP/2) without a
    body and nothing after it in h11's buffer, so that handling the rest of that data
    waits neither for room in the app's queue nor for the response (pipelining)."""
    stream = getattr(send, "__self__", None)
    if type(stream) is not HTTPStream:
        return False
    protocol = getattr(stream.send, "__self__", None)
    if type(protocol) is not H11Protocol or type(protocol.connection) is not h11.Connection:
        return False
    if protocol.connection.trailing_data[0]:
        return False
    body = protocol.__dict__.get("sse_body")  # .proto's header walk answered it
    if body is not None:
        return not body
    for name, value in scope["headers"]:
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


async def _handle_asgi(app: Any, config: Any, scope: Any, receive: Any, send: Any) -> None:
    """Hypercorn 0.18's ``_handle`` for an ASGI app, which ``ASGIWrapper`` only awaits."""
    try:
        await app(scope, receive, send)
    except asyncio.CancelledError:
        raise
    except Exception:
        await config.log.exception("Error in ASGI Framework")
    finally:
        await send(None)
