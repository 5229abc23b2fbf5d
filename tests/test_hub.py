"""sse_notify.hub: registration, fan-out, topic filter, bounded buffers, overflow."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from sse_notify.hub import Hub, Stream
from sse_notify.models import Notification, ReadChange
from sse_notify.wire import KEEPALIVE


def note(id: int, user: str | None = "alice", topic: str | None = None) -> Notification:
    return Notification(id, user, topic, f"title {id}", None, "medium", None, 1764064800000 + id)


def ids(batch: list) -> list[int | None]:
    return [e.id for e in batch]


def kinds(batch: list) -> list[str]:
    return [json.loads(e.ws)["type"] for e in batch]


async def next_batch(stream: Stream, timeout: float) -> list:
    """What a consumer gets: wait (here up to ``timeout`` s), then take what is buffered."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stream.wait(), timeout)
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


async def test_a_users_streams_open_and_close_in_any_order() -> None:
    """One stream is held as itself, two or more in a set, back to one when one is left:
    counts, presence and dispatch agree through every step, whichever stream closes."""
    hub = Hub()
    first, second, third = (hub.subscribe("alice") for _ in range(3))
    await first.__aenter__()
    assert hub.user_streams() == {"alice": 1} and hub.take_changed() == {"alice": 1}
    await second.__aenter__()
    await third.__aenter__()
    assert hub.user_streams() == {"alice": 3} and hub.take_changed() == {"alice": 3}
    await first.__aexit__(None, None, None)
    await third.__aexit__(None, None, None)
    assert (hub.count(), hub.user_count(), hub.user_streams()) == (1, 1, {"alice": 1})
    assert hub.take_changed() == {"alice": 1}
    hub.dispatch([note(1, "alice")])
    assert ids(await drain(second)) == [1]
    assert first.take() == [] and third.take() == []  # the closed ones no longer receive
    await second.__aexit__(None, None, None)
    assert (hub.count(), hub.user_count(), hub.user_streams()) == (0, 0, {})
    assert hub.take_changed() == {"alice": 0}


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


async def test_a_quiet_wait_keeps_no_timer_of_its_own() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as stream:
        stream.go_live(0, None, heartbeat=60)
        waiter = stream.wait()
        await asyncio.sleep(0)
        assert not waiter.done() and stream._timer is None  # the hub's sweep keeps time
        assert hub._sweep_next is not None  # ...one timer for every stream
    assert hub._sweep_next is None  # and none once no stream is open


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
        waiter = stream.wait()
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


# -- the sweep: keepalives and wake-ups, one timer for all streams --------------------

async def until(condition: object, timeout: float = 5.0) -> None:
    """Wait for ``condition()`` (checked every loop turn) to hold, at most ``timeout`` s."""
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)


async def test_the_sweep_pushes_a_keepalive_after_a_quiet_heartbeat_without_waking_the_task() -> None:
    hub = Hub()
    written: list[list] = []
    loop = asyncio.get_running_loop()
    async with hub.subscribe("alice") as stream:
        start = loop.time()
        stream.go_live(0, lambda batch: written.append(list(batch)) or True, heartbeat=0.1)
        waiter = stream.wait()
        await until(lambda: written)
        assert loop.time() - start >= 0.1  # not before a whole quiet heartbeat
        assert written == [[KEEPALIVE]] and not waiter.done()
        assert stream.written_at >= start + 0.1
        hub.dispatch([note(1)])  # traffic counts: the next keepalive waits a heartbeat from it
        await until(lambda: len(written) == 2)
        pushed_at = stream.written_at
        await until(lambda: len(written) == 3)
        assert written[2] == [KEEPALIVE] and stream.written_at - pushed_at >= 0.1
        assert not waiter.done()


async def test_without_a_push_the_sweep_wakes_the_task_for_its_keepalive() -> None:
    hub = Hub()
    loop = asyncio.get_running_loop()
    async with hub.subscribe("alice") as stream:
        start = loop.time()
        stream.go_live(0, None, heartbeat=0.1)
        async with asyncio.timeout(5):
            await stream.wait()
        assert loop.time() - start >= 0.1 and stream.take() == []  # woken with nothing: time's up


async def test_a_refused_keepalive_push_wakes_the_task_and_a_sending_task_is_left_alone() -> None:
    hub = Hub()
    refused: list[list] = []
    async with hub.subscribe("alice") as stream:
        stream.go_live(0, lambda batch: refused.append(batch) and False, heartbeat=0.05)
        stream.sending = True  # the task is writing: it counts as traffic once written
        await asyncio.sleep(0.2)  # several sweeps: none may touch a sending stream
        assert refused == []
        stream.sending = False
        async with asyncio.timeout(5):
            await stream.wait()
        assert refused == [[KEEPALIVE]]


async def test_the_sweep_wakes_the_task_at_its_wake_up_time_not_before() -> None:
    import time

    hub = Hub()
    async with hub.subscribe("alice") as stream:
        stream.go_live(0, lambda batch: True, heartbeat=60)  # keepalives never wake it
        stream.wake_at_time(time.time() + 0.3)
        async with asyncio.timeout(5):
            await stream.wait()
        assert time.time() >= stream.wake_at
        assert time.time() - stream.wake_at < 0.2  # the exact moment, not the next sweep
        assert stream._timer is None  # the timer lived only until then
        stream.wake_at_time(time.time() + 1.5)  # beyond the next sweep: no timer yet...
        assert stream._timer is None
        async with asyncio.timeout(5):
            await stream.wait()  # ...the sweep before it arms one
        assert 0 <= time.time() - stream.wake_at < 0.2


async def test_a_replaying_stream_gets_no_keepalive_from_the_sweep() -> None:
    hub = Hub()
    async with hub.subscribe("alice") as replaying, hub.subscribe("bob") as live:
        replaying.heartbeat = 0.05  # as if set, but the stream has not gone live
        live.go_live(0, None, heartbeat=0.05)
        waiter = replaying.wait()
        async with asyncio.timeout(5):
            await live.wait()  # at least one sweep went past both
        assert not waiter.done()


async def test_a_sweep_of_many_streams_yields_to_the_loop() -> None:
    from sse_notify.hub import SWEEP_SLICE

    hub = Hub()
    written: list[int] = []
    other: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(hub.subscribe(f"u{i}"))
                   for i in range(2 * SWEEP_SLICE + 1)]
        for i, stream in enumerate(streams):
            stream.go_live(0, lambda batch, i=i: written.append(i) or True, heartbeat=0.05)
        loop = asyncio.get_running_loop()
        for stream in streams:  # every keepalive due at the next sweep
            stream.written_at = loop.time() - 1

        def meanwhile() -> None:  # once per loop turn until the sweep is over
            other.append(len(written))
            if len(written) < len(streams):
                loop.call_soon(meanwhile)

        loop.call_soon(meanwhile)
        await until(lambda: len(written) == len(streams))
        assert SWEEP_SLICE in other and 2 * SWEEP_SLICE in other  # it ran between slices


async def test_a_notification_nobody_here_can_receive_is_not_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # On one node of many most users have no stream on this node: encoding their
    # notifications would be work for nobody.
    from sse_notify import hub as hub_module

    encoded: list[int] = []
    real = hub_module.Outbound.notification
    monkeypatch.setattr(hub_module.Outbound, "notification",
                        classmethod(lambda cls, n: encoded.append(n.id) or real(n)))
    hub = Hub()
    hub.dispatch([note(1, "nobody-here")])
    assert encoded == []
    async with hub.subscribe("alice") as stream:
        hub.dispatch([note(2, "nobody-here"), note(3, "alice"), note(4, None)])
        assert encoded == [3, 4]
        assert [e.id for e in stream.take()] == [3, 4]
