"""Signing and verifying subscriber and publisher tokens.

One serializer per role, told apart by salt, so a publisher token can never stand in for a
subscriber token or the reverse. Every failure (tampered, expired, wrong role, malformed)
raises the same :class:`InvalidToken`, caught in one place by the callers. Expiry is
carried inside the signed payload (``e``, epoch seconds) rather than derived from the
signing time, so each token may have its own lifetime.

An application backend mints subscriber tokens with::

    from sse_notify import TokenSigner
    token = TokenSigner(secret).subscriber("alice", ttl=3600)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadData, URLSafeTimedSerializer

from .models import valid_name

__all__ = ["TokenSigner", "Claims", "InvalidToken", "DEFAULT_SUBSCRIBER_TTL"]

DEFAULT_SUBSCRIBER_TTL = 24 * 3600
_SUBSCRIBER_SALT = "sse-notify.subscriber.v1"
_PUBLISHER_SALT = "sse-notify.publisher.v1"


class InvalidToken(Exception):
    """The token is missing, malformed, wrongly signed, expired or of the wrong kind."""


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str  # user id (subscriber) or publisher name
    expires_at: float | None  # epoch seconds


class TokenSigner:
    def __init__(self, secret: str | bytes | Sequence[str | bytes]):
        """``secret`` may be a list, oldest first: all verify, the last one signs."""
        keys = [secret] if isinstance(secret, (str, bytes)) else list(secret)
        if not keys or not all(keys):
            raise ValueError("a non-empty secret is required")
        self._subscriber = URLSafeTimedSerializer(keys, salt=_SUBSCRIBER_SALT)
        self._publisher = URLSafeTimedSerializer(keys, salt=_PUBLISHER_SALT)

    def subscriber(self, user: str, ttl: float = DEFAULT_SUBSCRIBER_TTL) -> str:
        if not valid_name(user):
            raise ValueError(f"invalid user id: {user!r}")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        return self._subscriber.dumps({"u": user, "e": time.time() + ttl})

    def publisher(self, name: str, ttl: float | None = None) -> str:
        if not valid_name(name):
            raise ValueError(f"invalid publisher name: {name!r}")
        return self._publisher.dumps({"u": name, "e": None if ttl is None else time.time() + ttl})

    def verify_subscriber(self, token: str | None) -> Claims:
        claims = self._verify(self._subscriber, token)
        if claims.expires_at is None:  # subscriber tokens always expire
            raise InvalidToken
        return claims

    def verify_publisher(self, token: str | None) -> Claims:
        return self._verify(self._publisher, token)

    @staticmethod
    def _verify(serializer: URLSafeTimedSerializer, token: str | None) -> Claims:
        if not token or len(token) > 4096:
            raise InvalidToken
        try:
            payload = serializer.loads(token)
        except (BadData, UnicodeError, ValueError):
            raise InvalidToken from None
        if not isinstance(payload, dict):
            raise InvalidToken
        subject, expires_at = payload.get("u"), payload.get("e")
        if not valid_name(subject):
            raise InvalidToken
        if expires_at is not None:
            if not isinstance(expires_at, (int, float)) or expires_at <= time.time():
                raise InvalidToken
        return Claims(subject, expires_at)
