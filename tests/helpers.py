"""Test helpers: the real server as a subprocess, and a byte-level SSE reader.

``ServerProcess`` runs ``python -m sse_notify serve`` on a loopback port with a temporary
data directory and waits for Hypercorn's "Running on" line (logged only after startup),
never on a sleep. All of its output is kept, so tests can check what it logged.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from sse_notify.config import load_secret
from sse_notify.tokens import TokenSigner

_RUNNING_RE = re.compile(r"Running on https?://[^\s]*:(\d+)")
STARTUP_TIMEOUT = 20.0


class ServerProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()
        self._running = False  # the "Running on" line of the current start was seen
        self._reader: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_NOTIFY_")}
        env.update(self.env)
        env["PYTHONUNBUFFERED"] = "1"
        self._ready.clear()
        self._running = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sse_notify", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self._reader = threading.Thread(target=self._read_output, args=(self.proc,), daemon=True)
        self._reader.start()
        # Output that ends without "Running on" is a failed start, even if the process has
        # not been reaped yet when we look.
        if not self._ready.wait(STARTUP_TIMEOUT) or not self._running or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("server did not start:\n" + "".join(self.output[-40:]))
        return self

    def _read_output(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line)
            match = _RUNNING_RE.search(line)
            if match:
                self.port = int(match.group(1))
                self._running = True
                self._ready.set()
        self._ready.set()  # exited: wake a waiting start()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal the server and wait for it to exit; returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.proc = None
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def log(self) -> str:
        return "".join(self.output)

    # -- addresses and tokens -------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def signer(self) -> TokenSigner:
        secret = self.env.get("SSE_NOTIFY_SECRET") or load_secret(self.data_dir)
        return TokenSigner(secret)

    def token(self, user: str = "alice", ttl: float = 3600) -> str:
        return self.signer.subscriber(user, ttl=ttl)

    def publisher_token(self, name: str = "backend") -> str:
        return self.signer.publisher(name)

    # -- conveniences ---------------------------------------------------------------

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=10.0, **kwargs)

    async def publish(self, client: httpx.AsyncClient | None = None, *, expect: int = 201,
                      headers: dict[str, str] | None = None, **body: Any) -> list[int]:
        """POST /notifications with a publisher token; returns the ids."""
        async with _maybe_client(self, client) as c:
            resp = await c.post("/notifications", content=orjson.dumps(body), headers={
                "Authorization": f"Bearer {self.publisher_token()}",
                "Content-Type": "application/json", **(headers or {})})
        assert resp.status_code == expect, resp.text
        return resp.json()["ids"]


@asynccontextmanager
async def _maybe_client(server: ServerProcess, client: httpx.AsyncClient | None) -> AsyncIterator[httpx.AsyncClient]:
    if client is not None:
        yield client
    else:
        async with server.client() as c:
            yield c


ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
NOTIFICATION_KEYS = {"id", "user", "topic", "title", "body", "priority", "data", "created_at", "read"}


def uid(prefix: str = "u") -> str:
    """A user id no other test uses, for tests that share one server."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    """The contract's error answer: the status, a JSON content type, exactly error+message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    body = orjson.loads(resp.content)
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["message"], str) and body["message"]
    return body


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> bool:
    """Poll an external condition (one that sends no event) until it holds or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


# -- a byte-level SSE reader ---------------------------------------------------------

@dataclass
class SSEEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return orjson.loads(self.data)


def read_field(event: SSEEvent, line: str, has_data: bool) -> bool:
    """Apply one field line of an SSE block to ``event`` (``data`` lines join with a
    newline); returns whether the event now has data, i.e. will be dispatched."""
    name, _, value = line.partition(":")
    value = value[1:] if value.startswith(" ") else value
    if name == "data":
        event.data = value if not has_data else event.data + "\n" + value
        return True
    if name == "event":
        event.event = value
    elif name == "id":
        event.id = value
    elif name == "retry":
        event.retry = int(value)
    return has_data


class SSEStream:
    """Parses an ``httpx`` streaming response per the SSE spec, keeping comments and
    ``retry`` (which httpx-sse drops), so tests can see exactly what went on the wire."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self._lines = response.aiter_lines()
        self.retry: int | None = None
        self.comments: list[str] = []

    async def next(self, timeout: float = 5.0) -> SSEEvent:
        """The next dispatched event (comments and retry fields are recorded on the side)."""
        async with asyncio.timeout(timeout):
            event = SSEEvent()
            has_data = False
            async for line in self._lines:
                if line == "":
                    if has_data or event.id is not None and event.event != "message":
                        return event
                    event = SSEEvent()
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                has_data = read_field(event, line, has_data)
                if event.retry is not None:
                    self.retry = event.retry
            raise EOFError("stream ended")

    async def next_comment(self, timeout: float = 5.0) -> str:
        """The next comment line; use it only when no event is due (one would fail it)."""
        async with asyncio.timeout(timeout):
            async for line in self._lines:
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    return self.comments[-1]
                if line and not line.startswith("retry:"):
                    raise AssertionError(f"expected a comment, got {line!r}")
            raise EOFError("stream ended")

    async def next_of(self, kind: str, timeout: float = 5.0) -> SSEEvent:
        """Skip to the next event of type ``kind``."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                if event.event == kind:
                    return event

    async def notifications(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        out = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                event = await self.next_of("notification", timeout)
                payload = event.json()
                assert event.id == str(payload["id"])
                out.append(payload)
        return out


@asynccontextmanager
async def open_sse(server: ServerProcess, token: str | None = None, *, query: str = "",
                   headers: dict[str, str] | None = None,
                   client: httpx.AsyncClient | None = None) -> AsyncIterator[SSEStream]:
    """GET /events (token in the query unless ``headers`` carry it) and read ``hello``
    first; the hello event is available as ``stream.hello``."""
    params = []
    if token is not None:
        params.append(f"token={token}")
    if query:
        params.append(query)
    path = "/events" + ("?" + "&".join(params) if params else "")
    async with _maybe_client(server, client) as c:
        async with c.stream("GET", path, headers=headers or {}, timeout=httpx.Timeout(10.0, read=None)) as resp:
            stream = SSEStream(resp)
            if resp.status_code == 200:
                stream.hello = await stream.next_of("hello")  # type: ignore[attr-defined]
            yield stream
