"""Small ASGI helpers shared by the lean endpoints: request parts, JSON answers, and how a
stream's client is watched while its feed runs (by the server's disconnect hook where it
has one, else by a task reading ``receive``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl

from .._hypercorn.lean import disconnect_hook
from ..errors import ApiError
from ..feed import Feed, Start

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
    if "%" in raw or "+" in raw:
        pairs = parse_qsl(raw, keep_blank_values=True)
    else:  # nothing to unquote (a stream's token and cursor): the same pairs, cheaper
        pairs = [part.partition("=")[::2] for part in raw.split("&") if part]  # type: ignore[misc]
    for name, value in pairs:
        params.setdefault(name, value)
    return params


async def send_json(send: ASGISend, status: int, body: bytes,
                    extra_headers: Iterable[tuple[str, str]] = ()) -> None:
    """A whole JSON answer: ``body`` is already encoded."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra_headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: ASGISend, error: ApiError,
                     extra_headers: Iterable[tuple[str, str]] = ()) -> None:
    await send_json(send, error.status, error.body(), (*extra_headers, *error.headers.items()))


async def send_within(send: ASGISend, message: dict[str, Any], timeout: float = CLOSE_TIMEOUT) -> None:
    """A final send that must not hang on a client that stopped reading."""
    try:
        async with asyncio.timeout(timeout):
            await send(message)
    except (TimeoutError, OSError):
        pass


def watch_client(feed: Feed, receive: Receive | None = None,
                 client: Awaitable[None] | None = None) -> asyncio.Future[None] | None:
    """Call ``feed.client_gone`` when the client has gone, which ends
    :meth:`~sse_notify.feed.Feed.run` in the calling task. How the end is seen: given
    ``receive`` (a client that sends nothing more), the server's disconnect hook where it
    has one (:func:`~sse_notify._hypercorn.lean.disconnect_hook`: no task at all), else a
    task reading ``receive`` until the disconnect; given ``client``, a task running it (it
    ends when the client has gone). Returns that task, if any: hand it to
    :func:`unwatch_client` once the feed has ended."""
    hook = None if receive is None else disconnect_hook(receive)
    if hook is not None:
        hook(feed.client_gone)
        return None
    watcher = asyncio.ensure_future(client if receive is None else _disconnected(receive))
    watcher.add_done_callback(feed.client_gone)
    return watcher


def unwatch_client(receive: Receive | None, watcher: asyncio.Future[None] | None) -> None:
    """Stop what :func:`watch_client` started (a feed that has ended ignores the call)."""
    if watcher is not None:
        watcher.cancel()
    elif receive is not None:
        hook = disconnect_hook(receive)
        if hook is not None:
            hook(None)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] not in ("http.disconnect", "websocket.disconnect"):
        pass


class TransportFeed(Feed):
    """A feed whose events go out through ASGI ``send`` (the subclass's ``write``) or, once
    live, straight to the connection through ``direct`` (the subclass's ``push_direct``,
    given to the hub as the stream's push), where :mod:`.._hypercorn.direct` offers it."""

    __slots__ = ("send", "direct")
    #: The stream's transport name ("sse", "ws").
    TRANSPORT = ""

    def __init__(self, service: Any, user: str, topics: frozenset[str] | None,
                 cursor: int | None, expires_at: float | None, start: Start | None,
                 send: ASGISend, direct: Callable[[bytes], bool] | None):
        super().__init__(service.hub, service.store, user, transport=self.TRANSPORT, topics=topics,
                         cursor=cursor, expires_at=expires_at,
                         heartbeat=service.settings.heartbeat, start=start)
        self.send = send
        self.direct = direct
        if direct is not None:
            self.push = self.push_direct

    def push_direct(self, events: list[Any]) -> bool:
        raise NotImplementedError
