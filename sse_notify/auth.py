"""Pulling a token out of a request, and checking it.

A subscriber token travels in ``Authorization: Bearer``, else the ``token`` query
parameter (EventSource cannot set headers), else the ``sse_notify_token`` cookie: the first
carrier present is the one used. A publisher token travels only in the header. Works on
plain mappings, so both Quart requests and raw ASGI scopes can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie

from .errors import ApiError
from .tokens import Claims, InvalidToken, TokenSigner

__all__ = ["COOKIE_NAME", "bearer", "subscriber_token", "verify_subscriber", "verify_publisher"]

COOKIE_NAME = "sse_notify_token"


def bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else ""


def _cookie(header: str | None) -> str | None:
    if not header:
        return None
    try:
        morsel = SimpleCookie(header).get(COOKIE_NAME)
    except CookieError:
        return None
    return morsel.value if morsel is not None else None


def subscriber_token(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The token from the first carrier present; "" when that carrier is malformed."""
    authorization = headers.get("authorization")
    if authorization is not None:
        return bearer(authorization)
    if "token" in query:
        return query["token"]
    return _cookie(headers.get("cookie"))


def verify_subscriber(signer: TokenSigner, token: str | None) -> Claims:
    try:
        return signer.verify_subscriber(token)
    except InvalidToken:
        raise ApiError.unauthorized("A valid subscriber token is required.") from None


def verify_publisher(signer: TokenSigner, headers: Mapping[str, str]) -> Claims:
    try:
        return signer.verify_publisher(bearer(headers.get("authorization")))
    except InvalidToken:
        raise ApiError.unauthorized("A valid publisher token is required.") from None
