"""sse_notify.wire: byte-exact SSE framing and the WebSocket JSON frames."""

from __future__ import annotations

import json

import orjson
import pytest

from sse_notify import wire
from sse_notify.models import Notification, ReadChange
from sse_notify.wire import (
    KEEPALIVE, Outbound, hello, read_event, sse_comment, sse_frame, sse_retry,
    token_expiring, ws_frame,
)

# 2025-11-25T10:00:00.123Z
CREATED = 1764064800123


def _notification(**changes: object) -> Notification:
    fields = dict(id=42, user="alice", topic=None, title="New message",
                  body="You have received a new message", priority="high",
                  data={"thread": 7}, created_at=CREATED)
    fields.update(changes)
    return Notification(**fields)  # type: ignore[arg-type]


# -- sse_frame ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(data="hi"), b"data: hi\n\n"),
        (dict(data=b"hi"), b"data: hi\n\n"),
        (dict(data=""), b"data: \n\n"),
        (dict(data="hi", event="greet"), b"event: greet\ndata: hi\n\n"),
        (dict(data="hi", id=7), b"id: 7\ndata: hi\n\n"),
        (dict(data="hi", id="abc"), b"id: abc\ndata: hi\n\n"),
        (dict(data="{}", event="notification", id=42),
         b"id: 42\nevent: notification\ndata: {}\n\n"),
        # multi-line data: one data: line per line, whatever the line ending
        (dict(data="a\nb"), b"data: a\ndata: b\n\n"),
        (dict(data="a\r\nb"), b"data: a\ndata: b\n\n"),
        (dict(data="a\rb"), b"data: a\ndata: b\n\n"),
        (dict(data="a\r\n\r\nb"), b"data: a\ndata: \ndata: b\n\n"),
        (dict(data="a\n"), b"data: a\ndata: \n\n"),
        (dict(data="\n"), b"data: \ndata: \n\n"),
        (dict(data="a\n\rb"), b"data: a\ndata: \ndata: b\n\n"),
        (dict(data="é"), "data: é\n\n".encode()),
    ],
    ids=lambda v: repr(v) if isinstance(v, bytes) else None,
)
def test_sse_frame_bytes(kwargs: dict, expected: bytes) -> None:
    assert sse_frame(**kwargs) == expected


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\n", "\n", "a\0b"])
@pytest.mark.parametrize("field", ["id", "event"])
def test_sse_frame_refuses_line_breaks_in_id_and_event(field: str, bad: str) -> None:
    with pytest.raises(ValueError):
        sse_frame("x", **{field: bad})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("keepalive", b": keepalive\n\n"), ("", b": \n\n"), ("a b", b": a b\n\n")],
)
def test_sse_comment_bytes(text: str, expected: bytes) -> None:
    assert sse_comment(text) == expected


@pytest.mark.parametrize("bad", ["a\nb", "a\r", "\0"])
def test_sse_comment_refuses_line_breaks(bad: str) -> None:
    with pytest.raises(ValueError):
        sse_comment(bad)


@pytest.mark.parametrize(("ms", "expected"), [(3000, b"retry: 3000\n\n"), (1, b"retry: 1\n\n")])
def test_sse_retry_bytes(ms: int, expected: bytes) -> None:
    assert sse_retry(ms) == expected


def test_ws_frame_puts_type_first() -> None:
    assert ws_frame("pong", {}) == '{"type":"pong"}'
    assert ws_frame("error", {"error": "bad_request", "message": "m"}) == (
        '{"type":"error","error":"bad_request","message":"m"}')


# -- Outbound.notification ------------------------------------------------------------

NOTIFICATION_JSON = (
    b'{"id":42,"user":"alice","topic":null,"title":"New message",'
    b'"body":"You have received a new message","priority":"high",'
    b'"data":{"thread":7},"created_at":"2025-11-25T10:00:00.123Z","read":false}'
)


def test_notification_sse_bytes_exact() -> None:
    out = Outbound.notification(_notification())
    assert out.sse == b"id: 42\nevent: notification\ndata: " + NOTIFICATION_JSON + b"\n\n"


def test_notification_ws_is_json_with_type_and_every_field() -> None:
    n = _notification(topic="chat", user=None, body=None, data=None)
    frame = json.loads(Outbound.notification(n).ws)
    assert frame == {"type": "notification", **n.to_dict(read=False)}
    assert frame["read"] is False and frame["user"] is None and frame["topic"] == "chat"
    assert list(frame)[0] == "type"


def test_notification_with_newlines_in_text_stays_one_data_line() -> None:
    out = Outbound.notification(_notification(title="a\nb", body="c\r\nd"))
    lines = out.sse.split(b"\n")
    assert lines[0] == b"id: 42" and lines[1] == b"event: notification"
    assert lines[2].startswith(b"data: ") and lines[3:] == [b"", b""]
    assert json.loads(lines[2][6:])["body"] == "c\r\nd"


#: Line breaks to str.splitlines() (and so to some SSE readers) though not to SSE or JSON.
LINE_BREAKERS = "\u2028\u2029\u0085"


def test_notification_escapes_unicode_line_breakers_byte_exact() -> None:
    out = Outbound.notification(_notification(title="a\u2028b", body="c\u2029d",
                                               data={"k\u0085": "\u2028\u2029\u0085"}))
    assert out.sse == (
        b'id: 42\nevent: notification\ndata: {"id":42,"user":"alice","topic":null,'
        b'"title":"a\\u2028b","body":"c\\u2029d","priority":"high",'
        b'"data":{"k\\u0085":"\\u2028\\u2029\\u0085"},'
        b'"created_at":"2025-11-25T10:00:00.123Z","read":false}\n\n')
    assert out.ws == (
        '{"type":"notification","id":42,"user":"alice","topic":null,'
        '"title":"a\\u2028b","body":"c\\u2029d","priority":"high",'
        '"data":{"k\\u0085":"\\u2028\\u2029\\u0085"},'
        '"created_at":"2025-11-25T10:00:00.123Z","read":false}')
    text = out.sse.decode()
    assert text.splitlines() == text.split("\n")[:-1]  # splitlines breaks only where SSE does
    assert json.loads(out.ws)["data"] == {"k\u0085": LINE_BREAKERS}  # the same text, escaped


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("\u2028", b'"\\u2028"'), ("\u2029", b'"\\u2029"'), ("\u0085", b'"\\u0085"'),
        # neighbours in UTF-8 stay as they are: same lead bytes, other characters
        ("\u2014\u2027\u202a\u0084\u0086\u00a0", '"\u2014\u2027\u202a\u0084\u0086\u00a0"'.encode()),
        ("x\u2028\u2014\u0085y", b'"x\\u2028' + "\u2014".encode() + b'\\u0085y"'),
    ],
)
def test_encode_json_escapes_exactly_the_three(text: str, escaped: bytes) -> None:
    assert wire.encode_json(text) == escaped
    assert json.loads(escaped) == text


def test_ws_frames_escape_line_breakers_too() -> None:
    assert ws_frame("error", {"message": "a\u2028b"}) == '{"type":"error","message":"a\\u2028b"}'


def test_notification_carries_routing_attributes() -> None:
    out = Outbound.notification(_notification(topic="chat"))
    assert (out.id, out.user, out.topic) == (42, "alice", "chat")


def test_outbound_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = wire.orjson.dumps
    monkeypatch.setattr(wire.orjson, "dumps", lambda *a, **k: calls.append(a) or real(*a, **k))
    out = Outbound.notification(_notification())
    first, second = out.sse, out.sse
    assert first is second
    assert len(calls) == 1
    assert out.ws is out.ws


@pytest.mark.parametrize("title", ["plain", "line\nbreak", "cr\rlf", "a\u2028b", "caf\u00e9"])
def test_a_notification_frame_is_the_one_sse_frame_builds(title: str) -> None:
    out = Outbound.notification(_notification(title=title))
    assert out.sse == sse_frame(out._json, "notification", 42)
    assert out.sse.count(b"\n") == 4  # id, event, one data line, the blank line
    assert out.sse.find(b"\xe2\x80\xa8") < 0  # escaped: line-splitting readers break there
    assert orjson.loads(out._json)["title"] == title


def test_a_payload_with_line_breaks_is_framed_line_by_line() -> None:
    out = Outbound("notification", b'{"a":\n1}', id=7)
    assert out.sse == b'id: 7\nevent: notification\ndata: {"a":\ndata: 1}\n\n'


# -- control events -------------------------------------------------------------------

def test_hello_sse_has_no_id_line() -> None:
    out = hello("alice", 57, 3, "resumed")
    assert out.id is None
    assert out.sse == (b'event: hello\ndata: {"user":"alice","newest_id":57,"unread":3,'
                       b'"replay":"resumed"}\n\n')


def test_hello_ws_is_auth_success() -> None:
    assert json.loads(hello("alice", 57, 3, "live").ws) == {
        "type": "auth_success", "user": "alice", "newest_id": 57, "unread": 3, "replay": "live"}


def test_read_event() -> None:
    out = read_event(ReadChange("alice", (3, 5)))
    assert out.id is None and out.user == "alice" and out.topic is None
    assert out.sse == b'event: read\ndata: {"ids":[3,5]}\n\n'
    assert json.loads(out.ws) == {"type": "read", "ids": [3, 5]}


@pytest.mark.parametrize(
    ("expires_at", "text"),
    [
        (1764064800.123, "2025-11-25T10:00:00.123Z"),
        (1764064800.5, "2025-11-25T10:00:00.500Z"),
        (1764064800.0, "2025-11-25T10:00:00.000Z"),
        (1764064800.9999, "2025-11-25T10:00:00.999Z"),  # truncated, never rounded up
    ],
)
def test_token_expiring_time_format(expires_at: float, text: str) -> None:
    out = token_expiring(expires_at)
    assert out.id is None
    assert out.sse == b'event: token-expiring\ndata: {"expires_at":"' + text.encode() + b'"}\n\n'
    assert json.loads(out.ws) == {"type": "token-expiring", "expires_at": text}


def test_keepalive() -> None:
    assert KEEPALIVE.sse == b": keepalive\n\n"
    assert KEEPALIVE.id is None
    assert json.loads(KEEPALIVE.ws) == {"type": "keepalive"}


# -- replayed: a replay page encoded from stored rows --------------------------------

@pytest.mark.parametrize("notification", [
    _notification(),
    _notification(user=None, topic="news", body=None, data=None, priority="low"),
    _notification(title="line\nbreak \"quoted\" \\ tab\t", body="sep\u2028par\u2029nel\u0085 é ✓ 🎉",
                  data={"nested": {"list": [1, 2.5, None, True], "text": "a\u2028b"}, "z": -1}),
    _notification(created_at=CREATED + 999),
])
def test_replayed_rows_encode_as_the_notification_would(notification: Notification) -> None:
    import orjson

    row = (notification.id, notification.user, notification.topic, notification.title, notification.body,
           notification.priority, None if notification.data is None else orjson.dumps(notification.data).decode(),
           notification.created_at)
    [event] = wire.replayed([row])
    expected = Outbound.notification(notification)
    assert event.sse == expected.sse
    assert event.ws == expected.ws and event.ws_wire == expected.ws_wire
    assert (event.id, event.topic, event.user) == (expected.id, expected.topic, expected.user)
    assert b"\xe2\x80\xa8" not in event.sse  # escaped, as every stream payload


def test_replayed_renders_each_row_s_own_creation_time() -> None:
    rows = [(i, "alice", None, "t", None, "low", None, CREATED + i // 2) for i in range(1, 6)]
    times = [json.loads(e.sse.split(b"data: ", 1)[1])["created_at"] for e in wire.replayed(rows)]
    assert times == ["2025-11-25T10:00:00.123Z", "2025-11-25T10:00:00.124Z", "2025-11-25T10:00:00.124Z",
                     "2025-11-25T10:00:00.125Z", "2025-11-25T10:00:00.125Z"]


def test_replayed_renders_times_across_seconds_and_days() -> None:
    from sse_notify.models import iso_ms

    times = [CREATED, CREATED + 876, CREATED + 877, 1764115199999, 1764115200000, 1764115200001]
    rows = [(i, "alice", None, "t", None, "low", None, t) for i, t in enumerate(times, 1)]
    got = [json.loads(e.sse.split(b"data: ", 1)[1])["created_at"] for e in wire.replayed(rows)]
    assert got == [iso_ms(t) for t in times]
    assert got[3:5] == ["2025-11-25T23:59:59.999Z", "2025-11-26T00:00:00.000Z"]
