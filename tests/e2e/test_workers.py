"""``sse-notify serve --workers N``: N processes on one port, each one a node of the same
PostgreSQL-backed service. The kernel spreads connections over them (``SO_REUSEPORT``),
a publish reaches streams on every worker, a killed worker is restarted, and SIGTERM
stops them all with exit status 0.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
from collections.abc import Callable
from contextlib import AsyncExitStack

import httpx
import pytest

from ..helpers import ServerProcess, open_sse, poll

STREAMS = 20


def open_streams(text: str) -> int:
    match = re.search(r'^sse_notify_open_streams\{transport="sse"\} (\S+)$', text, re.M)
    assert match, text
    return int(float(match.group(1)))


async def seen_by_fresh_connections(server: ServerProcess, count: int) -> list[int]:
    """``/metrics``' open SSE streams, each time over a new connection (so each lands on
    whichever worker the kernel picks)."""
    values = []
    for _ in range(count):
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as c:
            values.append(open_streams((await c.get("/metrics")).text))
    return values


def worker_pids(server: ServerProcess) -> list[int]:
    assert server.proc is not None
    children = f"/proc/{server.proc.pid}/task/{server.proc.pid}/children"
    with open(children) as fh:
        return [int(pid) for pid in fh.read().split()]


async def test_workers_share_one_port_and_deliver_across_processes(
        make_server: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = make_server("--workers", "2", "--store", postgres_url, "--no-access-log",
                         env={"SSE_NOTIFY_SECRET": secrets.token_urlsafe(32)})
    assert len(worker_pids(server)) == 2
    token = server.token("alice")
    async with AsyncExitStack() as stack:
        streams = [await stack.enter_async_context(open_sse(server, token)) for _ in range(STREAMS)]
        # Both workers hold some of the streams: no fresh connection sees all of them.
        values = await seen_by_fresh_connections(server, 12)
        assert max(values) < STREAMS and any(a + b == STREAMS for a in values for b in values), values
        ids = [i for _ in range(3) for i in await server.publish(user="alice", title="to every tab")]
        for stream in streams:
            assert [n["id"] for n in await stream.notifications(3)] == ids


async def test_a_killed_worker_is_replaced_and_sigterm_stops_them_all(
        make_server: Callable[..., ServerProcess], postgres_url: str) -> None:
    server = make_server("--workers", "2", "--store", postgres_url, "--no-access-log",
                         env={"SSE_NOTIFY_SECRET": secrets.token_urlsafe(32)})
    first, second = worker_pids(server)
    os.kill(second, signal.SIGKILL)
    assert await poll(lambda: _replaced(server, {first, second}), timeout=20), server.log
    assert "exited with status -9; restarting it" in server.log
    async with open_sse(server, server.token("bob")) as stream:
        ids = await server.publish(user="bob", title="after the kill")
        assert [n["id"] for n in await stream.notifications(1)] == ids
    workers = worker_pids(server)
    assert server.stop() == 0
    assert not [pid for pid in workers if os.path.exists(f"/proc/{pid}")]


async def _replaced(server: ServerProcess, before: set[int]) -> bool:
    pids = worker_pids(server)
    if len(pids) != 2 or set(pids) == before:
        return False
    async with server.client() as c:
        return (await c.get("/healthz")).status_code == 200


@pytest.mark.parametrize("flags, message", [
    (("--workers", "2"), "needs a store the processes share"),
    (("--workers", "2", "--broker", "memory://", "--store", "postgresql://postgres@127.0.0.1/x"),
     "needs a broker between the processes"),
])
def test_workers_refuse_what_processes_cannot_share(
        make_server: Callable[..., ServerProcess], flags: tuple[str, ...], message: str) -> None:
    server = make_server(*flags, start=False)
    with pytest.raises(RuntimeError):
        server.start()
    assert message in server.log and "Traceback" not in server.log
