"""The OpenAPI description served at ``/openapi.json``.

quart-schema builds it from the Quart views and their pydantic models; this module adds
what it cannot see: the security schemes (the two token kinds, and the three ways a
subscriber token travels), the contract's error answers per operation (:func:`errors`),
the answers that are not JSON, and the two streaming endpoints, which are served in front
of Quart (:class:`Provider`). ``tests/e2e/test_openapi.py`` holds it true against the
running server.

It is also the reference people read at ``/docs``: every operation has a summary, a
description (the docstrings of the views in :mod:`sse_notify.api`; here for the streams),
a description of each answer and request and answer examples. The examples are real
values (the test validates them against the schemas), kept in :mod:`.openapi_examples`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema import APIKeySecurityScheme, HttpSecurityScheme, OpenAPIProvider, document_response

from .auth import COOKIE_NAME
from .openapi_examples import (
    ANSWER_EXAMPLES, ERROR_EXAMPLES, EVENT_STREAM_EXAMPLE, METRICS_EXAMPLE, REQUEST_EXAMPLES, WS_EXAMPLE,
)
from .schemas import ErrorBody

__all__ = ["PUBLISHER", "SECURITY_SCHEMES", "SUBSCRIBER", "Provider", "errors"]

T = TypeVar("T")

SECURITY_SCHEMES = {
    "publisher": HttpSecurityScheme(scheme="bearer", bearer_format="sse-notify publisher token"),
    "subscriber": HttpSecurityScheme(scheme="bearer", bearer_format="sse-notify subscriber token"),
    "subscriberQuery": APIKeySecurityScheme(name="token", in_="query"),
    "subscriberCookie": APIKeySecurityScheme(name=COOKIE_NAME, in_="cookie"),
}
_SCHEME_TEXT = {  # (quart-schema's scheme classes take no description)
    "publisher": "A publisher token, for your backend only: `sse-notify token --publisher NAME`.",
    "subscriber": "A subscriber token for one user: `sse-notify token USER` or `POST /tokens`.",
    "subscriberQuery": "The subscriber token as `?token=` (EventSource cannot send headers).",
    "subscriberCookie": "The subscriber token in a cookie of the service's domain (not on `/ws`).",
}
PUBLISHER = [{"publisher": []}]
SUBSCRIBER = [{"subscriber": []}, {"subscriberQuery": []}, {"subscriberCookie": []}]


def errors(*statuses: int) -> Callable[[T], T]:
    """Document the contract's JSON error body for each of ``statuses``."""
    def decorator(view: T) -> T:
        for status in statuses:
            view = document_response(ErrorBody, status)(view)
        return view
    return decorator


_ERROR = {"$ref": "#/components/schemas/ErrorBody"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def _query(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema = {"type": "string"} if pattern is None else {"type": "string", "pattern": pattern}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_TOPICS = _query("topics", "Comma-separated topics to deliver (notifications without a topic "
                           "are then left out); absent or empty: everything.")
_CURSOR = "The id of the last notification received: replay what came after it. Anything " \
          "but 1-18 digits is ignored (the stream starts live)."

_STREAMS: dict[str, dict[str, Any]] = {
    "/events": {"get": {
        "summary": "Stream notifications as Server-Sent Events",
        "description": (
            "The live feed of one user, for `EventSource` (in a browser: "
            '`new EventSource("/events?token=" + token)`). The stream starts with `retry:`, '
            "then one `hello` event (the user's newest id and unread count, and how replay "
            "went: `live`, `resumed` or `reset`), then every notification after the cursor, "
            "in id order, then live events: `notification` (with an `id:` line, the replay "
            "cursor), `read` (ids whose read state changed) and `token-expiring` (a minute "
            "before the token ends the stream). A `: keepalive` comment follows every quiet "
            "interval.\n\n"
            "After a dropped connection, `EventSource` sends `Last-Event-ID` by itself; other "
            "clients pass `?last_event_id=N`. Everything after `N` is replayed with no gap "
            "and no duplicate, also while notifications are being published. A stream that "
            "falls more than `--stream-buffer` events behind is closed; reconnecting with "
            "the cursor replays the rest from storage."),
        "security": SUBSCRIBER,
        "parameters": [
            _TOPICS, _query("last_event_id", _CURSOR),
            {"name": "Last-Event-ID", "in": "header", "required": False, "description": _CURSOR,
             "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "The event stream (it does not end while the client reads it).",
                    "content": {"text/event-stream": {"schema": {"type": "string"},
                                                      "example": EVENT_STREAM_EXAMPLE}}},
            "401": _error("No valid subscriber token."),
            "422": _error("A topic is not a valid name."),
            "429": _error("This user holds `--max-user-streams` open streams already (default 100)."),
            "503": _error("The server holds `--max-streams` open streams already (default 50000); "
                          "retry after the `Retry-After` seconds."),
        },
    }},
    "/ws": {"get": {
        "summary": "The same feed over WebSocket (JSON text frames)",
        "description": (
            "The feed of `/events` as JSON text frames, with the same delivery and replay "
            "guarantees. Authenticate with `?token=` (cursor in `?last_event_id=`), with "
            "`Authorization: Bearer`, or with a first frame "
            '`{"type": "auth", "token": "...", "last_event_id": 41}` within 10 s. The first '
            'server frame is `{"type": "auth_success", ...the hello fields}`, or an `error` '
            "frame and close code 4401. Then `notification`, `read` and `token-expiring` "
            'frames. Send `{"type": "read", "ids": [...]}` (or `"all": true`) to mark read '
            'and `{"type": "ping"}` for a `pong`. Close codes: 4401 token expired or '
            "refused, 4429 too many streams for this user, 1013 server full or fell behind, "
            "1009 frame over `--max-frame`, 1008 a topic that is not a valid name, 1001 server "
            "shutting down.\n\n" + WS_EXAMPLE),
        "security": [*SUBSCRIBER[:2], {}],
        "parameters": [_TOPICS, _query("last_event_id", _CURSOR)],
        "responses": {"101": {"description": "Switching protocols: the frames of the contract."}},
    }},
}

#: Answers that are not JSON, by (method, path): (content type or None, description, example).
_OTHER_CONTENT = {
    ("get", "/"): ("text/html", "The demo page.", None),
    ("get", "/docs"): ("text/html", "The API reference page.", None),
    ("get", "/metrics"): ("text/plain; version=0.0.4", "Prometheus text format.", METRICS_EXAMPLE),
    ("post", "/notifications/{id}/read"): (None, "Marked read (or it already was).", None),
}


_INTRO = """Self-hosted real-time notifications. Your backend publishes with a **publisher**
token (`POST /notifications`); each user's browser or device receives them with a
**subscriber** token over Server-Sent Events (`GET /events`) or WebSocket (`GET /ws`), and
reads its history and read state. Every notification is stored, so a dropped connection
replays exactly what it missed.

Mint tokens with `sse-notify token alice` / `sse-notify token --publisher my-backend`, or
`POST /tokens`. Every error is JSON: `{"error": "<code>", "message": "<sentence>"}`.
The full wire contract is `docs/api.md` in the repository."""

#: What an error status means, unless an operation says more (``_ANSWER_TEXT``).
_ERROR_TEXT = {
    "400": "The body is not valid JSON.",
    "401": "No valid token of the kind this call needs: missing, malformed, wrongly signed, "
           "expired, or a token of the other kind.",
    "404": "Not found.",
    "413": "The body is larger than the server's `--max-body` (default 65536 bytes).",
    "422": "The request does not match the schema; `message` names the first problem.",
    "429": "A limit was reached; retry after the `Retry-After` seconds.",
    "503": "Storage is unavailable (disk full, database locked or removed); retry later.",
}
#: Answer descriptions by (method, path, status).
_ANSWER_TEXT = {
    ("post", "/notifications", "201"): "Stored durably and delivered: one id per notification.",
    ("post", "/notifications", "200"): "A repeat of an `Idempotency-Key`: nothing stored, the "
                                      "first request's ids.",
    ("post", "/notifications", "422"): "Not exactly one target, a missing or too long `title`, "
                                      "a bad user id or topic, an unknown field, a bad "
                                      "`Idempotency-Key`, or a bad `escalate` (`after` outside "
                                      "5s-7d, an unknown `unless`, on a broadcast, or no "
                                      "`--webhook-url` on the server).",
    ("post", "/notifications", "429"): "Over `--publish-rate` for this publisher; retry after "
                                      "the `Retry-After` seconds.",
    ("get", "/notifications", "200"): "A page of notifications, newest first.",
    ("get", "/notifications", "422"): "`limit` outside 1-200, a non-integer `before`, or "
                                     "`unread` other than `true` or `false`.",
    ("post", "/notifications/{id}/read", "404"): "The notification does not exist or is not "
                                                "visible to this user.",
    ("post", "/notifications/read", "200"): "How many notifications changed state.",
    ("post", "/notifications/read", "422"): 'Neither (or both of) `ids` and `all: true`, or '
                                           "an id that is not a positive integer.",
    ("post", "/tokens", "201"): "The token, its user and when it expires.",
    ("post", "/tokens", "422"): "A bad user id, or `ttl` outside 1-31622400.",
    ("get", "/presence", "200"): "Each user asked, in the order asked.",
    ("get", "/presence", "422"): "No `user`, more than 100, or one that is not a valid user id.",
    ("get", "/notifications/{id}/status", "200"): "Its receipts: per target user, or a broadcast's read count.",
    ("get", "/notifications/{id}/status", "404"): "No notification has this id (or retention removed it).",
    ("get", "/healthz", "200"): "Storage answers.",
    ("get", "/healthz", "503"): "Storage does not answer, or its disk is (nearly) full.",
}
#: The reference's groups, in the order shown, and the operations in each.
_TAGS = [
    ("Publish", "For your backend, with a publisher token.",
     {("post", "/notifications"), ("post", "/tokens"), ("get", "/presence"),
      ("get", "/notifications/{id}/status")}),
    ("Subscribe", "For each user's browser or device, with a subscriber token: the live feed.",
     {("get", "/events"), ("get", "/ws")}),
    ("Inbox", "History and read state, with a subscriber token.",
     {("get", "/notifications"), ("post", "/notifications/read"), ("post", "/notifications/{id}/read")}),
    ("Service", "Health, metrics and pages; no token.",
     {("get", "/"), ("get", "/docs"), ("get", "/healthz"), ("get", "/metrics")}),
]
_PARAMETER_TEXT = {
    ("get", "/notifications", "limit"): "Notifications per page, 1-200.",
    ("get", "/notifications", "before"): "Only notifications with a smaller id: the previous "
                                         "page's `next_before`.",
    ("get", "/notifications", "unread"): "`true`: only unread; `false`: only read; absent: both.",
    ("post", "/notifications/{id}/read", "id"): "The notification's id.",
    ("get", "/presence", "user"): "A user id; repeat the parameter for each user (1 to 100).",
    ("get", "/notifications/{id}/status", "id"): "The notification's id, as `POST /notifications` answered it.",
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "1-128 printable ASCII characters. A repeat of the same key by the same "
                   "publisher within 24 hours stores nothing and answers 200 with the first ids.",
    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,128}$"}, "example": "order-1042-paid",
}


def _describe(method: str, path: str, operation: dict[str, Any]) -> None:
    """Answer descriptions, parameter descriptions and examples for one operation."""
    publisher = operation.get("security") == PUBLISHER
    operation["tags"] = [name for name, _, members in _TAGS if (method, path) in members]
    for status, answer in operation.get("responses", {}).items():
        status = str(status)
        text = _ANSWER_TEXT.get((method, path, status)) or _ERROR_TEXT.get(status)
        if text and not answer.get("description"):
            answer["description"] = text
        media = answer.get("content", {}).get("application/json")
        if media is None:
            continue
        example = ANSWER_EXAMPLES.get((method, path, status))
        if example is None and status in ERROR_EXAMPLES:
            example = ERROR_EXAMPLES[status](method, path, publisher)
        if example is not None:
            media["example"] = example
    for parameter in operation.get("parameters", []):
        text = _PARAMETER_TEXT.get((method, path, parameter["name"]))
        if text:
            parameter["description"] = text
    examples = REQUEST_EXAMPLES.get((method, path))
    if examples is not None:
        media = operation["requestBody"]["content"]["application/json"]
        media["examples"] = {name.replace(" ", "_"): {"summary": name.split(" ", 1)[1], "value": value}
                             for name, value in examples.items()}


class Provider(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        paths = schema["paths"]
        for (method, path), (content_type, description, example) in _OTHER_CONTENT.items():
            status = 204 if content_type is None else 200  # quart-schema keys by number
            answer: dict[str, Any] = {"description": description}
            if content_type is not None:
                answer["content"] = {content_type: {"schema": {"type": "string"}}}
                if example is not None:
                    answer["content"][content_type]["example"] = example
            paths[path][method].setdefault("responses", {})[status] = answer
        paths.update(_STREAMS)
        paths["/notifications"]["post"].setdefault("parameters", []).append(_IDEMPOTENCY_KEY)
        for path, item in paths.items():
            for method, operation in item.items():
                _describe(method, path, operation)
        schema["info"]["description"] = _INTRO
        schema["tags"] = [{"name": name, "description": text} for name, text, _ in _TAGS]
        for name, scheme in schema["components"]["securitySchemes"].items():
            scheme["description"] = _SCHEME_TEXT[name]
        schema["components"]["schemas"]["ErrorBody"] = ErrorBody.model_json_schema()  # for _ERROR
        return schema
