"""The front of a store's single writer, shared by the SQLite and PostgreSQL stores: the
queue of write jobs, the task that takes everything queued so far as one batch, and
stopping it.

A job is ``(kind, args, future)``; :meth:`WriterQueue._submit` queues one and wakes the
writer, whose loop hands each batch to the backend's ``_commit_batch`` (in the order
:meth:`WriterQueue._ordered` gives, the order of submission unless a backend says
otherwise). The transaction itself -- what each kind of job does, failures, retries --
is the backend's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import StoreUnavailable

__all__ = ["Job", "WriterQueue", "fail_jobs"]

Job = tuple[str, tuple[Any, ...], "asyncio.Future[Any]"]


def fail_jobs(jobs: list[Job], error: Exception) -> None:
    """Answer every job not answered yet with ``error``."""
    for *_, future in jobs:
        if not future.done():
            future.set_exception(error)


class WriterQueue:
    """Mixin: the write queue and its writer task. A subclass calls :meth:`_init_queue`
    in its ``__init__`` and implements ``_commit_batch(jobs)``."""

    _jobs: list[Job]
    _wake: asyncio.Event
    _writer_task: asyncio.Task[None] | None
    _closing: bool

    def _init_queue(self) -> None:
        self._jobs = []
        self._wake = asyncio.Event()
        self._writer_task = None
        self._closing = False

    async def _commit_batch(self, jobs: list[Job]) -> None:
        raise NotImplementedError

    def _ordered(self, jobs: list[Job]) -> list[Job]:
        """The order a batch's jobs run in: as submitted."""
        return jobs

    def _start_writer(self, name: str) -> None:
        self._closing = False
        self._writer_task = asyncio.create_task(self._run_writer(), name=name)

    async def _stop_writer(self) -> None:
        """Let the batch in progress finish, then fail the jobs that never started."""
        self._closing = True
        if self._writer_task is not None:
            self._wake.set()
            await asyncio.wait([self._writer_task])  # finishes the batch in progress, then stops
            self._writer_task = None
        fail_jobs(self._jobs, StoreUnavailable("the store is closed"))  # queued, never started
        self._jobs = []

    def _submit(self, kind: str, *args: Any) -> asyncio.Future[Any]:
        if self._closing or self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.append((kind, args, future))
        self._wake.set()
        return future

    async def _run_writer(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            jobs, self._jobs = self._jobs, []
            if jobs:
                await self._commit_batch(self._ordered(jobs))
