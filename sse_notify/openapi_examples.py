"""The examples of the API reference (``/openapi.json``, shown at ``/docs``).

Real values in the shapes the service sends: ``tests/e2e/test_openapi.py`` validates each
JSON example against the schema it illustrates, so an example cannot drift from the API.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["ANSWER_EXAMPLES", "ERROR_EXAMPLES", "EVENT_STREAM_EXAMPLE", "METRICS_EXAMPLE", "REQUEST_EXAMPLES",
           "WS_EXAMPLE"]

_INVOICE = {"id": 42, "user": "alice", "topic": "billing", "title": "Invoice #1042 paid",
            "body": "We received 120.00 EUR. Thank you!", "priority": "medium",
            "data": {"invoice": 1042}, "created_at": "2026-11-25T10:00:00.123Z", "read": False}
_WELCOME = {"id": 41, "user": None, "topic": None, "title": "Welcome to sse-notify", "body": None,
            "priority": "low", "data": None, "created_at": "2026-11-25T09:58:12.004Z", "read": True}

#: Request bodies by (method, path): example name -> value. The names are sorted in the
#: served document (Quart sorts keys), so they are numbered in the order to show them.
REQUEST_EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/notifications"): {
        "1 To one user": {"user": "alice", "title": "Invoice #1042 paid",
                        "body": "We received 120.00 EUR. Thank you!", "topic": "billing",
                        "data": {"invoice": 1042}},
        "2 To several users": {"users": ["alice", "bob"], "title": "Deploy finished",
                             "priority": "high", "topic": "ops"},
        "3 To everyone": {"broadcast": True, "title": "Maintenance tonight at 22:00 UTC",
                        "priority": "urgent"},
        "4 Email them if unread after 10 minutes": {
            "user": "alice", "title": "Your order shipped", "topic": "orders",
            "escalate": {"after": "10m", "unless": "read"}},
    },
    ("post", "/notifications/read"): {
        "1 Some ids": {"ids": [41, 42]},
        "2 Everything": {"all": True},
    },
    ("post", "/tokens"): {
        "1 For one hour": {"user": "alice", "ttl": 3600},
        "2 Default lifetime (24 h)": {"user": "alice"},
    },
}

#: Successful answers by (method, path, status).
ANSWER_EXAMPLES: dict[tuple[str, str, str], Any] = {
    ("post", "/notifications", "201"): {"ids": [42]},
    ("post", "/notifications", "200"): {"ids": [42]},
    ("get", "/notifications", "200"): {"notifications": [_INVOICE, _WELCOME], "next_before": 41},
    ("post", "/notifications/read", "200"): {"updated": 2},
    ("post", "/tokens", "201"): {
        "token": "eyJ1IjoiYWxpY2UiLCJlIjoxNzk2MDUxMjI3LjI3OTg3MjR9.aw2DCw.sGziJFUsAtkDlDEiuCImxy2uXnE",
        "user": "alice", "expires_at": "2026-11-25T11:00:00.123Z"},
    ("get", "/presence", "200"): {"users": {
        "alice": {"online": True, "streams": 2, "last_seen": None},
        "bob": {"online": False, "streams": 0, "last_seen": "2026-11-25T09:41:07.512Z"},
        "carol": {"online": False, "streams": 0, "last_seen": None}}},
    ("get", "/notifications/{id}/status", "200"): {
        "id": 42, "broadcast": False,
        "users": {"alice": {"delivered_at": "2026-11-25T10:00:00.161Z", "read_at": None}}},
    ("get", "/healthz", "200"): {"status": "ok"},
}


def _error(code: str, message: str) -> dict[str, str]:
    return {"error": code, "message": message}


_422 = {
    ("post", "/notifications"): "title: Field required",
    ("get", "/notifications"): "limit must be between 1 and 200.",
    ("post", "/notifications/read"): 'give either "ids" or "all": true',
    ("post", "/tokens"): "user: String should match pattern '^[A-Za-z0-9._@:-]{1,128}$'",
    ("get", "/events"): "Each topic must match ^[A-Za-z0-9._@:-]{1,128}$.",
    ("get", "/presence"): "Give 1 to 100 users as ?user=NAME, not 0.",
}

#: Error answers by status: (method, path, publisher token?) -> the body.
ERROR_EXAMPLES: dict[str, Callable[[str, str, bool], dict[str, str]]] = {
    "400": lambda m, p, pub: _error("bad_request", "The request body is not valid JSON."),
    "401": lambda m, p, pub: _error(
        "unauthorized", f"A valid {'publisher' if pub else 'subscriber'} token is required."),
    "404": lambda m, p, pub: _error("not_found", "Notification 7 does not exist or is not yours."),
    "413": lambda m, p, pub: _error("payload_too_large", "The request body exceeds 65536 bytes."),
    "422": lambda m, p, pub: _error("validation_error", _422.get((m, p), "The request is not valid.")),
    "429": lambda m, p, pub: (
        _error("rate_limited", "This publisher may publish 100 times per second; retry in 1 s.") if pub
        else _error("too_many_streams", "This user already has 100 open streams, the most allowed; "
                                        "close one first.")),
    "503": lambda m, p, pub: (
        _error("server_busy", "The server holds its maximum of 50000 streams; try again later.")
        if p == "/events" else _error("unavailable", "Storage is unavailable; try again.")),
}


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


_HELLO = {"user": "alice", "newest_id": 42, "unread": 1, "replay": "resumed"}

#: ``GET /events?last_event_id=41``, as it starts.
EVENT_STREAM_EXAMPLE = (
    "retry: 3000\n\n"
    f"event: hello\ndata: {_json(_HELLO)}\n\n"
    f"id: 42\nevent: notification\ndata: {_json({**_INVOICE, 'read': False})}\n\n"
    f"event: read\ndata: {_json({'ids': [42]})}\n\n"
    ": keepalive\n\n"
    'event: token-expiring\ndata: {"expires_at":"2026-11-26T10:00:00.000Z"}\n\n'
)

WS_EXAMPLE = "\n".join([
    "Frames of a session (`>` from the client, `<` from the server):",
    "",
    "```",
    f"> {_json({'type': 'auth', 'token': '...', 'last_event_id': 41})}",
    f"< {_json({'type': 'auth_success', **_HELLO})}",
    f"< {_json({'type': 'notification', **_INVOICE, 'read': False})}",
    f"> {_json({'type': 'read', 'ids': [42]})}",
    f"< {_json({'type': 'read', 'ids': [42]})}",
    f"> {_json({'type': 'ping'})}",
    f"< {_json({'type': 'pong'})}",
    "```",
])

#: The start of ``GET /metrics``.
METRICS_EXAMPLE = """\
# HELP sse_notify_open_streams Open streams.
# TYPE sse_notify_open_streams gauge
sse_notify_open_streams{transport="sse"} 1843.0
sse_notify_open_streams{transport="ws"} 212.0
# HELP sse_notify_notifications_published_total Notifications stored.
# TYPE sse_notify_notifications_published_total counter
sse_notify_notifications_published_total 90412.0
"""
