"""The Redis broker: pub/sub through redis-py's asyncio client
(``--broker redis://HOST:PORT/N[?channel=NAME]``), for deployments that run Redis already.

Deliberate decisions:

* Pub/sub channels are server-wide (the database number does not separate them), so the
  channel is named in the URL; the default is ``sse-notify``.
* Redis pub/sub is at most once: a subscriber that is disconnected misses what was
  published meanwhile. redis-py would reconnect and resubscribe silently; here the
  client makes no retries of its own, so every loss surfaces, the subscription is made
  afresh with backoff, and ``listen`` yields ``RESYNC`` for the follower to catch up.
* A subscription is confirmed (the server's ``subscribe`` reply read) before ``open``
  returns; after ``KEEPALIVE`` seconds of quiet it is probed with PING, and an
  unanswered probe counts as a lost connection.
* Everything queued is published in one pipelined round trip, in order.
"""

from __future__ import annotations

import time

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ._network import CONNECT_TIMEOUT, KEEPALIVE, NetworkBroker, split_channel

__all__ = ["RedisBroker"]

DEFAULT_CHANNEL = "sse-notify"


class RedisBroker(NetworkBroker):
    kind = "Redis"

    def __init__(self, url: str):
        url, channel = split_channel(url, DEFAULT_CHANNEL)
        super().__init__(url, channel)
        self._client: redis.Redis | None = None
        self._pubsub: PubSub | None = None

    def _redis(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=CONNECT_TIMEOUT)
        return self._client

    async def _subscribe(self) -> None:
        pubsub = self._pubsub = self._redis().pubsub()
        await pubsub.subscribe(self.channel)
        while True:  # until the server's confirmation: from then on nothing is missed
            reply = await pubsub.get_message(timeout=CONNECT_TIMEOUT)
            if reply is None:
                raise TimeoutError("no reply to SUBSCRIBE")
            if reply["type"] == "subscribe":
                return

    async def _receive(self) -> None:
        pubsub = self._pubsub
        assert pubsub is not None
        heard = time.monotonic()
        probed = False
        while True:
            message = await pubsub.get_message(timeout=KEEPALIVE)
            now = time.monotonic()
            if message is not None:
                heard, probed = now, False
                if message["type"] == "message":
                    self._received(message["data"])
            elif now - heard >= 2 * KEEPALIVE and probed:
                raise TimeoutError(f"no answer to PING within {KEEPALIVE:g} s")
            elif now - heard >= KEEPALIVE and not probed:
                await pubsub.ping()
                probed = True

    async def _unsubscribe(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except Exception:  # the connection is gone already
                pass

    async def _send(self, payloads: list[bytes]) -> None:
        async with self._redis().pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.publish(self.channel, payload)
            await pipe.execute()

    async def _reset_sender(self) -> None:
        client = self._client
        if client is None:
            return
        if self._pubsub is None:
            self._client = None
            await client.aclose()
        else:  # the subscription holds a connection of the same pool: drop only the idle ones
            await client.connection_pool.disconnect(inuse_connections=False)

    async def _ping(self) -> None:
        await self._redis().ping()
