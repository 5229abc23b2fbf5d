"""A connection's task group without ``asyncio.TaskGroup``, made for ``TCPServer.run``.

Hypercorn 0.18 gives every connection its ``TaskGroup`` (a wrapper object with a
``__dict__``) around an ``asyncio.TaskGroup`` (a second object, a set of tasks, a list of
errors, a future while it waits): about 700 bytes per connection, held as long as the
connection is open -- for an SSE stream, for hours. :class:`LeanTaskGroup` is Hypercorn's
``TaskGroup`` interface (``spawn``, ``spawn_app``, ``async with``) in one slotted object:

* ``spawn`` creates the task and keeps it (one task: the attribute; more: a set);
* leaving the ``async with`` waits for every task, spawned before or while it waits; if the
  body raised (the connection task cancelled included), the tasks are cancelled first;
* a task that fails with anything but its cancellation cancels the others and the
  connection's task, and the ``async with`` raises them in a ``BaseExceptionGroup``, as
  ``asyncio.TaskGroup`` does (the ASGI app's own errors never get here: Hypercorn's
  ``_handle`` logs them);
* ``spawn_app`` is :mod:`.lean`'s (its deque-free queue, the app awaited directly).

Used by :mod:`.conn`'s ``run`` where Hypercorn's ``TaskGroup`` source is the checked one
(:data:`CHECKED`); the idle timer's close goes through :meth:`LeanTaskGroup.create_task`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["CHECKED", "LeanTaskGroup"]

#: Hypercorn 0.18.0's ``TaskGroup`` class, whose interface this keeps (see :mod:`.conn`).
CHECKED = {"TaskGroup": "1260b105c058872d"}

_spawn_app: Any = None  # lean._spawn_app, set by lean.install (lean imports this module)


class LeanTaskGroup:
    """Hypercorn's ``TaskGroup`` for one connection (see the module docstring)."""

    __slots__ = ("_loop", "_tasks", "_parent", "_errors", "_state", "_waiter", "_cancelled_parent",
                 "hold")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._tasks: Any = None  # None, a task, or a set of them
        self._parent: asyncio.Task[Any] | None = None
        self._errors: list[BaseException] | None = None
        self._state = 0  # 0 running, 1 exiting, 2 aborting (tasks cancelled)
        self._waiter: asyncio.Future[None] | None = None
        self._cancelled_parent = False
        #: None: apps get their own task; True: the connection task would run an HTTP/1.1
        #: app itself (:mod:`.conn`); then the app's coroutine, held for it.
        self.hold: Any = None

    async def spawn_app(self, app: Any, config: Any, scope: Any, send: Any) -> Any:
        return await _spawn_app(self, app, config, scope, send)

    def spawn(self, func: Any, *args: Any) -> None:
        self.create_task(func(*args))

    @property
    def _task_group(self) -> LeanTaskGroup:  # where Hypercorn's code reaches for asyncio's
        return self

    def create_task(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        if self._state and self._tasks is None:
            coro.close()
            raise RuntimeError("TaskGroup is finished")
        task = self._loop.create_task(coro)
        tasks = self._tasks
        if tasks is None:
            self._tasks = task
        elif type(tasks) is set:
            tasks.add(task)
        else:
            self._tasks = {tasks, task}
        if self._state == 2:
            task.cancel()
        task.add_done_callback(self._done)
        return task

    def _tasks_list(self) -> list[asyncio.Task[Any]]:
        tasks = self._tasks
        return [] if tasks is None else list(tasks) if type(tasks) is set else [tasks]

    def _abort(self) -> None:
        self._state = 2
        for task in self._tasks_list():
            if not task.done():
                task.cancel()

    def _done(self, task: asyncio.Task[Any]) -> None:
        tasks = self._tasks
        if tasks is task:
            self._tasks = None
        elif type(tasks) is set:
            tasks.discard(task)
            if not tasks:
                self._tasks = None
        if self._tasks is None and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        if self._errors is None:
            self._errors = []
        self._errors.append(error)
        if self._state != 2:
            self._abort()
            if self._state != 1 and self._parent is not None:
                self._cancelled_parent = True
                self._parent.cancel()  # the connection ends, as with asyncio's TaskGroup
            self._state = 2

    async def __aenter__(self) -> LeanTaskGroup:
        self._parent = asyncio.current_task()
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self._state == 0:
            self._state = 1
        cancelled = exc if isinstance(exc, asyncio.CancelledError) else None
        if exc is not None and self._state != 2:
            self._abort()
        while self._tasks is not None:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            except asyncio.CancelledError as error:
                cancelled = cancelled or error
                if self._state != 2:
                    self._abort()
            finally:
                self._waiter = None
        errors = self._errors
        self._parent = self._errors = None
        if self._cancelled_parent:  # our own cancel of the connection task, not a caller's
            self._cancelled_parent = False
            if asyncio.current_task().uncancel() == 0:  # type: ignore[union-attr]
                cancelled = None
        if errors:
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                errors.append(exc)
            raise BaseExceptionGroup("unhandled errors in a TaskGroup", errors)
        if cancelled is not None:
            raise cancelled
