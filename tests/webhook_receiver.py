"""A real HTTP webhook receiver for the escalation tests: ``http.server`` on a free
loopback port, in a thread. It records every request and answers 204, or per user (the
webhook body's ``user``) follows a plan: ``"500"`` answers 500, ``"hang"`` answers nothing
until the sender has given up. Tests wait on its condition variable, not on sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


class Received:
    def __init__(self, headers: dict[str, str], body: bytes):
        self.headers = headers
        self.body = body
        self.json: dict[str, Any] = orjson.loads(body)

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self, hang: float = 5.0) -> None:
        self.requests: list[Received] = []
        self.plans: dict[str, list[str]] = {}
        self.hang = hang
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def for_user(self, user: str) -> list[Received]:
        with self._cond:
            return [r for r in self.requests if r.json.get("user") == user]

    async def wait(self, predicate: Callable[[list[Received]], bool], timeout: float = 20.0) -> list[Received]:
        """Wait until ``predicate(requests)`` holds; returns a copy of the requests."""
        def check() -> bool:
            with self._cond:
                return self._cond.wait_for(lambda: predicate(self.requests), timeout)
        assert await asyncio.to_thread(check), [r.json for r in self.requests]
        with self._cond:
            return list(self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                received = Received({k.lower(): v for k, v in self.headers.items()}, body)
                with receiver._cond:
                    plan = receiver.plans.get(received.json.get("user", ""))
                    action = plan.pop(0) if plan else "204"
                    receiver.requests.append(received)
                    receiver._cond.notify_all()
                if action == "hang":
                    receiver._closing.wait(receiver.hang)  # the sender times out meanwhile
                try:
                    self.send_response(500 if action == "500" else 204)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:  # the sender gave up and closed
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
