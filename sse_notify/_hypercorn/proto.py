"""``H11Protocol``'s per-request path for Hypercorn 0.18 / h11 0.16: one header walk, and
a response's head written with its first body chunk.

Per request Hypercorn walks the request headers twice (``_check_protocol`` for an h2c
upgrade or a body, ``_create_stream`` for a WebSocket upgrade), each header through
``decode("latin1").strip().lower()``, then copies them through ``Sequence.__iter__`` --
though h11 hands names lower-cased and validated (a token: no whitespace). And each
response costs two writes, two ``send`` system calls: the head when the app sends
``http.response.start``, the body when it sends ``http.response.body``. :func:`install`
replaces, where each source is the one in :data:`CHECKED`:

* ``_check_protocol``: one walk over h11's ``(raw, lower, value)`` items with byte
  comparisons, the same h2c and ``PRI`` answers; what ``_create_stream`` needs (a
  WebSocket upgrade?) is kept for it, whether the request has a body for
  :func:`.lean._may_hold` (``sse_body``), and its copy of the headers made from the same
  items;
* ``stream_send`` of a body's end: one ``EndOfMessage`` for all (h11's events are frozen);
  of a final response head on plain TCP: its bytes kept by the connection
  (:func:`flush_head`), which writes them with its next write (the first body
  chunk: one ``send``) or at the end of the loop turn, whichever comes first -- a
  streaming response's head never waits on a body that is not coming.

Informational responses (100-continue, 101), error answers, HTTP/2, TLS and WebSocket
traffic go Hypercorn's way. ``tests/test_hypercorn_proto.py`` fails loudly on an upgrade.
"""

from __future__ import annotations

import hashlib
import inspect
from itertools import chain
from typing import Any, cast

from . import conn

try:
    import h11
    from h11._headers import Headers
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol import h11 as _h11proto
    from hypercorn.protocol.events import EndBody, Request, Response
    from hypercorn.protocol.http_stream import HTTPStream
    from hypercorn.protocol.ws_stream import WSStream
except ImportError:  # pragma: no cover
    _h11proto = None  # type: ignore[assignment]

__all__ = ["CHECKED", "install", "uninstall"]

#: sha256 (first 16 hex digits) of Hypercorn 0.18.0's and h11 0.16.0's sources replaced or
#: relied on (``_handle_events`` calls ``_check_protocol`` then ``_create_stream``; h11's
#: ``Headers`` keeps ``(raw name, lower-cased name, value)`` items).
CHECKED = {
    "H11Protocol._check_protocol": "f95f6b38f43c62aa",
    "H11Protocol._create_stream": "a2338a57ab343908",
    "H11Protocol.stream_send": "56a36254a368d71a",
    "H11Protocol._handle_events": "bd4a76b2837e8722",
    "Headers": "e557faefb62564ec",
}

_originals: dict[str, Any] = {}
_END = h11.EndOfMessage() if _h11proto is not None else None


def _fingerprint(obj: Any) -> str:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]
    except (OSError, TypeError):
        return "?"


def sources() -> dict[str, Any]:
    """What :data:`CHECKED` names, as installed now."""
    p = _h11proto.H11Protocol
    return {"H11Protocol._check_protocol": p._check_protocol,
            "H11Protocol._create_stream": p._create_stream,
            "H11Protocol.stream_send": p.stream_send,
            "H11Protocol._handle_events": p._handle_events, "Headers": Headers}


def install() -> bool:
    """Put the replacements in (once); whether they are. The caller checked the versions."""
    if _originals:
        return True
    if _h11proto is None or any(CHECKED[name] != _fingerprint(obj) for name, obj in sources().items()):
        return False
    p = _h11proto.H11Protocol
    _originals.update(check=p._check_protocol, create=p._create_stream, send=p.stream_send)
    conn.flush_head = flush_head
    p._check_protocol = _check_protocol  # type: ignore[method-assign]
    p._create_stream = _create_stream  # type: ignore[method-assign]
    p.stream_send = _stream_send  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    if not _originals:
        return
    p = _h11proto.H11Protocol
    p._check_protocol = _originals["check"]  # type: ignore[method-assign]
    p._create_stream = _originals["create"]  # type: ignore[method-assign]
    p.stream_send = _originals["send"]  # type: ignore[method-assign]
    conn.flush_head = conn._no_head
    _originals.clear()


async def _check_protocol(self: Any, event: Any) -> None:
    """Hypercorn's ``_check_protocol`` in one walk; leaves ``_create_stream`` its answer."""
    headers = event.headers
    if type(headers) is not Headers:
        self.__dict__.pop("_sse_ws", None)
        return await _originals["check"](self, event)
    upgrade = connection = b""
    has_body = body = False
    for _, name, value in headers._full_items:  # names lower-cased by h11, tokens
        if name == b"upgrade":
            upgrade = value.strip()
        elif name == b"connection":
            connection = value.strip()
        elif name == b"content-length":
            has_body = True
            body = body or value != b"0"  # h11 checked it: digits, no spaces
        elif name == b"transfer-encoding":
            has_body = body = True
    upgrade = upgrade.lower()
    if upgrade == b"h2c" and not has_body:
        await self._send_h11_event(h11.InformationalResponse(
            status_code=101,
            headers=self.config.response_headers("h11") + [(b"connection", b"upgrade"), (b"upgrade", b"h2c")],
        ))
        raise _h11proto.H2CProtocolRequiredError(self.connection.trailing_data[0], event)
    elif event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
        raise _h11proto.H2ProtocolAssumedError(b"PRI * HTTP/2.0\r\n\r\n" + self.connection.trailing_data[0])
    self._sse_ws = (event, body, upgrade == b"websocket" and event.method.upper() == b"GET"
                    and any(token.strip() == b"upgrade" for token in connection.lower().split(b",")))


async def _create_stream(self: Any, request: Any) -> None:
    """Hypercorn's ``_create_stream`` with ``_check_protocol``'s walk reused."""
    checked = self.__dict__.pop("_sse_ws", None)
    if checked is None or checked[0] is not request:
        self.__dict__.pop("sse_body", None)
        return await _originals["create"](self, request)
    self.sse_body = checked[1]  # for lean._may_hold: whether the request has a body
    args = (self.app, self.config, self.context, self.task_group, self.ssl, self.client, self.server,
            self.stream_send, _h11proto.STREAM_ID)
    if checked[2]:
        self.stream = WSStream(*args)
        self.connection = _h11proto.H11WSConnection(cast(h11.Connection, self.connection))
    else:
        self.stream = HTTPStream(*args)
    items = request.headers._full_items
    if self.config.h11_pass_raw_headers:
        headers = [(raw, value) for raw, _, value in items]
    else:
        headers = [(name, value) for _, name, value in items]
    await self.stream.handle(Request(
        stream_id=_h11proto.STREAM_ID, headers=headers, http_version=request.http_version.decode(),
        method=request.method.decode("ascii").upper(), raw_path=request.target,
        state=self.connection_state,
    ))
    self.keep_alive_requests += 1
    await self.context.mark_request()


async def _stream_send(self: Any, event: Any) -> None:
    """Hypercorn's ``stream_send``; a final response head on plain TCP waits
    for the next write or the end of the loop turn."""
    if type(event) is Response and event.status_code >= 200 and type(self.connection) is h11.Connection:
        server = getattr(self.send, "__self__", None)
        if (type(server) is TCPServer and server.__dict__.get("_sse_plain")
                and not server.send_lock._locked and not server.send_lock._waiters):
            headers = list(chain(event.headers, self.config.response_headers("h11")))
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            try:
                data = self.connection.send(h11.Response(headers=headers, status_code=event.status_code))
            except h11.LocalProtocolError:
                if self.connection.their_state != h11.ERROR:
                    raise
                return
            # The head holds the send lock until it is written: direct writers refuse
            # meanwhile, the next write takes it along (conn._protocol_send).
            server.send_lock._locked = True
            server._sse_head = data
            server.loop.call_soon(flush_head, server)
            return
    elif type(event) is EndBody:
        await self._send_h11_event(_END)
        return
    await _originals["send"](self, event)


def flush_head(server: Any) -> None:
    """Write a response head that waited for its body and free the send lock it held: at
    the connection's next write (:mod:`.conn` takes it along), a close, or the end of the
    loop turn."""
    head = server.__dict__.get("_sse_head")
    if head is None:
        return
    server._sse_head = None
    server.send_lock.release()
    try:
        server.writer.write(head)
    except (ConnectionError, RuntimeError):
        pass  # the connection is ending: its read loop sees the close
