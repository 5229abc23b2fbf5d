"""``GET /events``: Server-Sent Events.

Headers and the ``retry:`` field are flushed before anything else, so ``EventSource.onopen``
fires at once -- but only once the stream is subscribed and its user's state read (the
feed calls back to start the response): whatever commits after a client has seen the
headers reaches it. Storage failing before that is still answered with the JSON 503.
The feed runs in the request's task; the client going away is seen by Hypercorn's
disconnect hook (:mod:`~sse_notify._hypercorn.lean`), else by one watcher task reading
``receive`` (:func:`~.asgi.run_feed`). Queued events are written in one chunk per
wake-up, not one send per event. Over HTTP/1.1 on plain TCP, once the replay is over, the
hub writes live events and keepalives itself, straight to the connection
(:mod:`~sse_notify._hypercorn.direct`); elsewhere (HTTP/2, TLS) and whenever the socket
is not keeping up, the stream's task sends them through ASGI.
"""

from __future__ import annotations


from ..auth import subscriber_token, verify_subscriber
from ..cors import cors_headers, preflight_headers
from ..errors import ApiError
from ..feed import Feed, parse_cursor, parse_topics
from ..hub import Push
from ..limits import Slot
from ..models import valid_name
from ..service import Service
from ..wire import Outbound, sse_retry
from .._hypercorn.direct import BodyWriter, body_writer
from .asgi import (
    ASGISend, Receive, Scope, query_params, request_headers, run_feed, send_error, send_within,
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

    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        admitted = await self._admit(scope, send)
        if admitted is None:
            return
        feed, slot, cors = admitted

        async def write(events: list[Outbound]) -> None:
            await send({"type": "http.response.body", "body": _chunk(events), "more_body": True})

        with slot:
            reason = await run_feed(feed, write, receive=receive)
        if reason == "gone":
            return
        if feed.started:
            await send_within(send, {"type": "http.response.body", "body": b"", "more_body": False})
        else:  # storage failed (or the server began shutting down) before the stream started
            await send_error(send, ApiError.unavailable("The stream could not start; try again."), cors)

    async def _admit(self, scope: Scope, send: ASGISend) -> tuple[Feed, Slot, tuple[tuple[str, str], ...]] | None:
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
        head = {"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.lower().encode(), v.encode()) for k, v in cors),
        ]}
        retry = sse_retry(settings.retry)

        async def start() -> None:
            await send(head)
            await send({"type": "http.response.body", "body": retry, "more_body": True})

        feed = Feed(self.service.hub, self.service.store, claims.subject, transport="sse",
                    topics=topics, cursor=parse_cursor(raw_cursor),
                    expires_at=claims.expires_at, heartbeat=settings.heartbeat, start=start,
                    push=_pusher(body_writer(scope, send)))
        return feed, slot, tuple(cors)  # () without CORS: a shared empty tuple


def _chunk(events: list[Outbound]) -> bytes:
    return events[0].sse if len(events) == 1 else b"".join([e.sse for e in events])


def _pusher(direct: BodyWriter | None) -> Push | None:
    """The hub's push for this stream: its events as one SSE chunk, written directly."""
    if direct is None:
        return None
    return lambda events: direct(_chunk(events))

