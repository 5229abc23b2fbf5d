"""Pure framing: the bytes of Server-Sent Events and the JSON text of WebSocket frames.

An :class:`Outbound` is encoded once and shared by every stream it is delivered to: a
notification's JSON is produced once per publish, and its SSE frame and WebSocket text are
derived from that one encoding: a notification's SSE frame at once (one ``%`` format),
the WebSocket text on first use (lazily, so a server with no WebSocket clients never
builds WebSocket frames).

Every JSON payload a stream carries escapes U+2028, U+2029 and U+0085 (``\\u2028``, ...)
instead of sending them raw (:func:`encode_json`): they are valid inside JSON strings, but
some SSE clients (Python's ``str.splitlines``, as httpx-sse uses) take them for line
breaks and cut the event apart. Browsers accept both forms. HTTP answers (history, ...)
are whole JSON documents, read by JSON parsers, and keep them raw.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from .models import Notification, ReadChange, iso_ms

__all__ = [
    "KEEPALIVE",
    "Outbound",
    "encode_json",
    "hello",
    "read_event",
    "replayed",
    "sse_comment",
    "sse_frame",
    "sse_retry",
    "token_expiring",
    "ws_frame",
    "ws_text_frame",
]


def sse_frame(data: str | bytes, event: str | None = None, id: int | str | None = None) -> bytes:
    """One SSE event. Multi-line data becomes several ``data:`` lines."""
    if isinstance(data, str):
        data = data.encode()
    parts: list[bytes] = []
    if id is not None:
        parts.append(b"id: " + _single_line(str(id)) + b"\n")
    if event is not None:
        parts.append(b"event: " + _single_line(event) + b"\n")
    for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        parts.append(b"data: " + line + b"\n")
    parts.append(b"\n")
    return b"".join(parts)


def sse_comment(text: str) -> bytes:
    return b": " + _single_line(text) + b"\n\n"


def sse_retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


def _single_line(text: str) -> bytes:
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("SSE id, event and comment fields must be a single line")
    return text.encode()


#: Characters that JSON leaves raw in strings but line-splitting readers break lines at.
_LINE_BREAKERS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"),
                  (b"\xc2\x85", b"\\u0085"))


def encode_json(value: Any) -> bytes:
    """``value`` as compact JSON, with U+2028, U+2029 and U+0085 escaped. (In UTF-8 their
    bytes cannot occur inside any other character, so a bytes replace is exact.)"""
    return _escape_breakers(orjson.dumps(value))


def _escape_breakers(raw: bytes) -> bytes:
    # ASCII JSON holds none of them: isascii() is one pass over machine words, where each
    # find() of a two-byte needle costs about 2,200 instructions on a notification. (And
    # find(), not ``in``: ``bytes in bytes`` first tries the operand as an integer and
    # formats a TypeError it then discards, about 2,800 instructions a test.)
    if not raw.isascii() and (raw.find(b"\xe2\x80") >= 0 or raw.find(b"\xc2\x85") >= 0):
        for char, escape in _LINE_BREAKERS:
            raw = raw.replace(char, escape)
    return raw


def ws_text_frame(payload: bytes) -> bytes:
    """One whole, unmasked (server) WebSocket text frame carrying ``payload`` (UTF-8)."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def ws_frame(type_: str, fields: dict[str, Any]) -> str:
    return encode_json({"type": type_, **fields}).decode()


class Outbound:
    """Something to send on a stream, in both transports' encodings.

    ``id`` is the notification id (None for control events); ``topic`` is used by the
    hub's topic filter.
    """

    __slots__ = ("id", "topic", "user", "_kind", "_ws_type", "_json", "_sse", "_ws", "_ws_wire")

    def __init__(self, kind: str, payload: bytes, id: int | None = None,
                 topic: str | None = None, user: str | None = None, ws_type: str | None = None):
        self._kind = kind
        self._ws_type = ws_type or kind
        self._json = payload  # a JSON object, encoded once
        self.id = id
        self.topic = topic
        self.user = user
        self._sse: bytes | None = None
        self._ws: str | None = None
        self._ws_wire: bytes | None = None

    @classmethod
    def notification(cls, n: Notification) -> Outbound:
        # Notification.to_dict(read=False), spelled out: this runs once per notification.
        raw = _escape_breakers(orjson.dumps({
            "id": n.id, "user": n.user, "topic": n.topic, "title": n.title, "body": n.body,
            "priority": n.priority, "data": n.data, "created_at": iso_ms(n.created_at), "read": False,
        }))
        event = cls("notification", raw, n.id, n.topic, n.user)
        # Its SSE frame at once, as replayed() does: orjson's compact JSON has no line
        # break, so the frame is one data line (nothing to test, no property to go through).
        event._sse = b"id: %d\nevent: notification\ndata: %b\n\n" % (n.id, raw)
        return event

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            raw = self._json
            # find(), not ``in`` (see encode_json): two ``in`` tests cost 5,600 instructions.
            if type(self.id) is int and raw.find(b"\n") < 0 and raw.find(b"\r") < 0:
                # The usual case: compact JSON has no line breaks (they are escaped in
                # strings), so the frame is one data line; the kind is one of ours.
                self._sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self._kind.encode(), raw)
            else:
                self._sse = sse_frame(self._json, self._kind, self.id)
        return self._sse

    @property
    def ws(self) -> str:
        if self._ws is None:
            body = self._json[1:]
            sep = b"" if body == b"}" else b","
            self._ws = (b'{"type":"' + self._ws_type.encode() + b'"' + sep + body).decode()
        return self._ws

    @property
    def ws_wire(self) -> bytes:
        """:attr:`ws` as a whole WebSocket frame on the wire (a server's: unmasked)."""
        if self._ws_wire is None:
            self._ws_wire = ws_text_frame(self.ws.encode())
        return self._ws_wire

    def __repr__(self) -> str:
        return f"Outbound({self._kind!r}, id={self.id!r})"


#: A stored notification as the store reads it for a replay: ``(id, user, topic, title,
#: body, priority, data as JSON text or None, created_at in epoch ms)``.
StoredRow = tuple[int, "str | None", "str | None", str, "str | None", str, "str | None", int]


def replayed(rows: Iterable[StoredRow]) -> list[Outbound]:
    """The ``notification`` events of a replay page, encoded straight from the stored
    rows in one pass: the same bytes as :meth:`Outbound.notification` (the stored ``data``
    text is orjson's own encoding, embedded as it is), without a :class:`Notification`
    or a decoded ``data`` per row, each row's SSE frame built with it (one line: JSON
    escapes every line break)."""
    events = []
    dumps, fragment = orjson.dumps, orjson.Fragment
    for id, user, topic, title, body, priority, data, created_at in rows:
        raw = dumps({"id": id, "user": user, "topic": topic, "title": title, "body": body,
                     "priority": priority, "data": None if data is None else fragment(data),
                     "created_at": iso_ms(created_at), "read": False})
        raw = _escape_breakers(raw)
        event = Outbound("notification", raw, id, topic, user)
        event._sse = b"id: %d\nevent: notification\ndata: %b\n\n" % (id, raw)
        events.append(event)
    return events


def hello(user: str, newest_id: int, unread: int, replay: str) -> Outbound:
    return Outbound("hello", encode_json(
        {"user": user, "newest_id": newest_id, "unread": unread, "replay": replay}),
        ws_type="auth_success")


def read_event(change: ReadChange) -> Outbound:
    return Outbound("read", encode_json({"ids": list(change.ids)}), user=change.user)


def token_expiring(expires_at: float) -> Outbound:
    return Outbound("token-expiring", encode_json({"expires_at": iso_ms(int(expires_at * 1000))}))


#: Sent after a quiet interval; SSE writes a comment, WebSocket relies on its own pings.
KEEPALIVE = Outbound("keepalive", b"{}")
KEEPALIVE._sse = sse_comment("keepalive")
