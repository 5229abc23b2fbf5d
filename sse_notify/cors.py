"""Cross-origin rules: same-origin only unless ``--allow-origin`` lists the origin.

Allowed origins get credentialed CORS (the exact origin echoed, never ``*``) so an
``EventSource(url, {withCredentials: true})`` on another origin can stream with its cookie.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["cors_headers", "preflight_headers"]

_ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, Last-Event-ID"


def cors_headers(origin: str | None, allowed: Collection[str]) -> list[tuple[str, str]]:
    if not origin or origin.rstrip("/") not in allowed:
        return []
    return [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
    ]


def preflight_headers(origin: str | None, allowed: Collection[str]) -> list[tuple[str, str]]:
    headers = cors_headers(origin, allowed)
    if headers:
        headers += [
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", _ALLOW_HEADERS),
            ("Access-Control-Max-Age", "600"),
        ]
    return headers
