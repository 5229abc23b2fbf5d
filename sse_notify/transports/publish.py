"""``POST /notifications``: publishing, as a lean ASGI endpoint in front of Quart.

Publishing is the hot request path (a backend may post thousands a second). As a Quart
view each publish paid for a request context, URL matching, a body-reading task, a
timeout task and response wrappers: profiled, that was several times the cost of the
publish itself. This endpoint does only what the contract asks, in the order the view did:
publisher token (401), the publisher's rate (429), ``Idempotency-Key`` (422), body within
``--max-body`` (413, from ``Content-Length`` at once, else by counting), JSON (400), the
same schema (422; ``schemas.publish_drafts``: checked by hand for the common shapes, by
the pydantic model for the rest and for every error), then the durable add: 201 (200 for an idempotent repeat)
only after the commit.

A JSON array is a bulk publish (API v1.1): every element is validated before anything is
stored (the first invalid one is a 422 naming its index), the elements are stored in one
commit, and the answer is ``{"results": [{"ids": [...]}, ...]}`` in order. Each element
spends one publish from the publisher's rate: the one spent before the body was read is
given back and all of them are taken at once, or none. The single-notification path is
unchanged: an array is recognised only after the body has been decoded.

Quart still declares the route (``api.publish``) so that its 405 answers, OPTIONS and
``/openapi.json`` know it; every other method on the path goes to Quart.

Verified publisher tokens are remembered, keyed by the ``Authorization`` value, in a
bounded map: checking the signature cost more than all the rest of the validation. A
remembered token is taken only until it expires, and never past the end of a rotated-out
secret's grace period, so it stops being honoured exactly when the signer would refuse it.

Unlike Quart, no timer bounds the wait for the body: arming one per request cost more than
the JSON and schema checks together, and only a holder of a valid publisher token (checked
before the body is read) can stall there -- like any idle keep-alive connection, which
Hypercorn holds without a limit too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from typing import Any

import orjson

from ..auth import verify_publisher
from ..cors import cors_headers
from ..errors import ApiError
from ..models import NotificationDraft
from ..schemas import decode_body, parse_bulk, publish_drafts
from ..service import Service
from ..store import StoreUnavailable
from ..tokens import Claims
from .asgi import ASGISend, Receive, Scope, request_headers, send_error, send_json

__all__ = ["PublishEndpoint"]

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY_RE = re.compile(r"[\x20-\x7e]{1,128}")
KNOWN_PUBLISHERS = 1024  # remembered verified tokens; the map is emptied when full


class _Disconnected(Exception):
    pass


class PublishEndpoint:
    def __init__(self, service: Service):
        self.service = service
        self._verified: dict[str, tuple[str, float]] = {}  # Authorization -> (publisher, valid until)

    async def __call__(self, scope: Scope, receive: Receive, send: ASGISend) -> None:
        headers = request_headers(scope)
        cors = cors_headers(headers.get("origin"), self.service.settings.allow_origin)
        try:
            status, answer = await self._publish(headers, receive)
        except _Disconnected:
            return
        except ApiError as error:
            await send_error(send, error, cors)
            return
        except StoreUnavailable as exc:
            log.error("storage unavailable: %s", exc)
            await send_error(send, ApiError.unavailable("Storage is unavailable; try again."), cors)
            return
        except Exception:
            log.exception("publish failed")
            await send_error(send, ApiError(500, "internal_error", "The server failed to answer this request."), cors)
            return
        await send_json(send, status, orjson.dumps(answer), cors)

    async def _publish(self, headers: dict[str, str], receive: Receive) -> tuple[int, dict[str, Any]]:
        try:
            publisher = self._publisher(headers)
            self.service.publish_rate.spend(publisher)
            key = headers.get("idempotency-key")
            if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
                raise ApiError.invalid("Idempotency-Key must be 1-128 printable ASCII characters.")
        except ApiError:
            await self._drop_body(headers, receive)
            raise
        data = decode_body(await self._body(headers, receive))
        if type(data) is list:
            return await self._publish_bulk(data, publisher, key)
        drafts = publish_drafts(data)
        self._check_escalate([drafts])
        result = await self.service.publish(drafts, publisher, key)
        return (201 if result.created else 200), {"ids": result.ids}

    async def _publish_bulk(self, data: list[Any], publisher: str,
                            key: str | None) -> tuple[int, dict[str, Any]]:
        requests = parse_bulk(data)
        self._check_escalate(requests, bulk=True)
        rate = self.service.publish_rate
        rate.refund(publisher)  # the one spent before the body was read: now all at once
        rate.spend(publisher, len(requests))
        result = await self.service.publish_many(requests, publisher, key)
        return (201 if result.created else 200), {"results": [{"ids": ids} for ids in result.results]}

    def _check_escalate(self, requests: list[list[NotificationDraft]], bulk: bool = False) -> None:
        """``escalate`` needs somewhere to send the webhook. (A body with ``escalate`` has
        users as its target, so each of its drafts carries it.)"""
        if self.service.settings.webhook_url:
            return
        for index, drafts in enumerate(requests):
            if drafts[0].escalate is not None:
                where = f"[{index}].escalate" if bulk else "escalate"
                raise ApiError.invalid(f"{where}: this server has no webhook URL (serve --webhook-url).")

    def _publisher(self, headers: dict[str, str]) -> str:
        authorization = headers.get("authorization")
        known = self._verified.get(authorization) if authorization is not None else None
        now = time.time()
        if known is not None and now < known[1]:
            return known[0]
        claims = verify_publisher(self.service.signer, headers)  # raises the 401
        if len(self._verified) >= KNOWN_PUBLISHERS:
            self._verified.clear()
        self._verified[authorization] = (claims.subject, self._valid_until(claims, now))  # type: ignore[index]
        return claims.subject

    def _valid_until(self, claims: Claims, now: float) -> float:
        """Until when a verified token may be taken without checking it again: its own
        expiry, and while a rotated-out secret is still accepted, the end of its grace
        period (the token may be signed with it; the signer would refuse it from then)."""
        until = math.inf if claims.expires_at is None else claims.expires_at
        keyring = self.service.keyring
        if keyring.previous is not None and keyring.previous_until is not None and now < keyring.previous_until:
            until = min(until, keyring.previous_until)
        return until

    async def _drop_body(self, headers: dict[str, str], receive: Receive) -> None:
        """Read and drop the body of a request refused before its body was read. Hypercorn
        closes a keep-alive connection whose request was not read to its end, and a client
        that already sent its next request on it would see that request fail."""
        with contextlib.suppress(ApiError, _Disconnected):  # over the limit: let it close
            await self._body(headers, receive)

    async def _body(self, headers: dict[str, str], receive: Receive) -> bytes:
        limit = self.service.settings.max_body
        length = headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > limit:
            raise ApiError.too_large(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message: dict[str, Any] = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ApiError.too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
