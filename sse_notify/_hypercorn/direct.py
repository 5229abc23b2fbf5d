"""A direct body write for HTTP/1.1 responses under Hypercorn: the one place that reaches
into the server's internals.

Plain ASGI makes every body chunk an ``await send(...)`` that walks Hypercorn's whole chain
(``HTTPStream.app_send`` -> ``H11Protocol.stream_send`` -> ``h11.Connection.send`` -> the
connection's send lock -> ``write`` -> ``drain()``): about three times the cost of the
write itself when a broadcast reaches 10,000 streams. :func:`body_writer` returns, where
it is safe, a plain function that frames a chunk as h11 would (``<size hex>\\r\\n<data>\\r\\n``)
and hands it straight to the connection's transport -- and answers False, writing
nothing, whenever it cannot do so now (the socket is not keeping up, another send is in
progress, the response has ended); the caller then uses ASGI ``send``, which waits.

:func:`frame_writer` does the same for a WebSocket: whole server text frames, framed once
per notification (:func:`~sse_notify.wire.ws_text_frame`) and written several at a time,
where ASGI sends one message per ``send``; refused while a compression extension is in
use. Its :meth:`~FrameWriter.close` writes a WebSocket's final close frame the same way,
whole, even while the socket is backed up and the send lock held (Hypercorn's ping waits
in ``drain()`` under it), leaves the stream closed so nothing follows, and aborts the
connection if the client reads nothing for a while. :func:`refuse_permessage_deflate`
makes Hypercorn decline ``permessage-deflate``, which it accepts whenever a client offers
it and has no setting for.

It is shaped as an ASGI extension that a server could offer itself (say
``scope["extensions"]["http.response.direct_body"] = {}`` with the writer passed the same
way): an optional, synchronous, non-blocking body write that may refuse. Until a server
does, :func:`body_writer` finds the pieces itself, and only where every assumption holds:

* Hypercorn's asyncio worker, in one of :data:`TESTED` (``hypercorn`` and ``h11``
  versions; wsproto as Hypercorn 0.18 requires it), the ASGI ``send`` being
  ``HTTPStream.app_send`` (``WSStream.app_send``) of an ``H11Protocol`` (so not
  HTTP/2), over plain TCP (no TLS: an ``https``/``wss`` scope);
* at write time: the response started, h11 in ``SEND_BODY`` with its chunked writer, the
  connection's send lock free, the transport open and its buffer below
  :data:`HIGH_WATER` (not paused).

Everywhere else it returns None and the caller keeps plain ASGI. ``tests/test_transports_direct.py``
fails loudly when an upgrade changes any of this. The version gate is the package's
(:func:`~sse_notify._hypercorn.supported`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import TESTED, supported as _tested

__all__ = ["BodyWriter", "FrameWriter", "body_writer", "frame_writer", "refuse_permessage_deflate",
           "supported", "TESTED", "HIGH_WATER"]

#: Bytes queued in the transport above which a write is refused (asyncio's default
#: high-water mark; a client this far behind gets ASGI's back-pressure).
HIGH_WATER = 64 * 1024

BodyWriter = Callable[[bytes], bool]

_importable = True

try:  # what the writers compare with (absent: nothing is supported)
    from h11 import Connection as _H11Connection, SEND_BODY as _SEND_BODY
    from hypercorn.asyncio.tcp_server import TCPServer
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.http_stream import HTTPStream
    from hypercorn.protocol.ws_stream import WSStream
    from h11._writers import ChunkedWriter as _Chunked
    from hypercorn.protocol.http_stream import ASGIHTTPState
    from hypercorn.protocol.ws_stream import ASGIWebsocketState
    from wsproto.connection import Connection as _WSConnection, ConnectionState
    from wsproto.events import CloseConnection as _CloseConnection

    _RESPONSE, _CONNECTED, _OPEN = ASGIHTTPState.RESPONSE, ASGIWebsocketState.CONNECTED, ConnectionState.OPEN
    _WS_CLOSED = ASGIWebsocketState.CLOSED
except ImportError:  # pragma: no cover
    _importable = False


def supported() -> bool:
    """Whether the installed Hypercorn and h11 are a tested pair whose pieces import."""
    return _importable and _tested()


def _tcp_server(protocol_send: Any) -> Any:
    """The asyncio ``TCPServer`` behind an ``H11Protocol``'s send, or None (TLS, another
    worker)."""
    server = getattr(protocol_send, "__self__", None)
    if type(server) is not TCPServer or server.writer.get_extra_info("ssl_object") is not None:
        return None
    return server


def _h11_path(send: Callable[..., Any], stream_type: Any) -> tuple[Any, Any, Any, Any] | None:
    """From an ASGI ``send`` of Hypercorn's ``stream_type`` (HTTPStream, WSStream) to its
    stream, its H11Protocol, and the send lock and transport of its plain-TCP server; None
    where that path is not the one this module was checked against."""
    try:
        stream = getattr(send, "__self__", None)
        if type(stream) is not stream_type or getattr(send, "__func__", None) is not stream_type.app_send:
            return None
        protocol = stream.send.__self__
        if type(protocol) is not H11Protocol:
            return None
        server = _tcp_server(protocol.send)
        if server is None:
            return None
        return stream, protocol, server.send_lock, server.writer.transport
    except AttributeError:
        return None


def body_writer(scope: dict[str, Any], send: Callable[..., Any]) -> BodyWriter | None:
    """A direct writer of body chunks for this response, or None where plain ASGI must be
    used. Call it after ``http.response.start`` was sent; it answers whether it wrote."""
    if scope.get("type") != "http" or scope.get("scheme") != "http" or scope.get("http_version") != "1.1":
        return None
    if not supported():
        return None
    path = _h11_path(send, HTTPStream)
    if path is None:
        return None
    stream, protocol, lock, transport = path
    connection = getattr(protocol, "connection", None)
    if type(connection) is not _H11Connection:
        return None
    return _DirectBody(stream, protocol, connection, lock, transport)


def frame_writer(scope: dict[str, Any], send: Callable[..., Any]) -> FrameWriter | None:
    """For a WebSocket over HTTP/1.1: a direct writer of whole, already-framed server
    frames (:func:`~sse_notify.wire.ws_text_frame`), or None. Call it after the accept; it
    refuses while a compression extension is in use (the frames would need it), and on
    the same conditions as :func:`body_writer`."""
    if scope.get("type") != "websocket" or scope.get("scheme") != "ws" or scope.get("http_version") != "1.1":
        return None
    if not supported():
        return None
    path = _h11_path(send, WSStream)
    if path is None:
        return None
    stream, _, lock, transport = path
    return FrameWriter(stream, lock, transport)


class _DirectBody:
    """:func:`body_writer`'s answer: one small object per stream (no closure cells)."""

    __slots__ = ("stream", "protocol", "connection", "lock", "transport")

    def __init__(self, stream: Any, protocol: Any, connection: Any, lock: Any, transport: Any):
        self.stream, self.protocol, self.connection = stream, protocol, connection
        self.lock, self.transport = lock, transport

    def __call__(self, body: bytes) -> bool:
        stream, connection, transport = self.stream, self.connection, self.transport
        if (stream.state is not _RESPONSE or stream.closed or self.lock.locked()
                or transport.is_closing() or transport.get_write_buffer_size() > HIGH_WATER
                or self.protocol.connection is not connection
                or connection.our_state is not _SEND_BODY or type(connection._writer) is not _Chunked):
            return False
        if body:
            transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        return True


class FrameWriter:
    """:func:`frame_writer`'s answer: called, it writes frames where it can; :meth:`close`
    writes the final close frame."""

    __slots__ = ("stream", "lock", "transport")

    def __init__(self, stream: Any, lock: Any, transport: Any):
        self.stream, self.lock, self.transport = stream, lock, transport

    def _open(self) -> Any:
        """The stream's wsproto connection while a frame of ours may go out now (accepted,
        open both ways, no compression, no message half sent, the transport open), else None."""
        stream = self.stream
        connection = getattr(stream, "connection", None)
        if (stream.state is not _CONNECTED or stream.closed or type(connection) is not _WSConnection
                or connection._state is not _OPEN or connection._proto.extensions
                or connection._proto._outbound_opcode is not None or self.transport.is_closing()):
            return None
        return connection

    def __call__(self, frames: bytes) -> bool:  # the hub's hot path: _open's test, inline
        stream, transport = self.stream, self.transport
        connection = getattr(stream, "connection", None)
        if (stream.state is not _CONNECTED or stream.closed or type(connection) is not _WSConnection
                or connection._state is not _OPEN or connection._proto.extensions
                or connection._proto._outbound_opcode is not None
                or self.lock.locked() or transport.is_closing()
                or transport.get_write_buffer_size() > HIGH_WATER):
            return False
        if frames:
            transport.write(frames)
        return True

    def close(self, code: int, reason: str, linger: float) -> bool:
        """The final close frame (``code``, ``reason``), written whole now, even while the
        socket is backed up or another send holds the connection's lock (Hypercorn's ping
        task waits in ``drain()`` under it for as long as the client does not read; an
        ASGI ``websocket.close`` waits behind it). False, writing nothing, where
        :meth:`__call__` would refuse for any reason other than those two.

        Frame boundaries hold without the lock: every writer on the connection (this one,
        Hypercorn's ``protocol_send`` under the lock, :mod:`.conn`'s lock-free write) hands
        whole frames to one synchronous ``transport.write``; the lock only orders each
        write with its ``drain()``. Nothing goes out after the close: wsproto is left
        closing (it refuses any further frame: Hypercorn's pings and pongs, a second
        close), the stream ``CLOSED`` (ASGI's close and its end-of-app cleanup send no
        second close; a ``websocket.send`` is refused as after any close), and the
        transport's write side ended (a write already framed and waiting for the lock
        fails, which Hypercorn takes as the connection's end). The connection is then
        aborted if the client has read nothing of what is queued within ``linger``
        seconds (and each ``linger`` after that), so its socket is released even if the
        client never reads; asyncio's ``close()`` would wait for the flush for ever."""
        connection = self._open()
        if connection is None:
            return False
        transport = self.transport
        frame = connection.send(_CloseConnection(code=code, reason=reason or None))
        self.stream.state = _WS_CLOSED
        transport.write(frame)
        try:
            transport.write_eof()  # shut down once the queue, close frame last, is flushed
        except OSError:  # the peer is gone (shut down at once when nothing was queued)
            pass
        queued = transport.get_write_buffer_size()
        if queued:
            loop = asyncio.get_running_loop()
            loop.call_later(linger, _abort_unless_read, loop, transport, linger, queued)
        return True


def _abort_unless_read(loop: asyncio.AbstractEventLoop, transport: Any, linger: float, queued: int) -> None:
    """After a final close: abort the connection if its client read nothing of the
    ``queued`` bytes in the last ``linger`` seconds; look again later if it read some."""
    left = transport.get_write_buffer_size()  # 0 once flushed or lost
    if not left:
        return
    if left < queued:
        loop.call_later(linger, _abort_unless_read, loop, transport, linger, left)
    else:
        transport.abort()


class _NoDeflate:
    """Stands in for wsproto's ``PerMessageDeflate`` in Hypercorn's handshake: named like
    it, so an offer of it is matched, and declining it."""

    name = "permessage-deflate"

    def accept(self, offer: str) -> None:
        return None

    def enabled(self) -> bool:
        return False


def refuse_permessage_deflate() -> bool:
    """Make Hypercorn decline ``permessage-deflate`` (it accepts it whenever a client
    offers it, with no setting to turn it off): a compressed WebSocket keeps a zlib
    context each way, 22 KiB -> 113 KiB per connection after its first compressed
    message, and its frames cannot be shared between streams. Returns whether it did
    (only for the tested versions)."""
    if not supported():
        return False
    try:
        from hypercorn.protocol import ws_stream
    except ImportError:
        return False
    if getattr(ws_stream, "PerMessageDeflate", None) is None:
        return False
    ws_stream.PerMessageDeflate = _NoDeflate  # type: ignore[attr-defined,assignment]
    return True
