"""The running service: the store, broker, hub, limits and token signer, wired together, and
the operations the HTTP API and the WebSocket transport share (publish, mark read).

The signing keyring comes from the settings (``SSE_NOTIFY_SECRET`` or the data directory's
file) unless the store keeps the cluster's secret (PostgreSQL): then it is read, or made by
the first node, in :meth:`Service.start`, before anything is served.

Publishing flows ``store.add()`` (group commit, ids assigned) -> the store's commit
listener -> ``broker.publish()`` (in id order) -> every node's follower task (which fills
from the store whatever the broker lost, :mod:`sse_notify.follower`) -> ``hub.dispatch()``.
Presence (:mod:`sse_notify.presence`) beats from its own task, reading the hub's counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from .broker import Broker, open_broker
from .config import Keyring, Settings, load_webhook_secret
from .follower import Follower
from .hub import Hub
from .limits import PublishRate, StreamSlots
from .models import NotificationDraft, ReadChange, now_ms
from .escalation import Escalator
from .presence import Presence
from .receipts import Receipts
from .webhooks import WebhookSender
from .store import (BulkPublishResult, EscalationStore, PublishResult, ReceiptStore, SecretKeeper, Store,
                    WebhookSecretKeeper, open_store)
from .store.presence import open_presence_store
from .tokens import TokenSigner

__all__ = ["Service"]

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 3600.0
PRUNE_CHUNK = 2000  # notifications removed per write transaction


class Service:
    keyring: Keyring
    signer: TokenSigner

    def __init__(self, settings: Settings, *, store: Store | None = None,
                 broker: Broker | None = None):
        self.settings = settings
        self.store = store if store is not None else open_store(settings.store_url)
        self._secret_in_store = not settings.secret and isinstance(self.store, SecretKeeper)
        if not self._secret_in_store:
            self._use_keyring(settings.keyring())
        self.broker = broker if broker is not None else open_broker(settings.broker_url)
        self.hub = Hub(settings.stream_buffer)
        self.follower = Follower(self.store, self.broker, self.hub.dispatch)
        self.presence = Presence(open_presence_store(self.store), self.hub, settings.presence_ttl)
        self.slots = StreamSlots(settings.max_user_streams, settings.max_streams)
        self.publish_rate = PublishRate(settings.publish_rate, settings.publish_burst)
        self.published = 0
        self.receipts: Receipts | None = None
        if settings.receipts and isinstance(self.store, ReceiptStore):
            self.receipts = Receipts(self.store)
            self.hub.on_delivered = self.receipts.delivered
        self.escalator: Escalator | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.store.on_commit = self.broker.publish
        await self.store.open()
        try:
            if self._secret_in_store:
                assert isinstance(self.store, SecretKeeper)
                keyring = await self.store.keyring(create=True)
                assert keyring is not None
                self._use_keyring(keyring)
            webhook_secret = await self._webhook_secret()
            await self.broker.open()
            await self.follower.start()  # its position, now that the broker is subscribed
            await self.presence.start()
        except BaseException:
            await self.presence.store.close()
            await self.broker.close()
            await self.store.close()
            raise
        await self.prune()  # before connections are accepted
        self._tasks = [
            asyncio.create_task(self.follower.run(), name="follower"),
            asyncio.create_task(self._prune_periodically(), name="retention"),
            asyncio.create_task(self.presence.run(), name="presence"),
        ]
        if self.receipts is not None:
            self._tasks.append(asyncio.create_task(self.receipts.run(), name="receipts"))
        if self.settings.webhook_url and isinstance(self.store, EscalationStore):
            sender = WebhookSender(self.settings.webhook_url, webhook_secret, self.settings.webhook_timeout)
            self.escalator = Escalator(self.store, sender, poll=self.settings.escalation_poll,
                                       receipts=self.receipts)
            self._tasks.append(asyncio.create_task(self.escalator.run(), name="escalation"))

    async def _webhook_secret(self) -> str:
        """The webhook secret, made on the first start (like the signing secret): in the
        store's database when it keeps one (PostgreSQL), else in the data directory."""
        if isinstance(self.store, WebhookSecretKeeper):
            secret = await self.store.webhook_secret(create=True)
            assert secret is not None
            return secret
        return load_webhook_secret(self.settings.data_dir, create=True)

    def _use_keyring(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.signer = TokenSigner.from_keyring(keyring)

    async def stop(self) -> None:
        self.hub.close_all("shutdown")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.presence.stop()
        await self.broker.close()
        await self.store.close()

    async def _prune_periodically(self) -> None:
        while True:
            await asyncio.sleep(min(PRUNE_INTERVAL, self.settings.retention))
            try:
                await self.prune()
            except Exception as exc:
                log.error("retention pruning failed: %s", exc)

    async def prune(self) -> int:
        """Remove what retention expired, a chunk per write so publishes go in between."""
        cutoff = now_ms() - self.settings.retention * 1000
        removed = 0
        while True:
            chunk = await self.store.prune(cutoff, PRUNE_CHUNK)
            removed += chunk
            if chunk < PRUNE_CHUNK:
                break
        if removed:
            log.info("retention removed %d notifications", removed)
        return removed

    async def publish(self, drafts: Sequence[NotificationDraft], publisher: str,
                      idempotency_key: str | None = None) -> PublishResult:
        result = await self.store.add(drafts, publisher, idempotency_key)
        if result.created:
            self.published += len(result.ids)
        return result

    async def publish_many(self, requests: Sequence[Sequence[NotificationDraft]], publisher: str,
                           idempotency_key: str | None = None) -> BulkPublishResult:
        """A bulk publish: every request's drafts in one commit, one id list per request."""
        result = await self.store.add_many(requests, publisher, idempotency_key)
        if result.created:
            self.published += sum(map(len, result.results))
        return result

    async def mark_read(self, user: str, ids: Sequence[int] | None) -> list[int]:
        """Mark ``ids`` (None: all) read for ``user``; the changed ids go to every stream."""
        if ids is None:
            changed = await self.store.mark_all_read(user)
        else:
            changed = await self.store.mark_read(user, ids)
        if changed:
            self.broker.publish([ReadChange(user, tuple(changed))])
        return changed
