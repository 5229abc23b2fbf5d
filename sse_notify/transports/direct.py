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

It is shaped as an ASGI extension that a server could offer itself (say
``scope["extensions"]["http.response.direct_body"] = {}`` with the writer passed the same
way): an optional, synchronous, non-blocking body write that may refuse. Until a server
does, :func:`body_writer` finds the pieces itself, and only where every assumption holds:

* Hypercorn's asyncio worker, in one of :data:`TESTED` (``hypercorn`` and ``h11``
  versions), the ASGI ``send`` being ``HTTPStream.app_send`` of an ``H11Protocol``
  (so not HTTP/2, not a WebSocket), over plain TCP (no TLS: a ``https`` scope);
* at write time: the response started, h11 in ``SEND_BODY`` with its chunked writer, the
  connection's send lock free, the transport open and its buffer below
  :data:`HIGH_WATER` (not paused).

Everywhere else it returns None and the caller keeps plain ASGI. ``tests/test_transports_direct.py``
fails loudly when an upgrade changes any of this.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["BodyWriter", "body_writer", "supported", "TESTED", "HIGH_WATER"]

#: (hypercorn, h11) release series this module was tested with.
TESTED = {("0.18", "0.16")}
#: Bytes queued in the transport above which a write is refused (asyncio's default
#: high-water mark; a client this far behind gets ASGI's back-pressure).
HIGH_WATER = 64 * 1024

BodyWriter = Callable[[bytes], bool]

_supported: bool | None = None


def _series(package: str) -> str:
    try:
        return ".".join(version(package).split(".")[:2])
    except PackageNotFoundError:
        return "?"


def supported() -> bool:
    """Whether the installed Hypercorn and h11 are a tested pair (checked once)."""
    global _supported
    if _supported is None:
        _supported = (_series("hypercorn"), _series("h11")) in TESTED
    return _supported


def body_writer(scope: dict[str, Any], send: Callable[..., Any]) -> BodyWriter | None:
    """A direct writer of body chunks for this response, or None where plain ASGI must be
    used. Call it after ``http.response.start`` was sent; it answers whether it wrote."""
    if scope.get("type") != "http" or scope.get("scheme") != "http" or scope.get("http_version") not in ("1.1",):
        return None
    if not supported():
        return None
    try:
        import h11
        from h11._writers import ChunkedWriter
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream

        stream = getattr(send, "__self__", None)
        if type(stream) is not HTTPStream or getattr(send, "__func__", None) is not HTTPStream.app_send:
            return None
        protocol = stream.send.__self__
        if type(protocol) is not H11Protocol:
            return None
        server = protocol.send.__self__
        if type(server) is not TCPServer:
            return None
        if server.writer.get_extra_info("ssl_object") is not None:
            return None
        transport = server.writer.transport
        lock = server.send_lock
        connection = protocol.connection
        chunked = ChunkedWriter
        send_body = h11.SEND_BODY
        response = ASGIHTTPState.RESPONSE
    except (AttributeError, ImportError):
        return None
    if type(connection) is not h11.Connection:
        return None

    write = transport.write
    buffered = transport.get_write_buffer_size
    closing = transport.is_closing

    def direct(body: bytes) -> bool:
        if (stream.state is not response or stream.closed or lock.locked() or closing()
                or buffered() > HIGH_WATER or protocol.connection is not connection
                or connection.our_state is not send_body or type(connection._writer) is not chunked):
            return False
        if body:
            write(b"%x\r\n%b\r\n" % (len(body), body))
        return True

    return direct
