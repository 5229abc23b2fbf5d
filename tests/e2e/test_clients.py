"""Clients other people wrote, against the real server: curl (the README's quick start,
command for command), httpx-sse (a Python SSE client) and the npm ``eventsource`` package
(Node's EventSource), including its own reconnect with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from ..helpers import ServerProcess
from .wsclient import open_ws, sse_lines

NODE_DIR = Path(__file__).parent / "node"
LINE_TIMEOUT = 10.0


def cli_token(server: ServerProcess, *args: str) -> str:
    """A token printed by ``sse-notify token`` against the server's data directory."""
    out = subprocess.run([sys.executable, "-m", "sse_notify", "token", *args, "--data-dir",
                          str(server.data_dir)], check=True, capture_output=True, text=True).stdout
    assert out.endswith("\n") and out.count("\n") == 1
    return out.strip()


@asynccontextmanager
async def process(*argv: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def read_until(proc: asyncio.subprocess.Process, marker: bytes) -> bytes:
    """Output up to and including ``marker``."""
    assert proc.stdout is not None
    try:
        return await asyncio.wait_for(proc.stdout.readuntil(marker), LINE_TIMEOUT)
    except asyncio.IncompleteReadError as exc:
        err = await proc.stderr.read() if proc.stderr else b""
        raise AssertionError(f"output ended early: {exc.partial!r} {err!r}") from None


# -- curl: the README's quick start ------------------------------------------------------------

@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_readme_quick_start_with_curl(server: ServerProcess) -> None:
    pub = cli_token(server, "--publisher", "my-backend")
    tok = cli_token(server, "alice")
    async with process("curl", "-N", "-s", f"{server.url}/events?token={tok}") as subscriber:
        head = await read_until(subscriber, b'"replay":"live"}\n\n')
        assert head == (b"retry: 3000\n\nevent: hello\n"
                        b'data: {"user":"alice","newest_id":0,"unread":0,"replay":"live"}\n\n')
        publish = await asyncio.create_subprocess_exec(
            "curl", "-s", "-H", f"Authorization: Bearer {pub}",
            "-d", '{"user": "alice", "title": "Hello", "body": "It works"}',
            f"{server.url}/notifications", stdout=asyncio.subprocess.PIPE)
        answer, _ = await publish.communicate()
        assert publish.returncode == 0 and json.loads(answer) == {"ids": [1]}
        frame = await read_until(subscriber, b"\n\n")
    lines = frame.decode().split("\n")
    assert lines[:2] == ["id: 1", "event: notification"] and lines[3:] == ["", ""]
    assert lines[2].startswith("data: ")
    payload = json.loads(lines[2].removeprefix("data: "))
    assert payload.pop("created_at").endswith("Z")
    assert payload == {"id": 1, "user": "alice", "topic": None, "title": "Hello", "body": "It works",
                       "priority": "medium", "data": None, "read": False}


# -- httpx-sse ---------------------------------------------------------------------------------

async def test_httpx_sse_reads_events_and_resumes_from_its_last_id(server: ServerProcess) -> None:
    token = server.token("alice")
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(10.0, read=None)) as client:
        async with aconnect_sse(client, "GET", f"/events?token={token}") as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            events = source.aiter_sse()
            retry = await anext(events)  # httpx-sse hands the retry: block over as an event
            assert retry.retry == 3000 and retry.data == ""
            hello = await anext(events)
            assert hello.event == "hello" and hello.id == "" and hello.json()["replay"] == "live"
            ids = [(await server.publish(client, user="alice", title=f"n{i}"))[0] for i in range(3)]
            got = [await anext(events) for _ in ids]
            assert [(e.event, e.id, e.json()["id"]) for e in got] == [
                ("notification", str(i), i) for i in ids]
            assert source.response.headers.get("x-accel-buffering") == "no"
        # published while away, then a reconnect with the id httpx-sse last saw
        later = [(await server.publish(client, user="alice", title=f"m{i}"))[0] for i in range(2)]
        async with aconnect_sse(client, "GET", f"/events?token={token}",
                                headers={"Last-Event-ID": got[0].id}) as source:
            events = source.aiter_sse()
            assert (await anext(events)).retry == 3000
            assert (await anext(events)).json()["replay"] == "resumed"
            replayed = [int((await anext(events)).id) for _ in range(4)]
    assert replayed == ids[1:] + later


async def test_unicode_line_breakers_in_data_reach_line_splitting_readers_whole(server: ServerProcess) -> None:
    """U+2028, U+2029 and U+0085 are line breaks to ``str.splitlines`` (httpx's own line
    reader, and httpx-sse before 0.4.2): the server sends them escaped, so every reader gets
    the event whole and the JSON decodes to the text published."""
    text = "a\u2028b\u2029c\u0085d"
    token = server.token("alice")
    async with httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(10.0, read=None)) as client:
        async with aconnect_sse(client, "GET", f"/events?token={token}") as source, \
                sse_lines(server, token, client=client) as (_, lines), \
                open_ws(server, token) as ws:
            events = source.aiter_sse()
            assert (await anext(events)).retry == 3000
            assert (await anext(events)).event == "hello"
            async with asyncio.timeout(LINE_TIMEOUT):
                while not (await anext(lines)).startswith("data: {\"user\""):  # up to hello
                    pass
            [nid] = await server.publish(client, user="alice", title=text, body=text,
                                         data={text: [text]})
            event = await anext(events)
            async with asyncio.timeout(LINE_TIMEOUT):
                raw = [await anext(lines) for _ in range(4)]  # up to the blank line
            frame = await ws.recv()
    assert (event.event, event.id) == ("notification", str(nid))
    payload = event.json()
    assert (payload["title"], payload["body"], payload["data"]) == (text, text, {text: [text]})
    assert raw[:3] == ["", f"id: {nid}", "event: notification"]  # hello's end, then this event
    data = raw[3]
    assert "\\u2028" in data and "\\u2029" in data and "\\u0085" in data
    assert orjson.loads(data[6:]) == payload
    assert (frame["type"], frame["title"], frame["data"]) == ("notification", text, {text: [text]})


# -- npm eventsource ---------------------------------------------------------------------------

def _node_client() -> list[str]:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed")
    if not (NODE_DIR / "node_modules" / "eventsource").is_dir():
        pytest.fail(f"run `npm ci --prefix {NODE_DIR}` first (bash .ci/run does)")
    return ["node", str(NODE_DIR / "eventsource-client.mjs")]


async def next_line(proc: asyncio.subprocess.Process, want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The next printed line that ``want`` accepts (errors on the way are reconnects)."""
    while True:
        line = orjson.loads(await read_until(proc, b"\n"))
        if want(line):
            return line


async def test_npm_eventsource_reconnects_with_last_event_id_after_a_restart(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--retry", "200")
    argv = _node_client()
    async with process(*argv, f"{server.url}/events?token={server.token('alice', ttl=600)}") as node:
        await next_line(node, lambda e: e.get("open"))
        hello = await next_line(node, lambda e: e.get("type") == "hello")
        assert hello["id"] == "" and hello["data"]["replay"] == "live"
        first = await server.publish(user="alice", title="before")
        broadcast = await server.publish(broadcast=True, title="to all")
        got = [await next_line(node, lambda e: e.get("type") == "notification") for _ in range(2)]
        assert [(e["id"], e["data"]["id"]) for e in got] == [(str(i), i) for i in first + broadcast]

        await asyncio.to_thread(server.restart)  # same port; the client retries every 200 ms
        during = await server.publish(user="alice", title="after restart")
        hello = await next_line(node, lambda e: e.get("type") == "hello")
        assert hello["data"]["replay"] == "resumed"  # it sent Last-Event-ID by itself
        again = await next_line(node, lambda e: e.get("type") == "notification")
        assert again["data"]["id"] == during[0] and again["id"] == str(during[0])
        live = await server.publish(user="alice", title="live again")
        assert (await next_line(node, lambda e: e.get("type") == "notification"))["data"]["id"] == live[0]
