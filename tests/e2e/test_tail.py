"""``sse-notify tail USER`` as a subprocess against the real server: the hello and each
notification pretty-printed, read events, a restart of the server survived by
reconnecting with the cursor (the notification published meanwhile shown once, nothing
twice), ``--since`` replay, ``--token`` and ``--topics``, the expiry warning, Ctrl-C
exiting 0, and the refusals that end it at once (exit 1 or 2), in one line.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from sse_notify.cli import main

from ..helpers import ServerProcess, uid

pytestmark = pytest.mark.timeout(60)

LINE_TIMEOUT = 10.0


class TailProcess:
    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lines: list[str] = []

    async def expect(self, pattern: str, timeout: float = LINE_TIMEOUT) -> str:
        """Read lines until one matches ``pattern`` (a regex, searched); returns it."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"tail ended before {pattern!r}:\n" + "\n".join(self.lines))
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if re.search(pattern, line):
                    return line

    async def rest(self, timeout: float = LINE_TIMEOUT) -> int:
        """Wait for the exit; the remaining output joins ``lines``; returns the status."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            self.lines += (await self.proc.stdout.read()).decode().splitlines()
            return await self.proc.wait()


@asynccontextmanager
async def tail(*args: str) -> AsyncIterator[TailProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_NOTIFY_")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sse_notify", "tail", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        yield TailProcess(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def following(server: ServerProcess, user: str, *extra: str) -> tuple[str, ...]:
    return (user, "--data-dir", str(server.data_dir), "--url", server.url, *extra)


async def test_tail_prints_and_survives_a_server_restart(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--retry", "200")
    user = uid()
    async with tail(*following(server, user)) as t:
        assert await t.expect(r"^hello") == f"hello  user {user}, replay live, newest id 0, unread 0"
        [first] = await server.publish(user=user, title="Deploy finished", body="all green\nin 42 s",
                                       priority="urgent", topic="ci", data={"build": 7})
        head = await t.expect(rf"^#{first}\b")
        assert re.fullmatch(rf"#{first}  \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z  urgent  \[ci\]  Deploy finished",
                            head), head
        assert [await t.expect(""), await t.expect(""), await t.expect("")] == [
            "    all green", "    in 42 s", '    data {"build":7}']
        [broadcast] = await server.publish(broadcast=True, title="Maintenance tonight")
        assert (await t.expect(rf"^#{broadcast}\b")).endswith("medium  (broadcast)  Maintenance tonight")

        await asyncio.to_thread(server.restart)  # the same port and data directory
        [after] = await server.publish(user=user, title="Published after the restart")
        lost = await t.expect(r"^-- connection lost")
        assert f"reconnecting with Last-Event-ID {broadcast} in" in lost, lost
        await t.expect(r"^-- reconnected$")
        hello = await t.expect(r"^hello")
        # published before or after the reconnect: replayed, or live on the resumed stream
        assert re.fullmatch(rf"hello  user {user}, replay resumed \(after id {broadcast}\), "
                            rf"newest id ({broadcast}, unread 2|{after}, unread 3)", hello), hello
        assert (await t.expect(rf"^#{after}\b")).endswith("Published after the restart")

        t.proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert await t.rest() == 0
    output = "\n".join(t.lines)
    for id_ in (first, broadcast, after):
        assert len(re.findall(rf"^#{id_}\b", output, re.MULTILINE)) == 1, output  # no gap, no duplicate
    assert "Traceback" not in output and server.token(user)[:20] not in output


async def test_tail_shows_read_events_and_marks_replayed_notifications(shared: ServerProcess) -> None:
    user = uid()
    ids = [(await shared.publish(user=user, title=f"old {i}"))[0] for i in range(2)]
    async with tail(*following(shared, user, "--since", "0")) as t:
        assert await t.expect(r"^hello") == (f"hello  user {user}, replay resumed (after id 0), "
                                             f"newest id {ids[1]}, unread 2")
        for id_ in ids:
            assert (await t.expect(rf"^#{id_}\b")).endswith(f"medium  (replayed)  old {ids.index(id_)}")
        async with shared.client() as c:
            resp = await c.post("/notifications/read", json={"ids": ids},
                                headers={"Authorization": f"Bearer {shared.token(user)}"})
            assert resp.status_code == 200, resp.text
        assert await t.expect(r"^read") == f"read  #{ids[0]}, #{ids[1]}"
        [live] = await shared.publish(user=user, title="live one")
        assert "(replayed)" not in await t.expect(rf"^#{live}\b")
        t.proc.send_signal(signal.SIGINT)
        assert await t.rest() == 0


async def test_tail_with_a_given_token_and_topics_warns_of_its_expiry(shared: ServerProcess) -> None:
    user = uid()
    token = shared.token(user, ttl=30)  # under a minute left: the warning comes at once
    async with tail("--token", token, "--url", shared.url, "--topics", "a,b") as t:
        await t.expect(rf"^hello  user {user}, replay live")
        warning = await t.expect(r"^token-expiring")
        assert re.fullmatch(r"token-expiring  at \S+Z: the stream ends then; give a new --token", warning), warning
        [other, wanted] = [(await shared.publish(user=user, title=title, topic=topic))[0]
                           for title, topic in (("filtered out", "c"), ("wanted", "b"))]
        assert (await t.expect(r"^#")).startswith(f"#{wanted} ")
        t.proc.send_signal(signal.SIGINT)
        assert await t.rest() == 0
    output = "\n".join(t.lines)
    assert f"#{other} " not in output and "Traceback" not in output and token not in output


async def test_tail_refusals_are_one_line_and_exit_1(shared: ServerProcess, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", "alice", "--data-dir", str(tmp_path)]) == 1  # no secret: never invents one
    assert not (tmp_path / "secret.key").exists()
    assert "only `sse-notify serve` creates one" in capsys.readouterr().err
    assert main(["tail", "alice", "--token", "x"]) == 2  # both
    assert main(["tail"]) == 2  # neither
    assert main(["tail", "not a user", "--data-dir", str(shared.data_dir)]) == 2
    assert main(["tail", "alice", "--data-dir", str(shared.data_dir), "--url", "127.0.0.1:8000"]) == 2
    capsys.readouterr()
    assert main(["tail", "--token", "forged", "--url", shared.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: the server refused the stream: 401 unauthorized") and err.count("\n") == 1
