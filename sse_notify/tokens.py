"""Signing and verifying subscriber and publisher tokens.

One serializer per role, told apart by salt, so a publisher token can never stand in for a
subscriber token or the reverse. Every failure (tampered, expired, wrong role, malformed)
raises the same :class:`InvalidToken`, caught in one place by the callers. Expiry is
carried inside the signed payload (``e``, epoch seconds) rather than derived from the
signing time, so each token may have its own lifetime.

Key rotation: new tokens are signed with the current secret only; the previous secret
still verifies until ``previous_until``, checked at every verification, so a running
server stops honouring it on time. Signatures are compared in constant time by
itsdangerous (``hmac.compare_digest``).

An application backend mints subscriber tokens with::

    from sse_notify import TokenSigner
    token = TokenSigner(secret).subscriber("alice", ttl=3600)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from itsdangerous import BadData, BadSignature, URLSafeTimedSerializer

from .config import Keyring
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
    def __init__(self, secret: str | bytes, previous: str | bytes | None = None,
                 previous_until: float | None = None):
        """Sign with ``secret``; also accept ``previous`` until ``previous_until`` (epoch
        seconds; None: for as long as it is given)."""
        if not secret:
            raise ValueError("a non-empty secret is required")
        self._current = _serializers(secret)
        self._previous = _serializers(previous) if previous else None
        self._previous_until = previous_until

    @classmethod
    def from_keyring(cls, keyring: Keyring) -> TokenSigner:
        return cls(keyring.secret, keyring.previous, keyring.previous_until)

    def subscriber(self, user: str, ttl: float = DEFAULT_SUBSCRIBER_TTL) -> str:
        if not valid_name(user):
            raise ValueError(f"invalid user id: {user!r}")
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        return self._current[_SUBSCRIBER_SALT].dumps({"u": user, "e": time.time() + ttl})

    def publisher(self, name: str, ttl: float | None = None) -> str:
        if not valid_name(name):
            raise ValueError(f"invalid publisher name: {name!r}")
        return self._current[_PUBLISHER_SALT].dumps(
            {"u": name, "e": None if ttl is None else time.time() + ttl})

    def verify_subscriber(self, token: str | None) -> Claims:
        claims = self._verify(_SUBSCRIBER_SALT, token)
        if claims.expires_at is None:  # subscriber tokens always expire
            raise InvalidToken
        return claims

    def verify_publisher(self, token: str | None) -> Claims:
        return self._verify(_PUBLISHER_SALT, token)

    def _verify(self, salt: str, token: str | None) -> Claims:
        if not token or len(token) > 4096:
            raise InvalidToken
        try:
            payload = self._loads(salt, token)
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

    def _loads(self, salt: str, token: str) -> object:
        try:
            return self._current[salt].loads(token)
        except BadSignature:
            until = self._previous_until
            if self._previous is None or (until is not None and time.time() >= until):
                raise
            return self._previous[salt].loads(token)


def _serializers(secret: str | bytes) -> dict[str, URLSafeTimedSerializer]:
    """One serializer per role, told apart by salt."""
    return {salt: URLSafeTimedSerializer(secret, salt=salt)
            for salt in (_SUBSCRIBER_SALT, _PUBLISHER_SALT)}
