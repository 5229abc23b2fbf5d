"""sse_notify._hypercorn.tasks and the held app of _hypercorn.conn: a connection's task
group without asyncio's, and an HTTP/1.1 app without a body run in the connection's own
task -- asyncio's TaskGroup semantics kept, and HTTP/1.1 (keep-alive, pipelining, bodies,
100-continue, size limits, disconnects) served the same, in the real Hypercorn.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypercorn.asyncio.task_group import TaskGroup

from sse_notify._hypercorn import conn, lean, tasks
from .inprocess import body_size, hypercorn_serving, lifespan

pytestmark = pytest.mark.timeout(60)


def test_hypercorns_task_group_is_the_checked_one() -> None:
    # An upgrade lands here: read the new TaskGroup, check LeanTaskGroup keeps its
    # interface, then update tasks.CHECKED.
    digest = hashlib.sha256(inspect.getsource(TaskGroup).encode()).hexdigest()[:16]
    assert digest == tasks.CHECKED["TaskGroup"], "Hypercorn's TaskGroup changed: see tasks.py"


# -- the task group alone ---------------------------------------------------------------------

async def test_leaving_waits_for_every_task_even_those_spawned_meanwhile() -> None:
    done: list[str] = []

    async def late() -> None:
        await asyncio.sleep(0.01)
        done.append("late")

    async def first(group: tasks.LeanTaskGroup) -> None:
        await asyncio.sleep(0.01)
        group.spawn(late)
        done.append("first")

    async with tasks.LeanTaskGroup(asyncio.get_running_loop()) as group:
        group.spawn(first, group)
    assert done == ["first", "late"]
    with pytest.raises(RuntimeError):
        group.create_task(late())


async def test_a_failing_task_cancels_the_others_and_the_body_and_is_raised() -> None:
    cancelled: list[str] = []

    async def sleeper() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append("sleeper")
            raise

    async def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(BaseExceptionGroup) as raised:
        async with tasks.LeanTaskGroup(asyncio.get_running_loop()) as group:
            group.spawn(sleeper)
            group.spawn(fail)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.append("body")
                raise
    assert [type(e) for e in raised.value.exceptions] == [ValueError]
    assert sorted(cancelled) == ["body", "sleeper"]
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_a_cancelled_body_cancels_the_tasks() -> None:
    started = asyncio.Event()

    async def sleeper() -> None:
        await asyncio.sleep(30)

    async def body() -> None:
        async with tasks.LeanTaskGroup(asyncio.get_running_loop()) as group:
            group.spawn(sleeper)
            started.set()
            await asyncio.sleep(30)

    runner = asyncio.create_task(body())
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(runner, 5)


# -- in the real Hypercorn --------------------------------------------------------------------

class App:
    """``/stream`` streams until the client goes (the disconnect hook); ``/wait`` answers
    once ``release`` is set; anything else answers ``ok <n> <body length>``. Records the
    task each request ran in."""

    def __init__(self) -> None:
        self.tasks: list[str] = []
        self.release = asyncio.Event()
        self.gone = asyncio.Event()
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        self.tasks.append(asyncio.current_task().get_coro().__qualname__)  # type: ignore[union-attr]
        self.count += 1
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"open\n", "more_body": True})
            lean.disconnect_hook(receive)(self.gone.set)  # type: ignore[misc]
            await self.gone.wait()
            return
        size = await body_size(receive)
        if scope["path"] == "/wait":
            await self.release.wait()
        body = b"ok %d %d" % (self.count, size)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, int]]:
    assert lean.install() and conn._lean_tasks, "the lean task group is not installed"
    app = App()
    async with hypercorn_serving(app, h11_max_incomplete_size=4096) as serving:
        yield app, serving.port
    lean.uninstall()


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await asyncio.wait_for(reader.readexactly(length), 10)


async def test_a_request_without_body_runs_in_the_connection_task_and_keeps_alive(
        served: tuple[App, int]) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in (1, 2, 3):
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await answer(reader) == b"ok %d 0" % n
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert await answer(reader) == b"ok 4 5"
    # the held ones ran in the connection's task; one with a body in a task of its own
    assert app.tasks[:3] == [app.tasks[0]] * 3 and "_handle_asgi" not in app.tasks[0]
    assert app.tasks[3] == "_handle_asgi"
    writer.close()


async def test_a_stream_in_the_connection_task_sees_the_client_go(served: tuple[App, int]) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"open\n"), 10)
    assert "_handle_asgi" not in app.tasks[0]
    writer.close()
    await asyncio.wait_for(app.gone.wait(), 5)


async def test_pipelined_requests_are_answered_in_order(served: tuple[App, int]) -> None:
    app, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)  # in one segment: none held
    assert [await answer(reader) for _ in range(3)] == [b"ok 1 0", b"ok 2 0", b"ok 3 0"]
    # one held, the next arriving while it runs: the reader task takes over
    writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    while app.count < 4:
        await asyncio.sleep(0.01)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
    await asyncio.sleep(0.05)
    assert app.count == 4  # the second waits for the first's response
    app.release.set()
    assert await answer(reader) == b"ok 4 0" and await answer(reader) == b"ok 5 2"
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # and the connection lives on
    assert await answer(reader) == b"ok 6 0"
    writer.close()


async def test_expect_100_continue_and_chunked_bodies(served: tuple[App, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 100")
    writer.write(b"abc")
    assert await answer(reader) == b"ok 1 3"
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert await answer(reader) == b"ok 2 5"
    writer.close()


async def test_an_oversized_request_head_is_refused(served: tuple[App, int]) -> None:
    _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # h11 refuses a head still incomplete past the limit (a whole one in one read passes)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.split(b" ")[1] == b"431"
    writer.close()
