"""``Client``: the blocking SDK, for Flask, Django, scripts and workers.

Only the send-sleep-retry loop and the public signatures live here; what is sent, what
is retried and how answers are read is in :mod:`._core`, shared with :class:`AsyncClient`.
One ``httpx.Client`` (a connection pool) per ``Client``: create it once, share it across
threads, close it (or use ``with``) when done.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ._core import (DEFAULT_BACKOFF, DEFAULT_RETRIES, DEFAULT_TIMEOUT, RETRY_ERRORS, Call, NotificationStatus,
                    Presence, RetryPolicy, TokenInfo, network_error)

__all__ = ["Client"]

T = TypeVar("T")


class Client:
    """A publisher's client of one sse-notify service.

    ``base_url`` is the service's address (``https://notify.example.com``),
    ``publisher_token`` one printed by ``sse-notify token --publisher NAME``. ``timeout``
    bounds each attempt in seconds; a failed attempt is retried up to ``retries`` times
    (see :class:`RetryPolicy`), ``backoff`` seconds being the first wait.
    """

    def __init__(self, base_url: str, publisher_token: str, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF):
        self._policy = RetryPolicy(retries, backoff)
        self._http = httpx.Client(base_url=base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {publisher_token}"})

    def publish(self, *, user: str | None = None, users: Iterable[str] | None = None, broadcast: bool = False,
                title: str, body: str | None = None, priority: str | None = None, topic: str | None = None,
                data: Mapping[str, Any] | None = None, escalate: Mapping[str, Any] | None = None,
                idempotency_key: str | None = None) -> list[int]:
        """Publish one notification to ``user``, each of ``users``, or everyone
        (``broadcast=True``); returns the stored ids, one per user (one for a broadcast).
        ``escalate={"after": "10m", "unless": "read"}`` asks for a webhook if it is not
        read in time. An idempotency key is generated unless given, and reused by every
        retry of this call."""
        return self._run(Call.publish(user=user, users=users, broadcast=broadcast, title=title, body=body,
                                      priority=priority, topic=topic, data=data, escalate=escalate,
                                      idempotency_key=idempotency_key))

    def publish_many(self, bodies: Iterable[Mapping[str, Any]], *,
                     idempotency_key: str | None = None) -> list[list[int]]:
        """Publish 1 to 1000 notifications in one request and one commit (each body as
        :meth:`publish` takes it, e.g. ``{"user": "alice", "title": "Hi"}``); returns each
        one's ids, in order. Nothing is stored if any body is invalid."""
        return self._run(Call.publish_many(bodies, idempotency_key))

    def token(self, user: str, ttl: float | None = None) -> TokenInfo:
        """Mint a subscriber token for ``user`` (``ttl`` seconds; the service's default: 24 h)."""
        return self._run(Call.token(user, ttl))

    def presence(self, *users: str) -> dict[str, Presence]:
        """Whether each user has an open stream anywhere, how many, and when last seen."""
        return self._run(Call.presence(users))

    def status(self, notification_id: int) -> NotificationStatus:
        """Delivery and read receipts of one notification."""
        return self._run(Call.status(notification_id))

    def _run(self, call: Call[T]) -> T:
        request = call.build(self._http)
        for attempt in itertools.count():
            try:
                response = self._http.send(request)
            except RETRY_ERRORS as exc:
                delay = self._policy.delay(attempt, None)
                if delay is None:
                    raise network_error(request, exc) from exc
            except httpx.TransportError as exc:
                raise network_error(request, exc) from exc
            else:
                delay = self._policy.delay(attempt, response)
                if delay is None:
                    return call.finish(response)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
