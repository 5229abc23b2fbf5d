"""Presence: whether a user has an open stream anywhere in the deployment, how many, and
when the last one closed (``GET /presence``).

Each node (one ``sse-notify serve`` process) has an id, random at start. It beats: it
tells the store (:class:`~sse_notify.store.presence.PresenceStore`) that it is alive and,
for each user whose stream count on it changed since its last beat, the new count -- at
most a quarter second after a stream opened or closed, and at least once a second.
Readers sum the counts of the nodes whose last beat is younger than ``presence_ttl``
(default 15 s, ``SSE_NOTIFY_PRESENCE_TTL``): a stream opened or closed anywhere shows
well within the contract's 2 seconds, and a node that dies without a word stops counting
``presence_ttl`` after its last beat. A clean shutdown removes the node's counts at once.

Deliberate decisions:

* **The hub only notes who changed.** Opening or closing a stream adds its user to a set
  (no other presence work on that path); the beat takes the set with each user's count
  (:meth:`Hub.take_changed`), so a beat costs what changed, not a pass over every
  connected user (at 50,000 users that pass took some 50 ms of the event loop a second).
* **One code path for every store.** A single SQLite node answers from its presence
  tables too, not from its own hub: a lone node and a cluster behave alike, within the
  contract's 2 seconds. So after a SIGKILL and a restart, the killed process's streams
  still count (beside their reconnections) until its last beat is ``presence_ttl`` old.
* **A failed beat's changes go with the next one** (kept until the store confirmed them,
  newer counts replacing older); a node the store forgot (expired while it could not
  reach the store) sends all of its counts again (:meth:`Hub.user_streams`).
* ``last_seen`` is written when a user's count on a node drops to 0. It is the newest such
  time, and answered only while no live node has the user, so it is when the user's last
  stream closed. For a node that died holding a user, it is the node's last beat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence

from .hub import Hub
from .store import StoreUnavailable
from .store.presence import PresenceStore, UserPresence

__all__ = ["Presence", "BEAT_INTERVAL", "MAX_USERS"]

log = logging.getLogger(__name__)

BEAT_INTERVAL = 1.0  # seconds between a node's heartbeats when nothing changes
CHANGE_DELAY = 0.25  # seconds at most between a change and the beat that sends it
EXPIRE_EVERY = 10  # beats between removals of silent nodes' rows
MAX_USERS = 100  # users one GET /presence may ask about
LEAVE_TIMEOUT = 2.0  # seconds a shutdown waits to remove this node's counts


def new_node_id() -> str:
    """Random, and readable in the database: ``host:pid:random``."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{secrets.token_hex(6)}"


class Presence:
    def __init__(self, store: PresenceStore, hub: Hub, ttl: float, interval: float = BEAT_INTERVAL,
                 change_delay: float = CHANGE_DELAY):
        self.store = store
        self.hub = hub
        self.ttl_ms = int(ttl * 1000)
        self.interval = interval
        self.change_delay = change_delay
        self.node = new_node_id()
        self.beats = 0
        self.failures = 0
        self._pending: dict[str, int] = {}  # user -> streams, not yet confirmed by the store
        self._failing = False

    async def start(self) -> None:
        await self.store.open()
        await self._beat_logged()  # registered before streams are accepted

    async def run(self) -> None:
        """Beat until cancelled: every ``interval`` seconds, and within ``change_delay``
        of a change (while the store answers; else every ``interval``)."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.change_delay)
            self._pending.update(self.hub.take_changed())
            waited = loop.time() - last
            if waited >= self.interval or (self._pending and not self._failing):
                last = loop.time()
                await self._beat_logged()

    async def stop(self) -> None:
        """Leave: this node's users were seen now, its counts go at once."""
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self.store.leave(self.node)
        except (StoreUnavailable, TimeoutError) as exc:  # its counts expire by themselves
            log.warning("could not remove this node's presence counts: %s", str(exc) or "no answer in time")
        await self.store.close()

    async def lookup(self, users: Sequence[str]) -> dict[str, UserPresence]:
        """Each of ``users`` (distinct) on every live node; :class:`StoreUnavailable`
        when the store cannot answer."""
        return await self.store.lookup(users, self.ttl_ms)

    async def beat(self) -> None:
        pending = self._pending
        pending.update(self.hub.take_changed())
        if not await self.store.beat(self.node, pending):
            pending.clear()  # forgotten, its rows gone (or a first beat): all of them again
            pending.update(self.hub.user_streams())
            await self.store.beat(self.node, pending)
        pending.clear()
        self.beats += 1
        if self.beats % EXPIRE_EVERY == 0:
            await self.store.expire(self.ttl_ms)

    async def _beat_logged(self) -> None:
        try:
            await self.beat()
        except StoreUnavailable as exc:
            self.failures += 1
            if not self._failing:
                log.error("presence heartbeat failed (retrying every %g s): %s", self.interval, exc)
            self._failing = True
            return
        if self._failing:
            log.info("presence heartbeats are back")
        self._failing = False
