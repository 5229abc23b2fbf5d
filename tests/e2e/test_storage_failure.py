"""Storage failures against the real server: a full disk, a database locked by another
process, the database file removed. Each time publishing answers 503 with the JSON error
(never a 500, never a 201 that was not committed), ``/healthz`` answers 503, open streams
stay up, and the service recovers by itself when storage does.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from ..helpers import ServerProcess, open_sse, poll

pytestmark = pytest.mark.timeout(120)


async def publish(c: httpx.AsyncClient, server: ServerProcess, title: str, body: str = "") -> httpx.Response:
    return await c.post("/notifications", json={"user": "alice", "title": title, "body": body or None},
                        headers={"Authorization": f"Bearer {server.publisher_token()}"})


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == "unavailable" and resp.json()["message"]


async def healthy(c: httpx.AsyncClient) -> bool:
    return (await c.get("/healthz")).status_code == 200


async def history_ids(c: httpx.AsyncClient, server: ServerProcess) -> list[int]:
    resp = await c.get("/notifications?limit=200", headers={"Authorization": f"Bearer {server.token('alice')}"})
    return sorted(n["id"] for n in resp.json()["notifications"])


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs to fill up (needs root, as CI has)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_answers_503_keeps_streams_and_recovers(
        make_server: Callable[..., ServerProcess], small_disk: Path) -> None:
    server = make_server("--heartbeat", "0.5", data_dir=small_disk / "data")
    acknowledged: list[int] = []
    async with server.client() as c, open_sse(server, server.token("alice")) as stream:
        filler = small_disk / "filler"
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"\0" * max(0, free - 256 * 1024))
        payload = "x" * 4000
        for i in range(2000):  # bounded: the disk is full long before
            resp = await publish(c, server, f"n{i}", payload)
            if resp.status_code != 201:
                break
            acknowledged += resp.json()["ids"]
        assert_unavailable(resp)
        assert not await healthy(c)
        # the stream is still up: what was acknowledged arrived, and keepalives still come
        assert [n["id"] for n in await stream.notifications(len(acknowledged))] == acknowledged
        assert await stream.next_comment(timeout=5) == "keepalive"

        filler.unlink()  # space comes back
        assert await poll(lambda: healthy(c), timeout=10)
        resp = await publish(c, server, "after")
        assert resp.status_code == 201, resp.text
        acknowledged += resp.json()["ids"]
        assert (await stream.notifications(1))[0]["id"] == acknowledged[-1]
    await asyncio.to_thread(server.restart)  # everything acknowledged is still there
    async with server.client() as c:
        assert set(acknowledged) <= set(await history_ids(c, server))


async def test_database_locked_by_another_process_answers_503_then_recovers(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    async with server.client() as c, open_sse(server, server.token("alice")) as stream:
        assert (await publish(c, server, "before")).status_code == 201
        locker = sqlite3.connect(server.data_dir / "notifications.db", isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            started = time.monotonic()
            assert not await healthy(c)
            assert time.monotonic() - started < 4, "healthz must answer promptly"
            assert_unavailable(await publish(c, server, "while locked"))
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert await healthy(c)
        resp = await publish(c, server, "after")
        assert resp.status_code == 201
        got = await stream.notifications(2)
        assert [n["title"] for n in got] == ["before", "after"]  # nothing half-published


async def test_removed_database_file_answers_503_then_continues_in_a_new_file(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    db = server.data_dir / "notifications.db"
    async with server.client() as c, open_sse(server, server.token("alice")) as stream:
        [before] = (await publish(c, server, "before")).json()["ids"]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        # the next write finds its file gone: refused, not written into a deleted file
        assert_unavailable(await publish(c, server, "into the void"))
        assert await poll(lambda: healthy(c), timeout=10)
        resp = await publish(c, server, "after")
        assert resp.status_code == 201
        [after] = resp.json()["ids"]
        assert after > before  # ids never go back, even in a fresh file
        assert db.exists()
        assert [n["id"] for n in await stream.notifications(2)] == [before, after]
    await asyncio.to_thread(server.restart)
    async with server.client() as c:
        assert await history_ids(c, server) == [after]
        [later] = (await publish(c, server, "later")).json()["ids"]
        assert later > after
