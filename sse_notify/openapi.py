"""The OpenAPI description served at ``/openapi.json``.

quart-schema builds it from the Quart views and their pydantic models; this module adds
what it cannot see: the security schemes (the two token kinds, and the three ways a
subscriber token travels), the contract's error answers per operation (:func:`errors`),
the answers that are not JSON, and the two streaming endpoints, which are served in front
of Quart (:class:`Provider`). ``tests/e2e/test_openapi.py`` holds it true against the
running server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from quart_schema import APIKeySecurityScheme, HttpSecurityScheme, OpenAPIProvider, document_response

from .auth import COOKIE_NAME
from .schemas import ErrorBody

__all__ = ["PUBLISHER", "SECURITY_SCHEMES", "SUBSCRIBER", "Provider", "errors"]

T = TypeVar("T")

SECURITY_SCHEMES = {
    "publisher": HttpSecurityScheme(scheme="bearer", bearer_format="sse-notify publisher token"),
    "subscriber": HttpSecurityScheme(scheme="bearer", bearer_format="sse-notify subscriber token"),
    "subscriberQuery": APIKeySecurityScheme(name="token", in_="query"),
    "subscriberCookie": APIKeySecurityScheme(name=COOKIE_NAME, in_="cookie"),
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


_TOPICS = _query("topics", "Comma-separated topics to deliver; absent or empty: all.")
_CURSOR = "The id of the last notification received: replay what came after it. Anything " \
          "but 1-18 digits is ignored (the stream starts live)."

_STREAMS: dict[str, dict[str, Any]] = {
    "/events": {"get": {
        "summary": "Stream notifications as Server-Sent Events",
        "description": "retry, then `hello`, the replay after the cursor, then live "
                       "`notification`, `read` and `token-expiring` events.",
        "security": SUBSCRIBER,
        "parameters": [
            _TOPICS, _query("last_event_id", _CURSOR),
            {"name": "Last-Event-ID", "in": "header", "required": False, "description": _CURSOR,
             "schema": {"type": "string"}},
        ],
        "responses": {
            "200": {"description": "The event stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}}},
            "401": _error("No valid subscriber token."),
            "422": _error("A topic is not a valid name."),
            "429": _error("This user holds --max-user-streams streams already."),
            "503": _error("The server holds --max-streams streams already."),
        },
    }},
    "/ws": {"get": {
        "summary": "The same feed over WebSocket (JSON text frames)",
        "description": "Authenticate with `token` (and `last_event_id`) in the query, or with "
                       'a first frame `{"type": "auth", "token": ..., "last_event_id": ...}`.',
        "security": [*SUBSCRIBER[:2], {}],
        "parameters": [_TOPICS, _query("last_event_id", _CURSOR)],
        "responses": {"101": {"description": "Switching protocols: the frames of the contract."}},
    }},
}

#: Answers that are not JSON, by (method, path): (content type or None, description).
_OTHER_CONTENT = {
    ("get", "/"): ("text/html", "The demo page."),
    ("get", "/metrics"): ("text/plain; version=0.0.4", "Prometheus text format."),
    ("post", "/notifications/{id}/read"): (None, "Marked read (or it already was)."),
}


class Provider(OpenAPIProvider):
    def schema(self) -> dict[str, Any]:
        schema = super().schema()
        paths = schema["paths"]
        for (method, path), (content_type, description) in _OTHER_CONTENT.items():
            status = 204 if content_type is None else 200  # quart-schema keys by number
            answer: dict[str, Any] = {"description": description}
            if content_type is not None:
                answer["content"] = {content_type: {"schema": {"type": "string"}}}
            paths[path][method].setdefault("responses", {})[status] = answer
        paths.update(_STREAMS)
        schema["components"]["schemas"]["ErrorBody"] = ErrorBody.model_json_schema()  # for _ERROR
        return schema
