"""sse_notify._hypercorn.lean: the deque-free app queue and event, and the disconnect hook,
unit by unit and installed in the real Hypercorn.

The Hypercorn tests exist to fail loudly when an upgrade changes what the module replaces:
a tested version pair, the source of every replaced function, the path from an ASGI
``receive`` to the queue behind it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sse_notify._hypercorn import conn, lean
from .inprocess import hypercorn_serving, lifespan

pytestmark = pytest.mark.timeout(30)


# -- AppQueue: asyncio.Queue's put/get ----------------------------------------------------

async def test_the_queue_is_fifo_and_get_waits_for_a_put() -> None:
    queue = lean.AppQueue(10)
    await queue.put(1)
    await queue.put(2)
    assert [await queue.get(), await queue.get()] == [1, 2]
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    await queue.put(3)
    assert await getter == 3 and queue.empty()


async def test_a_put_waits_while_the_queue_is_full() -> None:
    queue = lean.AppQueue(2)
    await queue.put(1)
    await queue.put(2)
    assert queue.full()
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(3)
    putter = asyncio.create_task(queue.put(3))
    await asyncio.sleep(0)
    assert not putter.done() and queue.qsize() == 2
    assert await queue.get() == 1
    await putter
    assert [queue.get_nowait(), queue.get_nowait()] == [2, 3]


async def test_zero_means_unbounded() -> None:
    queue = lean.AppQueue(0)
    for i in range(100):
        await queue.put(i)
    assert queue.qsize() == 100 and not queue.full()


async def test_a_cancelled_get_takes_nothing_and_the_next_getter_gets_the_item() -> None:
    queue = lean.AppQueue(10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    first.cancel()
    await queue.put("x")  # wakes the first getter, which was cancelled meanwhile
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(2):
        assert await second == "x"  # the wake-up was passed on
    assert queue.empty()


async def test_a_get_cancelled_after_its_wake_up_passes_it_on() -> None:
    queue = lean.AppQueue(10)
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    await queue.put("x")  # first is woken...
    first.cancel()  # ...and cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(2):
        assert await second == "x"


async def test_a_cancelled_put_leaves_the_queue_as_it_was() -> None:
    queue = lean.AppQueue(1)
    await queue.put(1)
    putter = asyncio.create_task(queue.put(2))
    await asyncio.sleep(0)
    putter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await putter
    assert queue.qsize() == 1 and queue.get_nowait() == 1 and queue.empty()


async def test_watching_for_the_disconnect_drops_what_is_queued_and_calls_back_once() -> None:
    queue = lean.AppQueue(2)
    calls: list[str] = []
    await queue.put({"type": "http.request", "body": b"", "more_body": True})
    await queue.put({"type": "http.request", "body": b"", "more_body": True})
    putter = asyncio.create_task(queue.put({"type": "http.request", "body": b"x"}))
    await asyncio.sleep(0)
    queue.watch_disconnect(lambda: calls.append("gone"))
    await putter  # a full queue no longer holds the sender back
    for _ in range(20):  # a request body can never fill it now
        await queue.put({"type": "http.request", "body": b"x", "more_body": True})
    assert queue.empty() and calls == []
    await queue.put({"type": "http.disconnect"})
    await queue.put({"type": "http.disconnect"})
    assert calls == ["gone"]


async def test_a_disconnect_already_queued_calls_back_at_once() -> None:
    queue = lean.AppQueue(10)
    await queue.put({"type": "websocket.disconnect", "code": 1000})
    calls: list[str] = []
    queue.watch_disconnect(lambda: calls.append("gone"))
    assert calls == ["gone"]


async def test_a_dropped_callback_is_not_called() -> None:
    queue = lean.AppQueue(10)
    calls: list[str] = []
    queue.watch_disconnect(lambda: calls.append("gone"))
    queue.watch_disconnect(None)
    await queue.put({"type": "http.disconnect"})
    assert calls == [] and queue.empty()


# -- LeanEvent: EventWrapper's interface ---------------------------------------------------

async def test_the_event_wakes_every_waiter_and_stays_set_until_cleared() -> None:
    event = lean.LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters) and not event.is_set()
    await event.set()
    async with asyncio.timeout(2):
        await asyncio.gather(*waiters)
    assert event.is_set()
    await event.wait()  # set: returns at once
    await event.clear()
    assert not event.is_set()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert event._waiters == []  # a cancelled wait leaves nothing behind
    await event.set()


# -- in the real Hypercorn ----------------------------------------------------------------

class App:
    """Records what the lean module finds; answers a streaming response until the client
    goes, watching the disconnect with the hook (or reading receive without it)."""

    def __init__(self) -> None:
        self.receives: list[Any] = []
        self.hooked: list[bool] = []
        self.gone = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        self.receives.append(receive)
        hook = lean.disconnect_hook(receive)
        self.hooked.append(hook is not None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"open\n", "more_body": True})
        if hook is not None:
            hook(self.gone.set)
        else:
            while (await receive())["type"] != "http.disconnect":
                pass
            self.gone.set()
        await self.gone.wait()


@pytest.fixture
async def server() -> AsyncIterator[tuple[App, int]]:
    app = App()
    async with hypercorn_serving(app) as serving:
        yield app, serving.port


@pytest.fixture
def installed() -> Any:
    assert lean.install(), "lean.install() refused: see test_the_replaced_hypercorn_source_is_the_checked_one"
    yield
    lean.uninstall()


def test_the_replaced_hypercorn_source_is_the_checked_one() -> None:
    # An upgrade lands here first: read the new source, check the replacements against
    # it, then update lean.CHECKED (and _hypercorn.TESTED).
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.asyncio import task_group, tcp_server, worker_context

    for obj in (task_group.TaskGroup.spawn_app, worker_context.EventWrapper, task_group._handle,
                ASGIWrapper.__call__):
        assert lean.unchanged(obj), f"{obj.__qualname__} is not the source lean.py replaces"
    # conn.py's: Hypercorn's connection loop, and the asyncio pieces it relies on.
    import asyncio.streams
    from hypercorn.config import Config

    checked = {"TCPServer": tcp_server.TCPServer, "AsyncioSingleTask": worker_context.AsyncioSingleTask,
               "Config.response_headers": Config.response_headers,
               "StreamReader.read": asyncio.streams.StreamReader.read,
               "StreamReader._wait_for_data": asyncio.streams.StreamReader._wait_for_data,
               "StreamWriter.drain": asyncio.streams.StreamWriter.drain,
               "Lock.acquire": asyncio.Lock.acquire, "FlowControlMixin": asyncio.streams.FlowControlMixin}
    assert set(checked) == set(conn.CHECKED)
    for name, obj in checked.items():
        assert conn.unchanged(**{name: obj}), f"{name} is not the source conn.py was checked against"


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        await reader.readuntil(b"open\n")
    return reader, writer


async def test_installed_the_app_gets_a_lean_queue_and_the_hook_sees_the_client_go(
        installed: None, server: tuple[App, int]) -> None:
    from hypercorn.asyncio.worker_context import WorkerContext

    app, port = server
    assert WorkerContext.event_class is lean.LeanEvent
    _, writer = await open_stream(port)
    assert type(app.receives[0].__self__) is lean.AppQueue, "spawn_app no longer gives the app our queue"
    assert app.hooked == [True]
    writer.close()
    async with asyncio.timeout(5):
        await app.gone.wait()  # the hook fired: no task was reading receive


async def test_without_install_the_app_keeps_reading_receive(server: tuple[App, int]) -> None:
    app, port = server
    assert not lean.installed()
    _, writer = await open_stream(port)
    assert type(app.receives[0].__self__) is asyncio.Queue and app.hooked == [False]
    writer.close()
    async with asyncio.timeout(5):
        await app.gone.wait()


async def test_another_version_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from sse_notify import _hypercorn

    monkeypatch.setattr(_hypercorn, "_supported", False)
    assert not lean.install() and not lean.installed()


async def test_a_changed_source_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(lean.CHECKED, "TaskGroup.spawn_app", "0" * 16)
    assert not lean.install() and not lean.installed()


async def test_a_changed_connection_loop_keeps_hypercorns(monkeypatch: pytest.MonkeyPatch) -> None:
    from hypercorn.asyncio import tcp_server

    monkeypatch.setitem(conn.CHECKED, "TCPServer", "0" * 16)
    stock_run = tcp_server.TCPServer.run
    try:
        assert lean.install()  # the queue and event still go in
        assert tcp_server.TCPServer.run is stock_run and tcp_server.AsyncioSingleTask is not conn.IdleTimer
    finally:
        lean.uninstall()



async def test_an_ended_connection_leaves_no_cycles_behind(installed: None, server: tuple[App, int]) -> None:
    # Without the cleared attributes each closed connection's Hypercorn objects (about 35)
    # wait in memory for the cyclic collector, which is off here so it cannot rescue them.
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol.h11 import H11Protocol

    app, port = server
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            _, writer = await open_stream(port)
            writer.close()
            await writer.wait_closed()
            async with asyncio.timeout(5):
                await app.gone.wait()
            app.gone.clear()
        # Each connection's run ends a moment after its socket closes: polled (no event
        # tells), bounded. Cleared or freed, no server keeps its protocol.
        deadline = asyncio.get_running_loop().time() + 5
        while any(type(o) is TCPServer and "protocol" in o.__dict__ for o in gc.get_objects()):
            assert asyncio.get_running_loop().time() < deadline, "an ended connection kept its objects"
            await asyncio.sleep(0.01)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o) in (TCPServer, H11Protocol)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == [], f"ended connections left in cycles: {left}"
