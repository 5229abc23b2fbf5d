"""The PostgreSQL broker: LISTEN/NOTIFY through asyncpg (``--broker postgresql://...``,
the default with a PostgreSQL store).

Deliberate decisions:

* LISTEN runs on a connection of its own, which does nothing else but answer a keepalive
  ``SELECT 1`` after ``KEEPALIVE`` seconds of quiet (and ``ping``); its loss (the server's
  termination of the backend, a restart, a dead network) is seen through asyncpg's
  termination callback or the keepalive, and the broker reconnects and signals
  ``RESYNC``. Publishing uses a second connection.
* Everything queued is sent as one statement, ``pg_notify`` over an array, so one round
  trip carries a burst and the notifications of one transaction arrive in order.
* A NOTIFY payload must be shorter than 8,000 bytes: batches are split to fit, and a
  notification that alone does not fit travels as its id (:class:`~.IdRange`), which
  every follower reads back from the store.
* The channel is ``sse_notify`` unless the URL says ``?channel=NAME`` (that parameter is
  not passed to PostgreSQL).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from ._network import CONNECT_TIMEOUT, KEEPALIVE, NetworkBroker, split_channel

__all__ = ["PostgresBroker", "PAYLOAD_LIMIT"]

#: NOTIFY refuses payloads of 8,000 bytes or more.
PAYLOAD_LIMIT = 7999
DEFAULT_CHANNEL = "sse_notify"

_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, i) ORDER BY i"


class PostgresBroker(NetworkBroker):
    kind = "PostgreSQL"
    limit = PAYLOAD_LIMIT

    def __init__(self, url: str):
        url, channel = split_channel(url, DEFAULT_CHANNEL)
        super().__init__(url, channel)
        self._listener: asyncpg.Connection | None = None
        self._sender: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._lock = asyncio.Lock()  # one query at a time on the LISTEN connection

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT)

    async def _subscribe(self) -> None:
        lost = self._lost = asyncio.Event()
        conn = self._listener = await self._connect()
        conn.add_termination_listener(lambda _: lost.set())
        await conn.add_listener(self.channel, self._notified)  # LISTEN, confirmed when it returns

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._received(payload)

    async def _receive(self) -> None:
        lost = self._lost
        while not lost.is_set():
            try:
                async with asyncio.timeout(KEEPALIVE):
                    await lost.wait()
            except TimeoutError:
                async with asyncio.timeout(KEEPALIVE):
                    await self._ping()

    async def _ping(self) -> None:
        conn = self._listener
        if conn is None or conn.is_closed():
            raise ConnectionError("not connected")
        async with self._lock:
            await conn.fetchval("SELECT 1")

    async def _unsubscribe(self) -> None:
        conn, self._listener = self._listener, None
        await _close(conn)

    async def _send(self, payloads: list[bytes]) -> None:
        if self._sender is None or self._sender.is_closed():
            self._sender = await self._connect()
        await self._sender.execute(_NOTIFY, self.channel, [p.decode() for p in payloads])

    async def _reset_sender(self) -> None:
        conn, self._sender = self._sender, None
        await _close(conn)


async def _close(conn: asyncpg.Connection | None) -> None:
    """Close politely (the server logs no "unexpected EOF"), or cut a connection that hangs."""
    if conn is None or conn.is_closed():
        return
    try:
        await conn.close(timeout=1.0)
    except Exception:
        conn.terminate()
