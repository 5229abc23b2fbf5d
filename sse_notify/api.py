"""The HTTP API on Quart: history, read state, tokens, health, metrics, the demo, the docs.

``POST /notifications`` is declared here (routing, OpenAPI) but served in front of Quart by
the lean :class:`~sse_notify.transports.PublishEndpoint`.

Handlers raise :class:`~sse_notify.errors.ApiError`; ``app.py`` renders every error as the
contract's JSON body. Bodies are decoded with orjson whatever their ``Content-Type`` (so
``curl -d`` works) and validated by the pydantic models in :mod:`sse_notify.schemas`.

A view's docstring is written for the people who call the API: quart-schema makes its first
line the operation's summary in ``/openapi.json`` and the rest its description (Markdown).
Notes for maintainers go in comments.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from quart import Blueprint, Response, current_app, request, send_from_directory
from quart_schema import document_querystring, document_request, document_response, security_scheme

from .auth import subscriber_token, verify_publisher, verify_subscriber
from .broker import BrokerUnavailable
from .errors import ApiError
from .metrics import CONTENT_TYPE, render_metrics
from .models import MAX_ID, iso_ms, valid_name
from .openapi import PUBLISHER, SUBSCRIBER, errors
from .presence import MAX_USERS as MAX_PRESENCE_USERS
from .schemas import (
    HealthResponse, HistoryQuery, HistoryResponse, MarkReadBody, PresenceQuery, PresenceResponse,
    PublishAnswer, PublishRequest, StatusResponse, TokenBody, TokenResponse, UpdatedResponse, decode_body,
    parse,
)
from .service import Service
from .store import ReceiptStore, StoreUnavailable
from .tokens import DEFAULT_SUBSCRIBER_TTL

__all__ = ["api"]

api = Blueprint("api", __name__)


def _service() -> Service:
    return current_app.extensions["sse_notify"]


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status=status, content_type="application/json")


async def _body() -> Any:
    return decode_body(await request.get_data(cache=False))


def _subscriber() -> str:
    return verify_subscriber(_service().signer, subscriber_token(request.headers, request.args)).subject


@api.post("/notifications")
@security_scheme(PUBLISHER)
@document_request(PublishRequest)  # one notification, or (bulk) an array of them
@document_response(PublishAnswer, 201)
@document_response(PublishAnswer, 200)  # an Idempotency-Key repeat: the first answer's ids
@errors(400, 401, 413, 422, 429, 503)
async def publish() -> Response:
    """Publish a notification

    Stores a notification and delivers it at once to every open stream of its recipients
    (every tab and device, over SSE and WebSocket). Give exactly one target: `user` (one
    user id), `users` (1 to 1000 distinct user ids: one notification each) or
    `broadcast: true` (every user, including users who connect later); plus a `title`
    (1-256 characters). `body` (up to 4096 characters), `priority` (`low`, `medium` (the
    default), `high`, `urgent`), `topic` and `data` (any JSON object, passed through
    untouched) are optional. The body is read as JSON whatever its `Content-Type`, and
    unknown fields are refused (422).

    The answer, `201 {"ids": [...]}`, is sent only after the notification is durably
    committed, so a crash after a 201 never loses it: one id per stored notification, in
    the order of `users`. Ids increase strictly in commit order; each is the notification's
    SSE event id and replay cursor.

    To retry safely, send an `Idempotency-Key` header: a repeat of the same key by the same
    publisher within 24 hours stores nothing new and answers `200` with the first request's
    ids.

    To hear back when a user did not see it, add `"escalate": {"after": "10m", "unless":
    "read"}` (`after`: `5s` to `7d`; `unless`: `read`, the default, or `delivered`; not on
    broadcasts). When `after` has passed and, for a target user, the notification is still
    unread (or was never written to any of their streams, and not read), the service POSTs
    a signed webhook (Standard Webhooks: `webhook-id`, `webhook-timestamp`,
    `webhook-signature`; verify with `sse-notify webhook-secret`'s secret) with
    `{"type": "notification.unread" | "notification.undelivered", "user": ..., "notification":
    {...}}` to the server's `--webhook-url`, once per user, retried for up to 24 hours with
    the same `webhook-id`. The escalation is stored with the notification: a `201` means it
    is scheduled. Without a webhook URL configured, `escalate` is refused (422).
    """
    # Declared for Quart's routing (its 405 answers, OPTIONS) and for /openapi.json: the
    # request itself is served in front of Quart by transports.PublishEndpoint, so this
    # body never runs.
    raise ApiError(500, "internal_error", "POST /notifications is served before Quart.")


@api.get("/notifications")
@security_scheme(SUBSCRIBER)
@document_querystring(HistoryQuery)
@document_response(HistoryResponse)
@errors(401, 422, 503)
async def history() -> Response:
    """List the user's notifications (history and read state)

    The subscriber's own notifications and broadcasts, newest first, each with its `read`
    flag (read state is per user, broadcasts included). To page back, pass the answer's
    `next_before` as `before`; `next_before` is `null` exactly when nothing older matches.
    `unread=true` keeps only unread notifications, `unread=false` only read ones.
    """
    user = _subscriber()
    args = request.args
    limit = _int_arg(args.get("limit"), "limit", 50)
    if not 1 <= limit <= 200:
        raise ApiError.invalid("limit must be between 1 and 200.")
    before = _int_arg(args.get("before"), "before", None)
    unread_arg = args.get("unread")
    if unread_arg not in (None, "true", "false"):
        raise ApiError.invalid('unread must be "true" or "false".')
    unread = None if unread_arg is None else unread_arg == "true"
    page = await _service().store.history(user, limit, before, unread)
    return _json({
        "notifications": [n.to_dict(read) for n, read in page.items],
        "next_before": page.next_before,
    })


def _int_arg(value: str | None, name: str, default: int | None) -> Any:
    if value is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,19}", value.strip()):
        raise ApiError.invalid(f"{name} must be an integer.")
    return max(min(int(value), MAX_ID), -MAX_ID)


@api.post("/notifications/<int:id>/read")
@security_scheme(SUBSCRIBER)
@errors(401, 404, 503)
async def mark_one_read(id: int) -> Response:
    """Mark one notification read

    Marks notification `id` read for this user. If its state changed, every open stream
    of the user, the caller's included, receives a `read` event listing it; marking an
    already read notification changes nothing and sends nothing. `404` when the
    notification does not exist or is not visible to this user.
    """
    user = _subscriber()
    service = _service()
    if id > MAX_ID or not await service.store.is_visible(user, id):
        raise ApiError.not_found(f"Notification {id} does not exist or is not yours.")
    await service.mark_read(user, [id])
    return Response(b"", status=204)


@api.post("/notifications/read")
@security_scheme(SUBSCRIBER)
@document_request(MarkReadBody)
@document_response(UpdatedResponse)
@errors(400, 401, 413, 422, 503)
async def mark_many_read() -> Response:
    """Mark several notifications, or all, read

    Give either `{"ids": [...]}` (1 to 1000 ids) or `{"all": true}`. The answer counts the
    notifications whose state changed; ids the user cannot see are ignored. The user's open
    streams receive one `read` event listing the ids that changed (nothing when none did).
    """
    user = _subscriber()
    body = parse(MarkReadBody, await _body())
    changed = await _service().mark_read(user, body.ids)
    return _json({"updated": len(changed)})


@api.get("/notifications/<int:id>/status")
@security_scheme(PUBLISHER)
@document_response(StatusResponse)
@errors(401, 404, 503)
async def status(id: int) -> Response:
    """Did they get it, did they read it? (delivery and read receipts)

    For a notification sent to a user (`user` or `users`: one id per user), when it was
    first written to any stream of that user (`delivered_at`: live, or replayed at a
    reconnect, on any node) and when the user marked it read (`read_at`); each is `null`
    until it happens. For a broadcast, `read` counts the users who have read it.
    Deliveries are recorded in batches, so `delivered_at` may appear up to about a second
    after the event reached the stream. `404` for an id that does not exist (or was
    removed by retention).
    """
    service = _service()
    verify_publisher(service.signer, request.headers)
    store = service.store
    found = await store.status(id) if id <= MAX_ID and isinstance(store, ReceiptStore) else None
    if found is None:
        raise ApiError.not_found(f"Notification {id} does not exist.")
    if found.user is None:
        return _json({"id": id, "broadcast": True, "read": found.read_count})
    receipt = {"delivered_at": None if found.delivered_at is None else iso_ms(found.delivered_at),
               "read_at": None if found.read_at is None else iso_ms(found.read_at)}
    return _json({"id": id, "broadcast": False, "users": {found.user: receipt}})


@api.post("/tokens")
@security_scheme(PUBLISHER)
@document_request(TokenBody)
@document_response(TokenResponse, 201)
@errors(400, 401, 413, 422)
async def mint_token() -> Response:
    """Mint a subscriber token for a user

    For your backend: get a token to hand to one user's browser or device. `ttl` is its
    lifetime in seconds, 1 to 31622400 (366 days); the default is 86400 (24 hours). The
    token opens `GET /events` and `GET /ws` (as `?token=`, as `Authorization: Bearer`, or
    in the `sse_notify_token` cookie) and the history and read-state calls. A stream ends
    when its token expires, after a `token-expiring` event one minute before.
    """
    service = _service()
    verify_publisher(service.signer, request.headers)
    body = parse(TokenBody, await _body())
    ttl = body.ttl or DEFAULT_SUBSCRIBER_TTL
    expires_at = time.time() + ttl
    token = service.signer.subscriber(body.user, ttl=ttl)
    return _json({"token": token, "user": body.user, "expires_at": iso_ms(int(expires_at * 1000))}, 201)


@api.get("/presence")
@security_scheme(PUBLISHER)
@document_querystring(PresenceQuery)
@document_response(PresenceResponse)
@errors(401, 422, 503)
async def presence() -> Response:
    """Whether users are connected now

    For your backend, before choosing between an in-app notification and an email: for
    each `user` asked (repeat the parameter: `?user=alice&user=bob`, 1 to 100 users),
    whether they have a stream open (`GET /events` or `GET /ws`) on any node of the
    deployment, how many, and `last_seen`, when their last stream closed (`null` while
    they are online, or when they were never seen). A stream opened or closed shows
    within a second; the streams of a node that stopped without shutting down stop
    counting 15 seconds (by default) after it was last heard from.
    """
    service = _service()
    verify_publisher(service.signer, request.headers)
    users = list(dict.fromkeys(request.args.getlist("user")))  # distinct, in the order asked
    if not 1 <= len(users) <= MAX_PRESENCE_USERS:
        raise ApiError.invalid(f"Give 1 to {MAX_PRESENCE_USERS} users as ?user=NAME, not {len(users)}.")
    bad = next((user for user in users if not valid_name(user)), None)
    if bad is not None:
        raise ApiError.invalid(f"Each user must match ^[A-Za-z0-9._@:-]{{1,128}}$; {bad[:140]!r} does not.")
    found = await service.presence.lookup(users)
    return _json({"users": {user: {
        "online": found[user].streams > 0,
        "streams": found[user].streams,
        "last_seen": None if found[user].last_seen is None else iso_ms(found[user].last_seen),
    } for user in users}})


@api.get("/healthz")
@document_response(HealthResponse)
@errors(503)
async def healthz() -> Response:
    """Health check

    `200 {"status": "ok"}` when storage answers (a small write through the same queue as
    publishes completes within 2 seconds and the database's disk has at least 1 MiB free)
    and so does the broker, when there is one between nodes. Otherwise `503` with the JSON
    error. No token needed: for load balancers and probes.
    """
    service = _service()
    try:
        await service.store.ping()
    except StoreUnavailable as exc:
        raise ApiError.unavailable(f"Storage does not answer: {exc}") from None
    try:
        await service.broker.ping()
    except BrokerUnavailable as exc:
        raise ApiError.unavailable(f"The broker does not answer: {exc}") from None
    return _json({"status": "ok"})


@api.get("/metrics")
async def metrics() -> Response:
    """Prometheus metrics

    The Prometheus text format: `sse_notify_open_streams{transport="sse"|"ws"}`,
    `sse_notify_connected_users`, `sse_notify_notifications_published_total`,
    `sse_notify_events_delivered_total`, `sse_notify_events_replayed_total` and
    `sse_notify_slow_consumer_disconnects_total`. No token needed: restrict it at your
    proxy if it should not be public.
    """
    service = _service()
    return Response(render_metrics(service.hub, service.published, service.follower, service.escalator),
                    content_type=CONTENT_TYPE)


@api.get("/")
async def demo() -> Response:
    """The demo page

    An inbox built on the browser library `/static/sse-notify.js`: connect with a
    subscriber token, watch notifications arrive, mark them read, and send test
    notifications with a publisher token.
    """
    return await send_from_directory(_service().settings.static_dir, "index.html")


@api.get("/docs")
async def docs() -> Response:
    """The interactive API reference (this page)

    Swagger UI showing `/openapi.json`, served from this service (no external resources).
    """
    return await send_from_directory(_service().settings.static_dir, "docs.html")
