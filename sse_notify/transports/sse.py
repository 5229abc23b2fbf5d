"""``GET /events``: Server-Sent Events.

Headers and the ``retry:`` field are flushed before anything else, so ``EventSource.onopen``
fires at once -- but only once the stream is subscribed and its user's state read (the
feed calls back to start the response): whatever commits after a client has seen the
headers reaches it. Storage failing before that is still answered with the JSON 503.
The feed (the stream itself, with its ASGI ``send`` and direct writer: no closures per
stream) runs in the request's task, two frames deep below Hypercorn's; the client going
away is seen by Hypercorn's disconnect hook (:mod:`~sse_notify._hypercorn.lean`), else by
one watcher task reading ``receive`` (:func:`~.asgi.watch_client`). Queued events are written in one chunk per
wake-up, not one send per event. Over HTTP/1.1 on plain TCP, once the replay is over, the
hub writes live events and keepalives itself, straight to the connection
(:mod:`~sse_notify._hypercorn.direct`); elsewhere (HTTP/2, TLS) and whenever the socket
is not keeping up, the stream's task sends them through ASGI.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..auth import subscriber_token, verify_subscriber
from ..cors import cors_headers, preflight_headers
from ..errors import ApiError
from ..feed import parse_cursor, parse_topics
from ..limits import Slot
from ..models import valid_name
from ..service import Service
from ..wire import Outbound, sse_retry
from .._hypercorn.direct import body_writer
from .asgi import (
    ASGISend, Receive, Scope, TransportFeed, query_params, request_headers, send_error, send_within,
    unwatch_client, watch_client,
)

__all__ = ["SSEEndpoint", "stream_topics"]


def stream_topics(query: dict[str, str]) -> frozenset[str] | None:
    topics = parse_topics(query.get("topics"))
    if topics is not None and not all(valid_name(t) for t in topics):
        raise ApiError.invalid("Each topic must match ^[A-Za-z0-9._@:-]{1,128}$.")
    return topics


class SSEEndpoint:
    def __init__(self, service: Service):
        self.service = service
        self._retry = sse_retry(service.settings.retry)
        #: The response head without CORS headers: one dict shared by every stream
        #: (Hypercorn keeps the head it was sent for the life of the response).
        self._head = _head(())

    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        admitted = await self._admit(scope, send)
        if admitted is None:
            return
        feed, slot, cors = admitted
        with slot:
            watcher = watch_client(feed, receive)
            try:
                reason = await feed.run(feed.write)
            finally:
                unwatch_client(receive, watcher)
        if reason == "gone":
            return
        if feed.started:
            await send_within(send, {"type": "http.response.body", "body": b"", "more_body": False})
        else:  # storage failed (or the server began shutting down) before the stream started
            await send_error(send, ApiError.unavailable("The stream could not start; try again."), cors)

    async def _admit(self, scope: Scope, send: ASGISend) -> tuple[_SSEFeed, Slot, tuple[tuple[str, str], ...]] | None:
        """Check the request and take a stream slot: the feed (which starts the response
        when the stream is subscribed), the slot and the CORS headers (for an error answer
        if it never starts), or None when the request was answered otherwise. (A function
        of its own so that the request's parsed parts are not kept for the life of the
        stream.)"""
        settings = self.service.settings
        headers = request_headers(scope)
        cors = cors_headers(headers.get("origin"), settings.allow_origin)
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": [
                (k.lower().encode(), v.encode())
                for k, v in preflight_headers(headers.get("origin"), settings.allow_origin)]})
            await send({"type": "http.response.body", "body": b""})
            return None
        query = query_params(scope)
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise ApiError(405, "method_not_allowed", "Use GET to open an event stream.",
                               {"Allow": "GET"})
            claims = verify_subscriber(self.service.signer, subscriber_token(headers, query))
            topics = stream_topics(query)
            slot = self.service.slots.take(claims.subject)
        except ApiError as error:
            await send_error(send, error, cors)
            return None

        raw_cursor = headers["last-event-id"] if "last-event-id" in headers else query.get("last_event_id")
        head = _head(cors) if cors else self._head
        retry = self._retry

        async def start() -> None:
            await send(head)
            await send({"type": "http.response.body", "body": retry, "more_body": True})

        feed = _SSEFeed(self.service, claims.subject, topics, parse_cursor(raw_cursor),
                        claims.expires_at, start, send, body_writer(scope, send))
        return feed, slot, tuple(cors)  # () without CORS: a shared empty tuple


class _SSEFeed(TransportFeed):
    """The feed of one ``/events`` response: its events as SSE chunks, through ASGI
    (:meth:`write`) or, live, pushed straight to the connection (:meth:`push_direct`)."""

    __slots__ = ()
    TRANSPORT = "sse"

    async def write(self, events: list[Outbound]) -> None:
        await self.send({"type": "http.response.body", "body": _chunk(events), "more_body": True})

    def push_direct(self, events: list[Outbound]) -> bool:
        """The hub's push for this stream: its events as one SSE chunk, written directly."""
        return self.direct(_chunk(events))  # type: ignore[misc]


def _head(cors: Iterable[tuple[str, str]]) -> dict[str, Any]:
    return {"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
        *((k.lower().encode(), v.encode()) for k, v in cors),
    ]}


def _chunk(events: list[Outbound]) -> bytes:
    return events[0].sse if len(events) == 1 else b"".join([e.sse for e in events])
