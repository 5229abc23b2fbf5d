"""Small ASGI helpers shared by the transports: request parts and JSON error answers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from ..errors import ApiError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

CLOSE_TIMEOUT = 2.0


def request_headers(scope: Scope) -> dict[str, str]:
    """Lower-cased header names; a repeated header keeps its first value."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def query_params(scope: Scope) -> dict[str, str]:
    """A repeated parameter keeps its first value."""
    params: dict[str, str] = {}
    raw = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(raw, keep_blank_values=True):
        params.setdefault(name, value)
    return params


async def send_error(send: ASGISend, error: ApiError,
                     extra_headers: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in (*extra_headers, *error.headers.items())]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_within(send: ASGISend, message: dict[str, Any], timeout: float = CLOSE_TIMEOUT) -> None:
    """A final send that must not hang on a client that stopped reading."""
    try:
        async with asyncio.timeout(timeout):
            await send(message)
    except (TimeoutError, OSError):
        pass
