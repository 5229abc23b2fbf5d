"""The Store protocol and ``open_store(url)``, which picks a backend by URL scheme.

A store keeps notifications, per-user read state and idempotency keys. Its one ordering
duty: ``on_commit`` is called with each committed batch, in commit (= id) order, before
any ``add()`` of that batch returns, so live fan-out sees notifications in id order.
Backends are imported lazily; a caller may pass a ready instance instead of a URL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..models import Notification, NotificationDraft

__all__ = ["Store", "BulkPublishResult", "HistoryPage", "PublishResult", "StoreUnavailable", "open_store"]


class StoreUnavailable(Exception):
    """Storage cannot answer right now (disk full, locked, removed...)."""


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


def open_store(url: str) -> Store:
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    raise ValueError(f"unsupported store URL scheme: {scheme!r}")
