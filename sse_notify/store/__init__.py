"""The Store protocol and ``open_store(url)``, which picks a backend by URL scheme.

A store keeps notifications, per-user read state and idempotency keys. Its one ordering
duty: ``on_commit`` is called with each committed batch, in commit (= id) order, before
any ``add()`` of that batch returns, so live fan-out sees notifications in id order.
Backends are imported lazily; a caller may pass a ready instance instead of a URL.

A store that several nodes share may also keep the cluster's signing secret
(:class:`SecretKeeper`; the PostgreSQL store does): the service then takes its keyring
from the store when it starts, and ``sse-notify token``/``rotate-secret`` read or rotate
it there (:func:`cluster_keyring`, :func:`rotate_cluster_secret`) instead of in the data
directory. ``SSE_NOTIFY_SECRET`` still overrides.

Delivery receipts and read times (:class:`ReceiptStore`) are a protocol of their own, so
the core :class:`Store` stays small; both backends implement it in a helper module. So
are pending escalations (:class:`EscalationStore`): rows written in the same commit as
their notification (from ``NotificationDraft.escalate``), claimed when due by one node at
a time (a claim moves ``next_at`` a lease ahead, so a node that dies mid-send leaves the
row to be claimed again when the lease ends), deleted when done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ..config import Keyring, Settings
from ..models import Notification, NotificationDraft

__all__ = ["Store", "SecretKeeper", "ReceiptStore", "Status", "EscalationStore", "DueEscalation", "BulkPublishResult", "HistoryPage", "PublishResult", "StoreUnavailable",
           "StoreConfigError", "open_store", "check_store", "cluster_keyring", "rotate_cluster_secret",
           "WebhookSecretKeeper", "cluster_webhook_secret"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


class StoreUnavailable(Exception):
    """Storage cannot answer right now (disk full, locked, removed...)."""


class StoreConfigError(Exception):
    """The store cannot be used as configured (unreachable, credentials refused, no such
    database, unknown URL scheme); the message is one line an operator can act on."""


@dataclass(frozen=True, slots=True)
class PublishResult:
    ids: list[int]
    created: bool  # False: an idempotent repeat, nothing new stored


@dataclass(frozen=True, slots=True)
class BulkPublishResult:
    results: list[list[int]]  # the ids of each request of an add_many(), in order
    created: bool  # False: an idempotent repeat, nothing new stored


@dataclass(frozen=True, slots=True)
class HistoryPage:
    items: list[tuple[Notification, bool]]  # (notification, read)
    next_before: int | None


@runtime_checkable
class Store(Protocol):
    on_commit: Callable[[list[Notification]], None] | None

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def add(self, drafts: Sequence[NotificationDraft], publisher: str,
                  idempotency_key: str | None = None) -> PublishResult: ...

    async def add_many(self, requests: Sequence[Sequence[NotificationDraft]], publisher: str,
                       idempotency_key: str | None = None) -> BulkPublishResult:
        """Several publishes (each one ``add()``'s drafts) stored in ONE commit, ids
        increasing through them in order, and answered one id list per request; the key
        covers them all. A repeat of a key first used by ``add()`` answers its ids as one
        request; ``add()`` repeating a key first used here answers all the ids, in order."""
        ...

    async def state(self, user: str) -> tuple[int, int, int]:
        """``(newest_id visible to user, unread count, highest id ever pruned)``."""
        ...

    async def max_id(self) -> int: ...

    async def replay(self, user: str, after_id: int, topics: frozenset[str] | None,
                     limit: int) -> list[Notification]:
        """Visible notifications with ``id > after_id``, oldest first, at most ``limit``."""
        ...

    async def replay_rows(self, user: str, after_id: int, topics: frozenset[str] | None,
                          limit: int) -> Sequence[Sequence[Any]]:
        """:meth:`replay` as the stored rows, shaped for :func:`~sse_notify.wire.replayed`:
        ``(id, user, topic, title, body, priority, data as JSON text or None, created_at)``."""
        ...

    async def since(self, after_id: int, limit: int) -> list[Notification]:
        """Every notification (any user, broadcasts) with ``id > after_id``, oldest first,
        at most ``limit``: the log a node follows to deliver what other nodes committed."""
        ...

    async def history(self, user: str, limit: int, before: int | None,
                      unread: bool | None) -> HistoryPage: ...

    async def is_visible(self, user: str, id: int) -> bool: ...
    async def mark_read(self, user: str, ids: Sequence[int]) -> list[int]: ...
    async def mark_all_read(self, user: str) -> list[int]: ...
    async def prune(self, older_than_ms: int, limit: int) -> int:
        """Remove at most ``limit`` of the oldest notifications created before
        ``older_than_ms``; returns how many went."""
        ...


@dataclass(frozen=True, slots=True)
class Status:
    """What ``GET /notifications/<id>/status`` answers, as stored (times in epoch ms)."""

    id: int
    user: str | None  # None: a broadcast
    delivered_at: int | None  # for a user's notification: first written to a stream
    read_at: int | None  # for a user's notification: when that user marked it read
    read_count: int  # for a broadcast: how many users read it


@runtime_checkable
class ReceiptStore(Protocol):
    """Delivery receipts and read times (``reads`` keeps when each mark was made)."""

    async def record_deliveries(self, rows: Sequence[tuple[str, int, int]]) -> None:
        """``(user, id, delivered_at)`` rows in one statement; a pair already recorded keeps
        its first time, and a pair that names no notification of that user is ignored."""
        ...

    async def status(self, id: int) -> Status | None:
        """Notification ``id``'s receipts; None when it does not exist (or was pruned)."""
        ...


@dataclass(frozen=True, slots=True)
class DueEscalation:
    """A claimed escalation and what decides it (read and delivered), read as it is claimed."""

    id: int
    user: str
    unless: str  # "read" | "delivered"
    due_at: int  # epoch ms
    attempts: int  # this one included
    notification: Notification | None  # None: gone (retention)
    read: bool
    delivered: bool


@runtime_checkable
class EscalationStore(Protocol):
    async def claim_escalations(self, now: int, lease_ms: int, limit: int) -> list[DueEscalation]:
        """Up to ``limit`` rows due by ``now``, taken for ``lease_ms`` (no other claim sees
        them until then), attempts counted."""
        ...

    async def finish_escalation(self, id: int, user: str) -> None: ...
    async def retry_escalation(self, id: int, user: str, next_at: int) -> None: ...
    async def pending_escalations(self) -> int: ...


@runtime_checkable
class SecretKeeper(Protocol):
    """A store that keeps the cluster's signing secret."""

    async def keyring(self, create: bool) -> Keyring | None:
        """The secret (made first, with ``create``, if there is none); None: there is none."""
        ...

    async def rotate_secret(self, grace: int) -> Keyring | None:
        """A new signing secret, the current one accepted ``grace`` more seconds; None
        (nothing changed) when there is no secret yet."""
        ...


@runtime_checkable
class WebhookSecretKeeper(Protocol):
    """A store that keeps the cluster's webhook secret (``whsec_...``)."""

    async def webhook_secret(self, create: bool) -> str | None: ...


def open_store(url: str) -> Store:
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if scheme in POSTGRES_SCHEMES:
        from .postgres import PostgresStore

        return PostgresStore.from_url(url)
    raise ValueError(f"unsupported store URL scheme: {scheme!r} (use sqlite:// or postgresql://)")


async def check_store(url: str) -> None:
    """Fail early, with :class:`StoreConfigError`, on a store that cannot be used as
    configured: an unknown scheme, or a database that refuses or cannot be reached."""
    try:
        open_store(url)
    except ValueError as exc:
        raise StoreConfigError(str(exc)) from None
    if _is_postgres(url):  # a database server: connect once
        from .pg_schema import connect_pool

        await (await connect_pool(url)).close()


def cluster_keyring(settings: Settings) -> Keyring | None:
    """The secret the configured store keeps for the cluster; None when the secret is not
    the store's to keep (SQLite, or ``SSE_NOTIFY_SECRET`` set). Never makes one: with none
    yet (no server started), :class:`StoreConfigError`."""
    if settings.secret or not _is_postgres(settings.store_url):
        return None
    return asyncio.run(_with_secret_keeper(settings.store_url, lambda store: store.keyring(create=False)))


def rotate_cluster_secret(settings: Settings, grace: int) -> Keyring | None:
    """Rotate the secret the configured store keeps (None when it keeps none, as for
    :func:`cluster_keyring`); with no secret yet, :class:`StoreConfigError`."""
    if settings.secret or not _is_postgres(settings.store_url):
        return None
    return asyncio.run(_with_secret_keeper(settings.store_url, lambda store: store.rotate_secret(grace)))


def cluster_webhook_secret(settings: Settings) -> str | None:
    """The webhook secret the configured store keeps (None: not the store's to keep,
    SQLite); never makes one: with none yet, :class:`StoreConfigError`."""
    if not _is_postgres(settings.store_url):
        return None

    async def read() -> str | None:
        store = open_store(settings.store_url)
        assert isinstance(store, WebhookSecretKeeper)
        await store.open()  # type: ignore[attr-defined]
        try:
            return await store.webhook_secret(create=False)
        except StoreUnavailable as exc:
            raise StoreConfigError(str(exc)) from None
        finally:
            await store.close()  # type: ignore[attr-defined]
    secret = asyncio.run(read())
    if secret is None:
        raise StoreConfigError("the store holds no webhook secret yet: start the server once to create it")
    return secret


async def _with_secret_keeper(url: str, use: Callable[[SecretKeeper], Awaitable[Keyring | None]]) -> Keyring:
    store = open_store(url)
    assert isinstance(store, SecretKeeper)
    await store.open()
    try:
        keyring = await use(store)
    except StoreUnavailable as exc:
        raise StoreConfigError(str(exc)) from None
    finally:
        await store.close()
    if keyring is None:
        raise StoreConfigError("the store holds no secret yet: start the server once to create it")
    return keyring


def _is_postgres(url: str) -> bool:
    return url.split(":", 1)[0] in POSTGRES_SCHEMES
