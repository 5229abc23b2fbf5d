"""The one core of the SDK that :class:`Client` and :class:`AsyncClient` share.

Everything here is free of I/O, as in httpx's own ``BaseClient``: what each API call
sends (:class:`Call`: method, path, query, JSON body, ``Idempotency-Key``) and how its
answer is read, the retry policy (:class:`RetryPolicy`: which outcomes are retried and
after how long) and the mapping of error answers to typed exceptions. ``_sync`` and
``_async`` add only the loop that sends, sleeps and retries, and the public methods'
signatures, which delegate here.

Deliberate decisions:

- A publish generates its ``Idempotency-Key`` once, when its :class:`Call` is built, and
  the same built request is sent on every attempt: a retry after a lost answer is
  answered ``200`` with the first ids and never stores twice.
- Retried: connection errors, timeouts, a connection dropped before the answer, 429 with
  ``Retry-After``, 502, 503 and 504, with capped exponential backoff and jitter ("equal
  jitter": half the step fixed, half random, so retries neither stampede nor collapse to
  zero). A ``Retry-After`` is waited out exactly, unless it is longer than
  :data:`MAX_RETRY_AFTER`: then the error is raised at once rather than blocking the
  caller for minutes. A 429 without ``Retry-After`` is not retried: this server omits it
  exactly when waiting cannot help (more at once than the publisher's burst).
- Other errors (401, 404, 422, ...) are never retried: repeating them cannot succeed.
- Bodies are sent as compact JSON encoded once (orjson, as the service uses).
"""

from __future__ import annotations

import email.utils
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

import httpx
import orjson

from .errors import (InvalidRequest, NetworkError, NotFound, RateLimited, SSENotifyError, Unauthorized,
                     Unavailable)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "MAX_BACKOFF",
    "MAX_RETRY_AFTER",
    "Call",
    "NotificationStatus",
    "Presence",
    "Receipt",
    "RetryPolicy",
    "TokenInfo",
    "error_from_response",
    "network_error",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 10.0
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: Transport failures worth another attempt; others (a malformed URL, say) are not.
RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


# -- what the API answers ------------------------------------------------------------

def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A subscriber token minted by ``POST /tokens``. The token stays out of ``repr``, so
    logging this object never leaks it."""

    token: str = field(repr=False)
    user: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Presence:
    """A user's open streams on every node; ``last_seen``: when the last one closed."""

    online: bool
    streams: int
    last_seen: datetime | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """When a notification first reached any stream of a user, and when they read it."""

    delivered_at: datetime | None
    read_at: datetime | None


@dataclass(frozen=True, slots=True)
class NotificationStatus:
    """``GET /notifications/<id>/status``: per target user (``users``), or for a
    broadcast how many users have read it (``read``; ``users`` is then empty)."""

    id: int
    broadcast: bool
    users: dict[str, Receipt]
    read: int | None = None


def _token(body: dict[str, Any]) -> TokenInfo:
    return TokenInfo(token=body["token"], user=body["user"], expires_at=datetime.fromisoformat(body["expires_at"]))


def _presence(body: dict[str, Any]) -> dict[str, Presence]:
    return {user: Presence(online=p["online"], streams=p["streams"], last_seen=_time(p.get("last_seen")))
            for user, p in body["users"].items()}


def _status(body: dict[str, Any]) -> NotificationStatus:
    users = {user: Receipt(delivered_at=_time(r.get("delivered_at")), read_at=_time(r.get("read_at")))
             for user, r in (body.get("users") or {}).items()}
    return NotificationStatus(id=body["id"], broadcast=body["broadcast"], users=users, read=body.get("read"))


# -- what each call sends ------------------------------------------------------------

@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request to send (the same one on every attempt) and how to read
    a successful answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: tuple[tuple[str, str], ...] | None = None
    body: Any = None
    idempotency_key: str | None = None

    def build(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        headers = {}
        content = None
        if self.body is not None:
            content = orjson.dumps(self.body)
            headers["Content-Type"] = "application/json"
        if self.idempotency_key is not None:
            headers["Idempotency-Key"] = self.idempotency_key
        return http.build_request(self.method, self.path, params=self.params, content=content, headers=headers)

    def finish(self, response: httpx.Response) -> T:
        """The parsed answer, or the typed error for a non-2xx one."""
        if not response.is_success:
            raise error_from_response(response)
        try:
            return self.parse(response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise SSENotifyError("bad_response", f"unexpected answer to {self.method} {self.path}: "
                                 f"{response.text[:200]!r}", response.status_code) from exc

    # -- the calls ------------------------------------------------------------------

    @staticmethod
    def publish(*, user: str | None, users: Iterable[str] | None, broadcast: bool, title: str,
                body: str | None, priority: str | None, topic: str | None, data: Mapping[str, Any] | None,
                escalate: Mapping[str, Any] | None, idempotency_key: str | None) -> Call[list[int]]:
        return Call("POST", "/notifications", lambda answer: list(answer["ids"]),
                    body=notification_body(user=user, users=users, broadcast=broadcast, title=title, body=body,
                                           priority=priority, topic=topic, data=data, escalate=escalate),
                    idempotency_key=idempotency_key or new_idempotency_key())

    @staticmethod
    def publish_many(bodies: Iterable[Mapping[str, Any]], idempotency_key: str | None) -> Call[list[list[int]]]:
        return Call("POST", "/notifications", lambda answer: [list(r["ids"]) for r in answer["results"]],
                    body=[dict(b) for b in bodies], idempotency_key=idempotency_key or new_idempotency_key())

    @staticmethod
    def token(user: str, ttl: float | None) -> Call[TokenInfo]:
        payload: dict[str, Any] = {"user": user}
        if ttl is not None:
            payload["ttl"] = ttl
        return Call("POST", "/tokens", _token, body=payload)

    @staticmethod
    def presence(users: Iterable[str]) -> Call[dict[str, Presence]]:
        return Call("GET", "/presence", _presence, params=tuple(("user", u) for u in users))

    @staticmethod
    def status(notification_id: int) -> Call[NotificationStatus]:
        return Call("GET", f"/notifications/{int(notification_id)}/status", _status)


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def notification_body(*, user: str | None = None, users: Iterable[str] | None = None, broadcast: bool = False,
                      title: str, body: str | None = None, priority: str | None = None, topic: str | None = None,
                      data: Mapping[str, Any] | None = None,
                      escalate: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object of one notification to publish, with only the fields given. The
    target rules (exactly one of them) are the service's to check: it answers 422."""
    out: dict[str, Any] = {}
    if user is not None:
        out["user"] = user
    if users is not None:
        out["users"] = list(users)
    if broadcast:
        out["broadcast"] = True
    out["title"] = title
    for name, value in (("body", body), ("priority", priority), ("topic", topic)):
        if value is not None:
            out[name] = value
    if data is not None:
        out["data"] = dict(data)
    if escalate is not None:
        out["escalate"] = dict(escalate)
    return out


# -- retries -------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` further attempts after the first; the n-th waits about
    ``backoff * 2**n`` seconds (at most :data:`MAX_BACKOFF`), or the ``Retry-After``."""

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0:
            raise ValueError("retries and backoff must not be negative")

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retrying after ``attempt`` (0: the first) ended with
        ``response`` (None: no answer, a retryable transport error), or None: do not
        retry (the answer is final, or the retries are spent)."""
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        if attempt >= self.retries:
            return None
        if response is not None:
            after = retry_after(response.headers)
            if response.status_code == 429 and after is None:
                return None
            if after is not None:
                return after if after <= MAX_RETRY_AFTER else None
        step = min(MAX_BACKOFF, self.backoff * 2 ** attempt)
        return step / 2 + random.uniform(0, step / 2)


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (either form, delta-seconds or HTTP-date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# -- errors --------------------------------------------------------------------------

_ERRORS: dict[int, type[SSENotifyError]] = {
    400: InvalidRequest, 401: Unauthorized, 404: NotFound, 413: InvalidRequest, 422: InvalidRequest,
    429: RateLimited, 502: Unavailable, 503: Unavailable, 504: Unavailable,
}


def error_from_response(response: httpx.Response) -> SSENotifyError:
    """The typed exception for an error answer, carrying the contract's JSON error."""
    status = response.status_code
    try:
        body = response.json()
        code, message = body["error"], body["message"]
        if not isinstance(code, str) or not isinstance(message, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):  # not the service's JSON: a proxy's page, say
        code, message = f"http_{status}", response.text.strip()[:200] or response.reason_phrase
    if status == 429:
        return RateLimited(code, message, status, retry_after=retry_after(response.headers))
    return _ERRORS.get(status, SSENotifyError)(code, message, status)


def network_error(request: httpx.Request, exc: httpx.TransportError) -> NetworkError:
    return NetworkError(f"{request.method} {request.url.copy_with(query=None)}: "
                        f"{type(exc).__name__}: {exc or 'no detail'}")
