"""``GET /ws``: the same feed over WebSocket, as JSON text frames.

Auth comes from ``Authorization: Bearer`` or ``?token=`` (cursor in ``?last_event_id=``),
else from a first frame ``{"type": "auth", "token": ..., "last_event_id": ...}`` within
10 s. Either way the upgrade is accepted before any frame, so a failure can be explained in
an ``error`` frame before the ``4401`` close. With the token on the request, a good token's
upgrade is accepted only once the stream is subscribed (the feed calls back to accept, as
``/events`` sends its headers), so a client's ``onopen`` means what ``auth_success`` means:
whatever commits from then on reaches it. An auth frame needs the upgrade first; there
``auth_success`` is that moment. After auth the feed runs in the connection's
task while a receiver task answers the client's frames (``read``, ``ping``); bad frames
get an error frame and the socket stays open. The receiver ending (the client closed)
ends the feed (:func:`~.asgi.watch_client`). Over HTTP/1.1 on plain TCP, once the replay is
over, the hub writes live events itself, several frames in one write (:mod:`~sse_notify._hypercorn.direct`);
the task sends through ASGI otherwise. The final close (1013 for a slow consumer) is
written there directly too, so that it does not wait behind Hypercorn's ping, stuck in
``drain()`` with the send lock while the client is backed up. ``permessage-deflate`` is declined (a compressed
socket keeps zlib state each way: 22 KiB -> 113 KiB per connection).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import orjson

from ..auth import bearer, verify_subscriber
from ..errors import ApiError
from ..feed import parse_cursor
from ..limits import Slot
from ..schemas import MarkReadBody, parse
from ..service import Service
from ..store import StoreUnavailable
from ..wire import KEEPALIVE, Outbound, ws_frame
from .._hypercorn.direct import frame_writer, refuse_permessage_deflate
from .asgi import (
    ASGISend, Receive, Scope, TransportFeed, query_params, request_headers, send_within, unwatch_client,
    watch_client,
)
from .sse import stream_topics

__all__ = ["WebSocketEndpoint"]

AUTH_TIMEOUT = 10.0
ACCEPT = {"type": "websocket.accept"}

CLOSE_CODES = {"expired": 4401, "overflow": 1013, "shutdown": 1001}  # else 1011
CLOSE_REASONS = {"expired": "token expired", "overflow": "slow consumer: resume from your cursor",
                 "shutdown": "server shutting down"}  # else "internal error"
#: After a direct final close, how long a client that reads nothing of what is still
#: queued keeps its connection (its close frame last) before it is aborted.
CLOSE_LINGER = 10.0
#: A stream refused by the limits: this user has too many (4429), the server is full (1013).
REFUSED_CODES = {429: 4429, 503: 1013}


class _Disconnected(Exception):
    pass


class WebSocketEndpoint:
    def __init__(self, service: Service):
        self.service = service
        refuse_permessage_deflate()

    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            opened = await self._open(scope, receive, send)
        except _Disconnected:
            return
        if opened is None:
            return
        feed, slot, accepted = opened
        with slot:
            watcher = watch_client(feed, client=self._answer_frames(receive, send, feed.user))
            try:
                reason = await feed.run(feed.write)
            finally:
                unwatch_client(None, watcher)
        if reason != "gone":
            if not (accepted or feed.started):  # storage failed before the stream started
                await send(ACCEPT)
            code, why = CLOSE_CODES.get(reason, 1011), CLOSE_REASONS.get(reason, "internal error")
            # Directly where it can: an ASGI close waits for the connection's send lock, which
            # Hypercorn's ping holds while a client that stopped reading is backed up.
            if feed.direct is None or not feed.direct.close(code, why, CLOSE_LINGER):
                await send_within(send, {"type": "websocket.close", "code": code, "reason": why})

    async def _open(self, scope: Scope, receive: Receive, send: ASGISend) -> tuple[_WSFeed, Slot, bool] | None:
        """Authenticate and take a stream slot: the feed, the slot and whether the upgrade
        was accepted already, or None when the socket was refused. (A function of its own
        so that the request's parts and the token's claims are not kept for the life of
        the stream.)"""
        headers, query = request_headers(scope), query_params(scope)
        try:
            topics = stream_topics(query)
        except ApiError as error:
            await _refuse(send, False, error, 1008)
            return None
        token = bearer(headers["authorization"]) if "authorization" in headers else query.get("token")
        raw_cursor: Any = query.get("last_event_id")
        accepted = token is None
        if accepted:  # auth by frame: the upgrade first
            await send(ACCEPT)
            token, raw_cursor = await self._auth_frame(receive, send)
        try:
            claims = verify_subscriber(self.service.signer, token)
            slot = self.service.slots.take(claims.subject)
        except ApiError as error:
            await _refuse(send, accepted, error, REFUSED_CODES.get(error.status, 4401))
            return None
        cursor = raw_cursor if type(raw_cursor) is int and raw_cursor >= 0 else parse_cursor(
            raw_cursor if isinstance(raw_cursor, str) else None)
        feed = _WSFeed(self.service, claims.subject, topics, cursor, claims.expires_at,
                       None if accepted else partial(send, ACCEPT), send, frame_writer(scope, send))
        return feed, slot, accepted

    async def _auth_frame(self, receive: Receive, send: ASGISend) -> tuple[str | None, Any]:
        """Wait for ``{"type": "auth", ...}``; None as the token means "no valid auth"."""
        try:
            async with asyncio.timeout(AUTH_TIMEOUT):
                frame = await _receive_json(receive)
        except TimeoutError:
            return None, None
        if not isinstance(frame, dict) or frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
            return None, None
        return frame["token"], frame.get("last_event_id")

    async def _answer_frames(self, receive: Receive, send: ASGISend, user: str) -> None:
        while True:
            try:
                frame = await _receive_json(receive)
            except _Disconnected:
                return
            kind = frame.get("type") if isinstance(frame, dict) else None
            if kind == "ping":
                await send({"type": "websocket.send", "text": ws_frame("pong", {})})
            elif kind == "read":
                await self._mark_read(send, user, frame)
            elif frame is _UNPARSEABLE:
                await _send_error(send, "bad_request", "Frames must be JSON objects.")
            else:
                await _send_error(send, "bad_request", "Unknown frame type; expected read or ping.")

    async def _mark_read(self, send: ASGISend, user: str, frame: dict[str, Any]) -> None:
        """``{"type": "read", "ids": [...]}`` or ``{..., "all": true}``, checked like the
        body of ``POST /notifications/read``."""
        try:
            body = parse(MarkReadBody, {k: v for k, v in frame.items() if k != "type"})
            await self.service.mark_read(user, body.ids)
        except ApiError as error:
            await _send_error(send, "bad_request", error.message)
        except StoreUnavailable:
            await _send_error(send, "unavailable", "Storage is unavailable; try again.")


_UNPARSEABLE = object()


class _WSFeed(TransportFeed):
    """The feed of one ``/ws`` socket: its events as text frames, through ASGI
    (:meth:`write`) or, live, several frames in one write straight to the connection
    (:meth:`push_direct`). Keepalives are not sent: WebSocket has its own pings
    (Hypercorn's)."""

    __slots__ = ()
    TRANSPORT = "ws"

    async def write(self, events: list[Outbound]) -> None:
        for event in events:
            if event is not KEEPALIVE:
                await self.send({"type": "websocket.send", "text": event.ws})

    def push_direct(self, events: list[Outbound]) -> bool:
        return self.direct(b"".join([e.ws_wire for e in events if e is not KEEPALIVE]))  # type: ignore[misc]


async def _receive_json(receive: Receive) -> Any:
    """The next client frame decoded, ``_UNPARSEABLE`` if it is not JSON."""
    message = await receive()
    if message["type"] == "websocket.disconnect":
        raise _Disconnected
    raw = message.get("text")
    if raw is None:
        raw = message.get("bytes") or b""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNPARSEABLE


async def _refuse(send: ASGISend, accepted: bool, error: ApiError, close_code: int) -> None:
    """Accept the upgrade (unless ``accepted``), explain ``error`` in a frame, close with
    ``close_code``."""
    if not accepted:
        await send(ACCEPT)
    await _send_error(send, error.code, error.message)
    await send_within(send, {"type": "websocket.close", "code": close_code})


async def _send_error(send: ASGISend, code: str, message: str) -> None:
    await send({"type": "websocket.send", "text": ws_frame("error", {"error": code, "message": message})})
