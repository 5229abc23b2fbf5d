"""Pieces for the browser tests: driving the harness page, waits, ``/metrics``, a reverse
proxy that can misbehave, a page server on another origin, and a self-signed certificate.

Nothing here imports playwright, so the suite can be collected (and skipped with a
reason) on a machine without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import ipaddress
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
STATIC = Path(__file__).resolve().parents[2] / "static"
HARNESS = Path(__file__).resolve().parent / "harness.html"
HARNESS_PATH = "/static/harness.html"
#: ``pytestmark`` of every browser test module: the one browser lives in the session's loop.
SESSION_LOOP = pytest.mark.asyncio(loop_scope="session")


class ConsoleLog:
    """Console errors and uncaught exceptions of every page of a context."""

    def __init__(self, context: Any):
        self.errors: list[str] = []
        context.on("console", lambda msg: msg.type == "error" and self.errors.append(msg.text))
        context.on("weberror", lambda err: self.errors.append(f"uncaught: {err.error}"))


# -- the harness page --------------------------------------------------------------------

async def open_harness(context: Any, origin: str, path: str = HARNESS_PATH) -> Any:
    page = await context.new_page()
    await page.goto(origin + path)
    await page.wait_for_function("window.harnessReady === true")
    return page


async def start_client(page: Any, token: str | None = None, *, get_token: bool = False, **options: Any) -> int:
    """``connect(options)`` in the page; returns the client's index in ``window.clients``.
    With ``get_token`` its ``getToken`` calls the page's ``mintToken`` (exposed by the test)."""
    if token is not None:
        options["token"] = token
    return await page.evaluate("([options, useGetToken]) => window.startClient(options, useGetToken)",
                               [options, get_token])


async def wait_state(page: Any, state: str, index: int = 0, timeout: float = 10_000) -> dict[str, Any]:
    """Wait until the client's latest status is ``state``; returns that status."""
    await page.wait_for_function(
        "([i, s]) => window.clients[i]?.log.statuses.at(-1)?.state === s", arg=[index, state], timeout=timeout)
    return await page.evaluate("(i) => window.clients[i].log.statuses.at(-1)", index)


async def wait_opens(page: Any, count: int, index: int = 0, timeout: float = 15_000) -> None:
    """Wait until the client has been "open" ``count`` times (reconnects counted)."""
    await page.wait_for_function(
        "([i, n]) => window.clients[i].log.statuses.filter((s) => s.state === 'open').length >= n",
        arg=[index, count], timeout=timeout)


async def statuses(page: Any, index: int = 0) -> list[dict[str, Any]]:
    return await page.evaluate("(i) => window.clients[i].log.statuses", index)


async def wait_ids(page: Any, ids: Iterable[int], index: int = 0, timeout: float = 10_000) -> None:
    await page.wait_for_function(
        "([i, ids]) => ids.every((id) => window.clients[i].log.notifications.some((n) => n.id === id))",
        arg=[index, list(ids)], timeout=timeout)


async def received(page: Any, index: int = 0) -> list[int]:
    return await page.evaluate("(i) => window.clients[i].log.notifications.map((n) => n.id)", index)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll an async check until it returns something truthy (a wait, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not (last := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
        await asyncio.sleep(0.05)
    return last


# -- the server's own view ----------------------------------------------------------------

_METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")


async def metrics(base: str) -> dict[str, float]:
    async with httpx.AsyncClient(verify=False, timeout=10.0) as client:
        resp = await client.get(base + "/metrics")
    resp.raise_for_status()
    return {m.group(1): float(m.group(2)) for m in map(_METRIC_RE.match, resp.text.splitlines()) if m}


async def open_streams(base: str) -> tuple[int, int]:
    """``(sse, ws)`` from ``sse_notify_open_streams``."""
    m = await metrics(base)
    return (int(m['sse_notify_open_streams{transport="sse"}']),
            int(m['sse_notify_open_streams{transport="ws"}']))


async def wait_streams(base: str, sse: int, ws: int = 0, timeout: float = 10.0) -> None:
    async def check() -> bool:
        return await open_streams(base) == (sse, ws)
    await eventually(check, timeout, what=f"open streams == (sse={sse}, ws={ws})")


# -- a reverse proxy that can misbehave ----------------------------------------------------

class FlakyProxy:
    """An HTTP/1.1 reverse proxy on a loopback port in front of the server.

    It reads each request head on a client connection (browsers do not pipeline, so one at
    a time), forwards it upstream and pipes the answer back; an ``Upgrade`` request turns
    the connection into a plain byte pipe (WebSocket). ``fail(502, 503)`` cuts every open
    connection and answers each new request with those statuses in turn, as a proxy does
    while its upstream is away, until ``heal()``; ``block(prefix)`` refuses one path, as a
    proxy that does not allow event streams does. ``answered`` counts what it refused with.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.failing: Iterator[int] | None = None
        self.blocked: dict[str, int] = {}
        self.answered: Counter[int] = Counter()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FlakyProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def fail(self, *statuses: int) -> None:
        self.failing = itertools.cycle(statuses)
        self.cut()

    def heal(self) -> None:
        self.failing = None

    def block(self, prefix: str, status: int = 403) -> None:
        self.blocked[prefix] = status

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def _verdict(self, target: str) -> int | None:
        if self.failing is not None:
            return next(self.failing)
        path = target.split("?", 1)[0]
        return next((status for prefix, status in self.blocked.items() if path.startswith(prefix)), None)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self._writers.add(cwriter)
        uwriter: asyncio.StreamWriter | None = None
        down: asyncio.Task[None] | None = None
        try:
            while True:
                head = await creader.readuntil(b"\r\n\r\n")
                request_line, _, rest = head.decode("latin-1").partition("\r\n")
                target = request_line.split(" ")[1]
                headers = {}
                for line in rest.split("\r\n"):
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                status = self._verdict(target)
                if status is not None:
                    self.answered[status] += 1
                    await self._refuse(cwriter, status)
                    return
                body = await creader.readexactly(int(headers.get("content-length") or 0))
                if uwriter is None:
                    ureader, uwriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                    self._writers.add(uwriter)
                    down = asyncio.create_task(self._pipe(ureader, cwriter))
                uwriter.write(head + body)
                await uwriter.drain()
                if "upgrade" in headers.get("connection", "").lower():
                    await self._pipe(creader, uwriter)  # WebSocket: bytes both ways from now on
                    return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
            return
        finally:
            for writer in (cwriter, uwriter):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            if down is not None:
                down.cancel()

    @staticmethod
    async def _refuse(writer: asyncio.StreamWriter, status: int) -> None:
        reason = {502: "Bad Gateway", 503: "Service Unavailable", 403: "Forbidden"}.get(status, "Error")
        body = f"<html><body><h1>{status} {reason}</h1></body></html>".encode()
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError, OSError):
            await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


# -- a page on another origin ----------------------------------------------------------------

class PageServer:
    """Serves the harness at ``/harness.html`` and the library files next to it, on its own
    loopback port: a page of another origin than the service."""

    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        name = self.path.split("?", 1)[0].lstrip("/")
        if name == HARNESS.name:
            self._send(200, "text/html; charset=utf-8", HARNESS.read_bytes())
        elif name.startswith("sse-notify") and name.endswith(".js") and (STATIC / name).is_file():
            self._send(200, "text/javascript; charset=utf-8", (STATIC / name).read_bytes())
        else:
            self._send(404, "text/plain", b"not found")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


# -- TLS ----------------------------------------------------------------------------------------

def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files: ``(certfile, keyfile)``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile
