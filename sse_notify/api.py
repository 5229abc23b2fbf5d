"""The HTTP API on Quart: history, read state, tokens, health, metrics, the demo.

``POST /notifications`` is declared here (routing, OpenAPI) but served in front of Quart by
the lean :class:`~sse_notify.transports.PublishEndpoint`.

Handlers raise :class:`~sse_notify.errors.ApiError`; ``app.py`` renders every error as the
contract's JSON body. Bodies are decoded with orjson whatever their ``Content-Type`` (so
``curl -d`` works) and validated by the pydantic models in :mod:`sse_notify.schemas`.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson
from quart import Blueprint, Response, current_app, request, send_from_directory
from quart_schema import document_querystring, document_request, document_response, security_scheme

from .auth import subscriber_token, verify_publisher, verify_subscriber
from .errors import ApiError
from .metrics import CONTENT_TYPE, render_metrics
from .models import MAX_ID, iso_ms
from .openapi import PUBLISHER, SUBSCRIBER, errors
from .schemas import (
    HealthResponse, HistoryQuery, HistoryResponse, MarkReadBody, PublishAnswer, PublishRequest,
    TokenBody, TokenResponse, UpdatedResponse, decode_body, parse,
)
from .service import Service
from .store import StoreUnavailable
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
    """Declared for Quart's routing (405 answers, OPTIONS) and /openapi.json only: the
    request itself is served in front of Quart by
    :class:`~sse_notify.transports.PublishEndpoint`, so this body never runs."""
    raise ApiError(500, "internal_error", "POST /notifications is served before Quart.")


@api.get("/notifications")
@security_scheme(SUBSCRIBER)
@document_querystring(HistoryQuery)
@document_response(HistoryResponse)
@errors(401, 422, 503)
async def history() -> Response:
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
    user = _subscriber()
    body = parse(MarkReadBody, await _body())
    changed = await _service().mark_read(user, body.ids)
    return _json({"updated": len(changed)})


@api.post("/tokens")
@security_scheme(PUBLISHER)
@document_request(TokenBody)
@document_response(TokenResponse, 201)
@errors(400, 401, 413, 422)
async def mint_token() -> Response:
    service = _service()
    verify_publisher(service.signer, request.headers)
    body = parse(TokenBody, await _body())
    ttl = body.ttl or DEFAULT_SUBSCRIBER_TTL
    expires_at = time.time() + ttl
    token = service.signer.subscriber(body.user, ttl=ttl)
    return _json({"token": token, "user": body.user, "expires_at": iso_ms(int(expires_at * 1000))}, 201)


@api.get("/healthz")
@document_response(HealthResponse)
@errors(503)
async def healthz() -> Response:
    try:
        await _service().store.ping()
    except StoreUnavailable as exc:
        raise ApiError.unavailable(f"Storage does not answer: {exc}") from None
    return _json({"status": "ok"})


@api.get("/metrics")
async def metrics() -> Response:
    service = _service()
    return Response(render_metrics(service.hub, service.published), content_type=CONTENT_TYPE)


@api.get("/")
async def demo() -> Response:
    return await send_from_directory(_service().settings.static_dir, "index.html")
