"""Hypercorn serving an ASGI app inside the test's own event loop, on a free loopback port.

For the tests of :mod:`sse_notify._hypercorn`, which need Hypercorn's real objects in this
process (the end-to-end tests run the server as its own process instead).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

__all__ = ["Serving", "body_size", "hypercorn_serving", "lifespan"]


async def lifespan(receive: Any, send: Any) -> None:
    """Answer Hypercorn's lifespan messages (a test app's ``scope["type"] == "lifespan"``)."""
    while (message := await receive())["type"] != "lifespan.shutdown":
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


async def body_size(receive: Any) -> int:
    """Read a request's whole body from ``receive``; its length in bytes."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            return size


@dataclass
class Serving:
    port: int
    task: asyncio.Task[None]
    stop: asyncio.Event


@asynccontextmanager
async def hypercorn_serving(app: Any, **config: Any) -> AsyncIterator[Serving]:
    """Serve ``app`` until the block ends (or ``stop`` is set); ``config`` sets Hypercorn
    :class:`~hypercorn.config.Config` attributes (``keep_alive_timeout=1``, ...)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = Config()
    settings.bind = [f"127.0.0.1:{port}"]
    settings.accesslog = None
    for name, value in config.items():
        setattr(settings, name, value)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, settings, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(250):  # until it listens (no event tells from outside)
        if task.done():
            task.result()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        break
    try:
        yield Serving(port, task, stop)
    finally:
        stop.set()
        await task
