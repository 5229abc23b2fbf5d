"""``create_app(settings)``: the Quart app with the service wired in.

The hot endpoints (``/events``, ``/ws``, ``POST /notifications``) are lean ASGI handlers
placed in front of Quart; everything else is a Quart view. Every error, Quart's own
included, is rendered as the contract's JSON body. The service starts before the server
accepts connections and stops after the last one closed; ``begin_shutdown`` ends open
streams so that happens fast. Serving starts by shaping the garbage collector to a heap
of many long-lived streams (:func:`_tune_gc`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
from collections.abc import Awaitable
from importlib.metadata import version
from typing import Any

from quart import Quart, Response, request
from quart_schema import Info, QuartSchema
from werkzeug.exceptions import HTTPException

from .api import api
from .cors import cors_headers, preflight_headers
from .config import Settings
from .errors import ApiError, error_body
from .openapi import SECURITY_SCHEMES, Provider
from .service import Service
from .store import StoreUnavailable
from .transports import PublishEndpoint, SSEEndpoint, WebSocketEndpoint
from .transports.asgi import send_error

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def _error_response(status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status=status,
                    content_type="application/json", headers=headers)


#: Allocations before a young-generation collection (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Shape the garbage collector to a heap of many long-lived streams.

    Every open stream keeps a waiter future from one event to its next. With the default
    young threshold, a broadcast to thousands of streams promotes all those futures to the
    oldest generation, and the full collections they trigger walk every stream's objects:
    most of a second each at 10,000 streams, so the broadcast p99 went over 1 s (bench
    S2 at 10,000 subscribers and 10,000 deliveries/s: p99 1.6 s -> 0.6 s). A larger young
    generation lets them die young. What exists when serving starts lives as long as the
    process: it is frozen, out of every later collection's way.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


_SLASHES = re.compile("/{2,}")


class _LeanRoutes:
    """ASGI: ``/events``, ``/ws`` and ``POST /notifications`` go to the lean endpoints,
    the rest to Quart."""

    def __init__(self, app: Any, service: Service):
        self.app = app
        self.max_header = service.settings.max_header
        self.sse, self.ws, self.publish = (
            SSEEndpoint(service), WebSocketEndpoint(service), PublishEndpoint(service))

    def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        """The chosen handler's coroutine, for the server to await: a plain function, not
        a coroutine, so that no frame of its own stays on an open stream's stack. (A server
        that tells ASGI from WSGI by ``iscoroutinefunction`` must be told it is ASGI:
        ``serve`` passes ``mode="asgi"``.)"""
        if scope["type"] != "lifespan" and _head_size(scope) > self.max_header:
            return _refuse_head(scope, receive, send, self.max_header)
        path = scope.get("path", "")
        if "//" in path:  # Quart's router matches "//notifications" as "/notifications"
            path = _SLASHES.sub("/", path)
        if scope["type"] == "http":
            if path == "/notifications" and scope["method"] == "POST":
                return self.publish(scope, receive, send)
            if path == "/events":
                return self.sse(scope, receive, send)
        elif scope["type"] == "websocket" and path == "/ws":
            return self.ws(scope, receive, send)
        return self.app(scope, receive, send)


def _head_size(scope: dict[str, Any]) -> int:
    """Bytes of the request target and headers, about as they came on the wire. (Hypercorn
    bounds only a head that is still arriving, not one that came in a single read.)"""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string", b""))
    return target + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


async def _refuse_head(scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
    error = ApiError(431, "header_too_large",
                     f"The request line and headers exceed {limit} bytes.")
    if scope["type"] == "http":
        return await send_error(send, error)
    await receive()  # websocket.connect; then a plain HTTP answer instead of the upgrade
    await send({"type": "websocket.http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "websocket.http.response.body", "body": error.body()})


def create_app(settings: Settings | None = None, *, service: Service | None = None) -> Quart:
    service = service or Service(settings or Settings.from_env())
    settings = service.settings
    app = Quart(__name__, static_folder=str(settings.static_dir), static_url_path="/static")
    # No redirect to the path with "//" merged: it would be HTML, and its Location is built
    # from the request's Host header.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    app.extensions["sse_notify"] = service
    QuartSchema(app, info=Info(title="sse-notify", version=version("sse-notify")),
                security_schemes=SECURITY_SCHEMES, openapi_provider_class=Provider,
                swagger_ui_path=None, redoc_ui_path=None, scalar_ui_path=None)
    app.register_blueprint(api)
    app.asgi_app = _LeanRoutes(app.asgi_app, service)

    @app.before_serving
    async def _start() -> None:
        _tune_gc()
        await service.start()

    @app.after_serving
    async def _stop() -> None:
        await service.stop()

    @app.after_request
    async def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        extra = (preflight_headers if request.method == "OPTIONS" else cors_headers)(
            origin, settings.allow_origin)
        for name, value in extra:
            response.headers[name] = value
        return response

    @app.errorhandler(ApiError)
    async def _api_error(error: ApiError) -> Response:
        # A request refused before its body was read (a bad token, say) still gets its
        # body read, up to the limit: Hypercorn closes a keep-alive connection whose
        # request was not read to its end, failing a next request already sent on it.
        with contextlib.suppress(HTTPException):
            await request.get_data(cache=False)
        return _error_response(error.status, error.code, error.message, error.headers)

    @app.errorhandler(StoreUnavailable)
    async def _store_error(error: StoreUnavailable) -> Response:
        log.error("storage unavailable: %s", error)
        return _error_response(503, "unavailable", "Storage is unavailable; try again.")

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if status == 413:
            message = f"The request body exceeds {settings.max_body} bytes."
        else:
            message = "No such path." if status == 404 else (error.description or error.name)
        headers = {"Allow": ", ".join(error.valid_methods)} if getattr(error, "valid_methods", None) else None
        return _error_response(status, _HTTP_CODES.get(status, "http_error"), message, headers)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return _error_response(500, "internal_error", "The server failed to answer this request.")

    app.begin_shutdown = service.hub.close_all  # type: ignore[attr-defined]
    return app
