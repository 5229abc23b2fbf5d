"""GET /ws end to end: both ways to authenticate, the auth failures and timeout, frames for
notifications, ping, read sync (with SSE streams of the same user), bad frames, topics,
replay and token expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from sse_notify.models import iso_ms

from ..helpers import ISO_MS, NOTIFICATION_KEYS, ServerProcess, open_sse
from .wsclient import WS_SERVER_FLAGS, WSStream, auth_headers, open_ws

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server(*WS_SERVER_FLAGS)


async def _publish_some(server: ServerProcess) -> list[int]:
    async with server.client() as c:
        ids = []
        ids += await server.publish(c, user="alice", title="one")
        ids += await server.publish(c, broadcast=True, title="two")
        ids += await server.publish(c, user="bob", title="bob's")
        ids += await server.publish(c, user="alice", title="three", topic="t")
    return ids


async def test_query_token_auth_success_frame(server: ServerProcess) -> None:
    a1, b, _bob, a2 = await _publish_some(server)
    async with server.client() as c:
        resp = await c.post(f"/notifications/{a1}/read", headers=auth_headers(server.token("alice")))
        assert resp.status_code == 204
    async with open_ws(server, server.token("alice")) as ws:
        assert ws.hello == {"type": "auth_success", "user": "alice", "newest_id": a2, "unread": 2,
                            "replay": "live"}
        [nid] = await server.publish(user="alice", title="live")
        frame = await ws.recv()
    assert frame["type"] == "notification" and frame["id"] == nid


async def test_first_frame_auth_with_cursor(server: ServerProcess) -> None:
    a1, b, _bob, a2 = await _publish_some(server)
    auth = {"type": "auth", "token": server.token("alice"), "last_event_id": a1}
    async with open_ws(server, auth=auth) as ws:
        assert ws.hello == {"type": "auth_success", "user": "alice", "newest_id": a2, "unread": 3,
                            "replay": "resumed"}
        assert [n["id"] for n in await ws.notifications(2)] == [b, a2]
        [nid] = await server.publish(user="alice", title="live")
        assert (await ws.recv())["id"] == nid


async def test_first_frame_auth_without_cursor_is_live(server: ServerProcess) -> None:
    await _publish_some(server)
    async with open_ws(server, auth={"type": "auth", "token": server.token("alice")}) as ws:
        assert ws.hello["replay"] == "live"
        [nid] = await server.publish(user="alice", title="live")
        assert (await ws.recv())["id"] == nid  # nothing from history before it


async def test_invalid_cursor_in_auth_frame_starts_live(server: ServerProcess) -> None:
    await _publish_some(server)
    for cursor in ("abc", -1, "", 1.5, None, [1], True, "1" * 19, " 1", "1 ", "\t1"):
        async with open_ws(server, auth={"type": "auth", "token": server.token("alice"),
                                         "last_event_id": cursor}) as ws:
            assert ws.hello["replay"] == "live", cursor
            [nid] = await server.publish(user="alice", title="live")
            assert (await ws.recv())["id"] == nid, cursor  # nothing replayed before it


async def _assert_unauthorized(ws: WSStream) -> None:
    frame = await ws.recv()
    assert frame["type"] == "error" and frame["error"] == "unauthorized", frame
    assert isinstance(frame.get("message"), str) and frame["message"]
    assert await ws.close_code() == 4401
    assert ws.frames_before_close == []


def _bad_tokens(server: ServerProcess) -> dict[str, str]:
    good = server.token("alice")
    return {
        "garbage": "not-a-token",
        "tampered": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "publisher": server.publisher_token(),
        "other secret": ServerProcess(server.data_dir / "elsewhere").signer.subscriber("alice"),
    }


async def test_bad_token_in_query_is_refused_with_4401(server: ServerProcess) -> None:
    for name, token in _bad_tokens(server).items():
        async with open_ws(server, token, expect_hello=False) as ws:
            await _assert_unauthorized(ws)


async def test_bad_token_in_auth_frame_is_refused_with_4401(server: ServerProcess) -> None:
    for name, token in _bad_tokens(server).items():
        async with open_ws(server, auth={"type": "auth", "token": token}, expect_hello=False) as ws:
            await _assert_unauthorized(ws)
    # A first frame that is not an auth frame is no auth either.
    for first in ({"type": "ping"}, {"type": "auth"}, {"type": "auth", "token": 42}, "not json"):
        async with open_ws(server, auth=first, expect_hello=False) as ws:  # type: ignore[arg-type]
            await _assert_unauthorized(ws)


async def test_expired_token_is_refused_with_4401(server: ServerProcess) -> None:
    token = server.token("alice", ttl=0.2)
    expires_at = server.signer.verify_subscriber(token).expires_at
    assert expires_at is not None
    while time.time() <= expires_at:  # the token's lifetime is the thing waited for
        await asyncio.sleep(0.05)
    async with open_ws(server, token, expect_hello=False) as ws:
        await _assert_unauthorized(ws)


async def test_no_auth_frame_within_10s_is_refused(server: ServerProcess) -> None:
    async with open_ws(server, expect_hello=False) as ws:
        started = time.monotonic()
        frame = await ws.recv(timeout=15)
        waited = time.monotonic() - started
        assert frame["type"] == "error" and frame["error"] == "unauthorized", frame
        assert await ws.close_code() == 4401
    assert 9.0 <= waited <= 12.0, waited


async def test_notification_frame_shape(server: ServerProcess) -> None:
    async with open_ws(server, server.token("alice")) as ws:
        [nid] = await server.publish(user="alice", title="T", body="B", priority="low",
                                     topic="chat", data={"k": {"nested": True}})
        [bid] = await server.publish(broadcast=True, title="All")
        frame, bframe = await ws.notifications(2)
    assert set(frame) == NOTIFICATION_KEYS | {"type"}
    assert {k: v for k, v in frame.items() if k != "created_at"} == {
        "type": "notification", "id": nid, "user": "alice", "topic": "chat", "title": "T",
        "body": "B", "priority": "low", "data": {"k": {"nested": True}}, "read": False}
    assert ISO_MS.match(frame["created_at"])
    assert bframe["id"] == bid and bframe["user"] is None and bframe["body"] is None
    assert bframe["data"] is None and bframe["topic"] is None and bframe["priority"] == "medium"


async def test_ping_pong(server: ServerProcess) -> None:
    async with open_ws(server, server.token("alice")) as ws:
        for _ in range(3):
            await ws.send({"type": "ping"})
            assert await ws.recv() == {"type": "pong"}


async def test_read_frame_marks_read_and_syncs_every_stream(server: ServerProcess) -> None:
    tok = server.token("alice")
    async with open_ws(server, tok) as w1, open_ws(server, tok) as w2, open_sse(server, tok) as sse:
        async with server.client() as c:
            [a1] = await server.publish(c, user="alice", title="one")
            [a2] = await server.publish(c, user="alice", title="two")
            [bcast] = await server.publish(c, broadcast=True, title="all")
            [bobs] = await server.publish(c, user="bob", title="bob's")
            for w in (w1, w2):
                assert [n["id"] for n in await w.notifications(3)] == [a1, a2, bcast]
            assert [n["id"] for n in await sse.notifications(3)] == [a1, a2, bcast]

            await w1.send({"type": "read", "ids": [a1, bcast, bobs]})  # bob's is ignored
            assert await w1.recv() == {"type": "read", "ids": [a1, bcast]}  # the asker too
            assert await w2.recv() == {"type": "read", "ids": [a1, bcast]}
            event = await sse.next()
            assert (event.event, event.id, event.json()) == ("read", None, {"ids": [a1, bcast]})

            resp = await c.get("/notifications", headers=auth_headers(tok))
            assert {n["id"]: n["read"] for n in resp.json()["notifications"]} == {
                a1: True, a2: False, bcast: True}

            # Nothing changed: no read frame; a ping answered afterwards comes first.
            await w1.send({"type": "read", "ids": [a1]})
            await w1.send({"type": "ping"})
            assert await w1.recv() == {"type": "pong"}
            [a3] = await server.publish(c, user="alice", title="three")
            assert (await w2.recv())["id"] == a3
            assert (await sse.next()).id == str(a3)
            assert (await w1.recv())["id"] == a3


BAD_FRAMES = [
    "not json",
    "{\"type\": \"ping\"",  # truncated JSON
    "[1, 2]",
    "42",
    "null",
    "{}",
    '{"type": "subscribe"}',
    '{"type": 7}',
    '{"type": "read"}',
    '{"type": "read", "ids": "1"}',
    '{"type": "read", "ids": [-1]}',
    '{"type": "read", "ids": ["1"]}',
    '{"type": "read", "ids": [1.5]}',
    '{"type": "read", "ids": [true]}',
    '{"type": "read", "ids": [9223372036854775808]}',  # above SQLite's integer range
    '{"type": "read", "ids": [1], "all": true}',
    b'{"type": "ping"}\xff',  # binary, not UTF-8 JSON
]


async def test_bad_frames_get_bad_request_and_the_socket_stays_open(server: ServerProcess) -> None:
    async with open_ws(server, server.token("alice")) as ws:
        for raw in BAD_FRAMES:
            await ws.send(raw)
            frame = await ws.recv()
            assert frame["type"] == "error" and frame["error"] == "bad_request", (raw, frame)
            assert isinstance(frame.get("message"), str) and frame["message"]
            await ws.send({"type": "ping"})
            assert await ws.recv() == {"type": "pong"}, raw
        # and it still delivers
        [nid] = await server.publish(user="alice", title="after garbage")
        assert (await ws.recv())["id"] == nid


async def test_topics_filter(server: ServerProcess) -> None:
    tok = server.token("alice")
    async with open_ws(server, tok, query="topics=a,b") as filtered, open_ws(server, tok, query="topics=") as empty:
        async with server.client() as c:
            ids = {}
            for name, body in [("a", {"user": "alice", "topic": "a"}), ("none", {"user": "alice"}),
                               ("c", {"user": "alice", "topic": "c"}), ("bcast-b", {"broadcast": True, "topic": "b"}),
                               ("bcast", {"broadcast": True}), ("last", {"user": "alice", "topic": "a"})]:
                [ids[name]] = await server.publish(c, title=name, **body)
        assert [n["id"] for n in await filtered.notifications(3)] == [ids["a"], ids["bcast-b"], ids["last"]]
        assert [n["id"] for n in await empty.notifications(6)] == list(ids.values())


async def test_replay_via_query_cursor(server: ServerProcess) -> None:
    a1, b, _bob, a2 = await _publish_some(server)
    async with open_ws(server, server.token("alice"), query=f"last_event_id={a1}") as ws:
        assert ws.hello["replay"] == "resumed"
        assert [n["id"] for n in await ws.notifications(2)] == [b, a2]
        [nid] = await server.publish(user="alice", title="live")
        assert (await ws.recv())["id"] == nid
    async with open_ws(server, server.token("alice"), query="last_event_id=0&topics=t") as ws:
        assert ws.hello["replay"] == "resumed"
        assert [n["id"] for n in await ws.notifications(1)] == [a2]
        [nid] = await server.publish(user="alice", title="live", topic="t")
        assert (await ws.recv())["id"] == nid


async def test_token_expiring_then_close_4401(server: ServerProcess) -> None:
    token = server.token("alice", ttl=3)
    expires_at = server.signer.verify_subscriber(token).expires_at
    assert expires_at is not None
    async with open_ws(server, token) as ws:
        frame = await ws.recv(timeout=2)
        assert frame == {"type": "token-expiring", "expires_at": iso_ms(int(expires_at * 1000))}
        [nid] = await server.publish(user="alice", title="before expiry")
        assert (await ws.recv())["id"] == nid
        await ws.send({"type": "ping"})
        assert await ws.recv() == {"type": "pong"}
        assert await ws.close_code(timeout=6) == 4401
        closed = time.time()
    assert ws.frames_before_close == []
    assert expires_at - 0.1 <= closed <= expires_at + 2.0

