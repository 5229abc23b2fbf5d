"""``GET /events``: Server-Sent Events.

Headers and the ``retry:`` field are flushed before anything else, so ``EventSource.onopen``
fires at once. A stream runs two tasks: the sender (the feed) and a watcher that waits for
the client to go away; whichever ends first ends the other. Queued events are written in
one chunk per wake-up, not one send per event.
"""

from __future__ import annotations

import asyncio
import logging

from ..auth import subscriber_token, verify_subscriber
from ..cors import cors_headers, preflight_headers
from ..errors import ApiError
from ..feed import Feed, parse_cursor, parse_topics
from ..models import valid_name
from ..service import Service
from ..wire import Outbound, sse_retry
from .asgi import ASGISend, Receive, Scope, request_headers, query_params, send_error, send_within

__all__ = ["SSEEndpoint", "stream_topics"]

log = logging.getLogger(__name__)


def stream_topics(query: dict[str, str]) -> frozenset[str] | None:
    topics = parse_topics(query.get("topics"))
    if topics is not None and not all(valid_name(t) for t in topics):
        raise ApiError.invalid("Each topic must match ^[A-Za-z0-9._@:-]{1,128}$.")
    return topics


class SSEEndpoint:
    def __init__(self, service: Service):
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        settings = self.service.settings
        headers = request_headers(scope)
        cors = cors_headers(headers.get("origin"), settings.allow_origin)
        if scope["method"] == "OPTIONS":
            await send({"type": "http.response.start", "status": 204, "headers": [
                (k.lower().encode(), v.encode())
                for k, v in preflight_headers(headers.get("origin"), settings.allow_origin)]})
            await send({"type": "http.response.body", "body": b""})
            return
        query = query_params(scope)
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise ApiError(405, "method_not_allowed", "Use GET to open an event stream.",
                               {"Allow": "GET"})
            claims = verify_subscriber(self.service.signer, subscriber_token(headers, query))
            topics = stream_topics(query)
        except ApiError as error:
            await send_error(send, error, cors)
            return

        raw_cursor = headers["last-event-id"] if "last-event-id" in headers else query.get("last_event_id")
        feed = Feed(self.service.hub, self.service.store, claims.subject, transport="sse",
                    topics=topics, cursor=parse_cursor(raw_cursor),
                    expires_at=claims.expires_at, heartbeat=settings.heartbeat)

        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *((k.lower().encode(), v.encode()) for k, v in cors),
        ]})
        await send({"type": "http.response.body", "body": sse_retry(settings.retry), "more_body": True})

        async def write(events: list[Outbound]) -> None:
            body = events[0].sse if len(events) == 1 else b"".join(e.sse for e in events)
            await send({"type": "http.response.body", "body": body, "more_body": True})

        sender = asyncio.create_task(feed.run(write))
        watcher = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            done, _ = await asyncio.wait((sender, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sender.cancel()
            watcher.cancel()
        if watcher in done:
            return  # the client went away; nothing more to send
        if not sender.cancelled() and sender.exception() is not None:
            log.error("event stream failed: %r", sender.exception())
        await send_within(send, {"type": "http.response.body", "body": b"", "more_body": False})


async def _wait_for_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
