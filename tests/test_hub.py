"""sse_notify.hub: registration, fan-out, topic filter, bounded buffers, overflow."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from sse_notify.hub import Hub, Stream
from sse_notify.models import Notification, ReadChange


def note(id: int, user: str | None = "alice", topic: str | None = None) -> Notification:
    return Notification(id, user, topic, f"title {id}", None, "medium", None, 1764064800000 + id)


def ids(batch: list) -> list[int | None]:
    return [e.id for e in batch]


def kinds(batch: list) -> list[str]:
    return [json.loads(e.ws)["type"] for e in batch]


async def next_batch(stream: Stream, timeout: float) -> list:
    """What a consumer gets: wait (up to ``timeout`` s), then take what is buffered."""
    await stream.wait(timeout)
    return stream.take()


async def drain(stream: Stream) -> list:
    """What is buffered right now (the wait ends at once when the buffer is not empty)."""
    return await next_batch(stream, 5)


# -- registration ---------------------------------------------------------------------

async def test_subscribe_registers_and_unregisters() -> None:
    hub = Hub()
    async with hub.subscribe("alice", transport="sse") as a1:
        async with hub.subscribe("alice", transport="ws") as a2:
            async with hub.subscribe("bob") as b:
                assert {a1.user, a2.user, b.user} == {"alice", "bob"}
                assert (hub.count(), hub.count("sse"), hub.count("ws"), hub.user_count()) == (3, 2, 1, 2)
            assert (hub.count(), hub.user_count()) == (2, 1)
        assert (hub.count(), hub.user_count()) == (1, 1)
    assert (hub.count(), hub.user_count()) == (0, 0)
    hub.dispatch([note(1)])  # nobody listening: nothing breaks, nothing kept
    assert hub.stats.delivered == 0


async def test_subscribe_unregisters_when_the_body_raises() -> None:
    hub = Hub()
    with pytest.raises(RuntimeError, match="boom"):
        async with hub.subscribe("alice") as stream:
            assert hub.count() == 1
            raise RuntimeError("boom")
    assert (hub.count(), hub.user_count()) == (0, 0)
    hub.dispatch([note(1)])
    assert await next_batch(stream, 0.01) == []  # the dead stream no longer receives anything


async def test_subscribe_unregisters_when_cancelled() -> None:
    hub = Hub()
    entered = asyncio.Event()

    async def hold() -> None:
        async with hub.subscribe("alice"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold())
    await entered.wait()
    assert hub.count() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (hub.count(), hub.user_count()) == (0, 0)


# -- dispatch -------------------------------------------------------------------------

async def test_dispatch_to_own_streams_only() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as a1, hub.subscribe("alice") as a2, hub.subscribe("bob") as b:
        hub.dispatch([note(1, "alice"), note(2, "bob"), note(3, "alice")])
        assert ids(await drain(a1)) == [1, 3]
        assert ids(await drain(a2)) == [1, 3]
        assert ids(await drain(b)) == [2]


async def test_broadcast_reaches_every_stream() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as a, hub.subscribe("bob") as b, hub.subscribe("carol", transport="ws") as c:
        hub.dispatch([note(1, None)])
        for stream in (a, b, c):
            assert ids(await drain(stream)) == [1]


async def test_topic_filter() -> None:
    hub = Hub()
    async with hub.subscribe("alice", frozenset({"chat", "news"})) as filtered, \
            hub.subscribe("alice") as unfiltered:
        hub.dispatch([note(1, "alice", "chat"), note(2, "alice", None), note(3, "alice", "sport"),
                      note(4, None, "news"), note(5, None, None)])
        assert ids(await drain(filtered)) == [1, 4]
        assert ids(await drain(unfiltered)) == [1, 2, 3, 4, 5]


async def test_read_events_reach_every_stream_of_the_user_regardless_of_topics() -> None:
    hub = Hub()
    async with hub.subscribe("alice", frozenset({"chat"})) as a1, hub.subscribe("alice") as a2, \
            hub.subscribe("bob") as b:
        hub.dispatch([ReadChange("alice", (1, 2))])
        for stream in (a1, a2):
            [event] = await drain(stream)
            assert event.id is None and json.loads(event.ws) == {"type": "read", "ids": [1, 2]}
        assert await next_batch(b, 0.01) == []


async def test_one_outbound_object_is_shared_by_all_streams() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as a1, hub.subscribe("alice", transport="ws") as a2, \
            hub.subscribe("bob") as b:
        hub.dispatch([note(1, None), note(2, "alice"), ReadChange("alice", (1,))])
        (x1, y1, r1), (x2, y2, r2), (x3,) = await drain(a1), await drain(a2), await drain(b)
        assert x1 is x2 is x3
        assert y1 is y2
        assert r1 is r2


async def test_dispatch_keeps_order_across_kinds() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as stream:
        hub.dispatch([note(1), ReadChange("alice", (1,)), note(2, None)])
        hub.dispatch([note(3)])
        assert ids(await drain(stream)) == [1, None, 2, 3]


# -- buffers and overflow -------------------------------------------------------------

async def test_live_stream_overflow_closes_it() -> None:
    hub = Hub(stream_buffer=3)
    closed: list[str] = []
    async with hub.subscribe("alice") as stream, hub.subscribe("alice") as healthy:
        stream.replaying = healthy.replaying = False
        stream.on_close = lambda: closed.append(stream.close_reason)
        hub.dispatch([note(1), note(2), note(3)])
        assert stream.close_reason is None and hub.stats.slow_disconnects == 0
        assert ids(await drain(healthy)) == [1, 2, 3]
        hub.dispatch([note(4)])  # the 4th buffered event: one more than the buffer holds
        assert stream.close_reason == "overflow"
        assert closed == ["overflow"]
        assert hub.stats.slow_disconnects == 1
        assert healthy.close_reason is None and ids(await drain(healthy)) == [4]
        hub.dispatch([note(5), note(6)])  # a closed stream takes nothing more...
        assert await next_batch(stream, 5) == []  # ...and never waits
        assert closed == ["overflow"] and hub.stats.slow_disconnects == 1


async def test_overflow_while_replaying_marks_lagged_and_keeps_control_events() -> None:
    hub = Hub(stream_buffer=2)
    closed: list[str] = []
    async with hub.subscribe("alice") as stream:
        assert stream.replaying
        stream.on_close = lambda: closed.append("closed")
        hub.dispatch([ReadChange("alice", (7,)), note(1), note(2)])
        assert stream.lagged is True
        assert stream.close_reason is None and closed == [] and hub.stats.slow_disconnects == 0
        assert kinds(await drain(stream)) == ["read"]


async def test_overflow_of_control_events_while_replaying_still_closes() -> None:
    hub = Hub(stream_buffer=1)
    async with hub.subscribe("alice") as stream:
        hub.dispatch([ReadChange("alice", (1,)), ReadChange("alice", (2,))])
        assert stream.close_reason == "overflow"
        assert hub.stats.slow_disconnects == 1


# -- wait and take ---------------------------------------------------------------------

async def test_next_batch_returns_everything_buffered_at_once() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as stream:
        hub.dispatch([note(1)])
        hub.dispatch([note(2), note(3)])
        assert ids(await next_batch(stream, 5)) == [1, 2, 3]
        assert await next_batch(stream, 0.01) == []


async def test_next_batch_returns_empty_on_timeout() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as stream:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await next_batch(stream, 0.05) == []
        assert loop.time() - start >= 0.04


async def test_next_batch_wakes_when_an_event_arrives() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as stream:
        waiting = asyncio.create_task(next_batch(stream, 30))
        await asyncio.sleep(0)  # a scheduling yield: let it start waiting
        assert not waiting.done() and stream._waiter is not None
        hub.dispatch([note(1), note(2)])
        async with asyncio.timeout(2):
            assert ids(await waiting) == [1, 2]


async def test_close_all_ends_every_stream() -> None:
    hub = Hub()
    reasons: list[str] = []
    async with hub.subscribe("alice") as a, hub.subscribe("bob", transport="ws") as b:
        a.on_close = lambda: reasons.append("a")
        b.on_close = lambda: reasons.append("b")
        waiting = asyncio.create_task(next_batch(a, 30))
        await asyncio.sleep(0)
        hub.dispatch([note(1, "bob")])
        hub.close_all()
        async with asyncio.timeout(2):
            assert await waiting == []
        assert (a.close_reason, b.close_reason) == ("shutdown", "shutdown")
        assert sorted(reasons) == ["a", "b"]
        assert await next_batch(b, 5) == []  # buffered events are dropped
        assert hub.stats.slow_disconnects == 0
        hub.close_all("again")  # closing twice keeps the first reason, calls on_close once
        assert a.close_reason == "shutdown" and sorted(reasons) == ["a", "b"]


# -- push from the hub ----------------------------------------------------------------

async def flushed() -> None:
    """Let the hub's flusher run to its end (it yields between slices)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def test_a_live_stream_with_a_push_is_written_by_the_hub_without_waking_its_task() -> None:
    hub = Hub()
    written: list[list[int | None]] = []
    async with hub.subscribe("alice") as stream:
        stream.go_live(0, lambda batch: written.append(ids(batch)) or True)
        waiter = stream.wait(60)
        hub.dispatch([note(1), note(2)])
        hub.dispatch([note(3)])
        await flushed()
        assert written == [[1, 2, 3]]  # one write for everything queued before the flush
        assert not waiter.done() and stream.take() == []
        assert stream.last == 3 and hub.stats.delivered == 3


async def test_the_push_starts_only_after_the_replay_and_skips_what_it_sent() -> None:
    hub = Hub()
    written: list[list[int | None]] = []
    async with hub.subscribe("alice") as stream:
        hub.dispatch([note(4), note(5)])  # buffered while replaying: no push yet
        await flushed()
        assert written == []
        stream.go_live(4, lambda batch: written.append(ids(batch)) or True)  # the replay sent up to 4
        await flushed()
        hub.dispatch([note(5), note(6)])  # 5 reached the hub late: already sent
        await flushed()
        assert written == [[5], [6]] and hub.stats.delivered == 2


async def test_a_refused_push_or_a_sending_task_leaves_the_batch_to_the_task() -> None:
    hub = Hub()
    writable = False
    written: list[list[int | None]] = []

    def push(batch: list) -> bool:
        if writable:
            written.append(ids(batch))
        return writable

    async with hub.subscribe("alice") as stream:
        stream.go_live(0, push)
        hub.dispatch([note(1)])
        await flushed()
        assert written == [] and ids(stream.fresh()) == [1]  # the task takes it, waiting for the socket
        stream.sending = True
        writable = True
        hub.dispatch([note(2)])
        await flushed()
        assert written == [] and ids(stream.fresh()) == [2]
        stream.sending = False
        hub.dispatch([note(3)])
        await flushed()
        assert written == [[3]]


async def test_a_broadcast_to_many_pushed_streams_yields_to_the_loop() -> None:
    from sse_notify.hub import PUSH_SLICE

    hub = Hub()
    written: list[str] = []
    other: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        for i in range(3 * PUSH_SLICE):
            stream = await stack.enter_async_context(hub.subscribe(f"u{i}"))
            stream.go_live(0, lambda batch, i=i: written.append(f"u{i}") or True)
        hub.dispatch([note(1, None)])

        async def meanwhile() -> None:
            other.append(len(written))

        task = asyncio.create_task(meanwhile())  # scheduled after the flusher's first turn
        await flushed()
        await task
        assert len(written) == 3 * PUSH_SLICE
        assert other == [PUSH_SLICE]  # it ran between the first slice and the second
