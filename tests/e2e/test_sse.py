"""GET /events end to end: headers, framing, hello, delivery, read sync, keepalive, topics,
fan-out to many streams, isolation between users, disconnects and token expiry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from sse_notify.models import iso_ms

from ..helpers import ISO_MS, NOTIFICATION_KEYS, ServerProcess, open_sse
from .wsclient import (
    OPEN_SSE, OPEN_WS, WS_SERVER_FLAGS, auth_headers, open_ws,
    sse_lines, wait_for_metric,
)


@pytest.fixture
def ws_server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    """For tests that also open WebSockets (see WS_SERVER_FLAGS)."""
    return make_server(*WS_SERVER_FLAGS)


async def test_headers_and_retry_are_flushed_before_any_notification(server: ServerProcess) -> None:
    async with sse_lines(server, server.token("alice")) as (resp, lines):
        # The response head has arrived although nothing has been published.
        assert resp.status_code == 200
        assert resp.headers["content-type"].split(";")[0].strip() == "text/event-stream"
        assert resp.headers["cache-control"] == "no-cache"
        assert resp.headers["x-accel-buffering"] == "no"
        async with asyncio.timeout(2):
            first = await anext(lines)
            assert first == "retry: 3000"  # the very first line on the wire
            assert await anext(lines) == ""
            assert await anext(lines) == "event: hello"  # no id: line before it
            data = await anext(lines)
            assert await anext(lines) == ""
    assert data.startswith("data: ")
    assert orjson.loads(data[6:]) == {"user": "alice", "newest_id": 0, "unread": 0, "replay": "live"}


async def test_retry_field_honours_the_flag(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--retry", "1234")
    async with open_sse(server, server.token("alice")) as stream:
        assert stream.retry == 1234
        assert stream.hello.json()["replay"] == "live"


async def test_hello_counts_own_and_broadcast_and_ignores_topics(server: ServerProcess) -> None:
    async with server.client() as c:
        [a1] = await server.publish(c, user="alice", title="one")
        [a2] = await server.publish(c, user="alice", title="two", topic="x")
        [b1] = await server.publish(c, broadcast=True, title="to all", topic="y")
        [bob] = await server.publish(c, user="bob", title="not alice's")  # newer, invisible
        resp = await c.post(f"/notifications/{a1}/read", headers=auth_headers(server.token("alice")))
        assert resp.status_code == 204
    assert a1 < a2 < b1 < bob
    for query in ("", "topics=zzz", "topics=x"):
        async with open_sse(server, server.token("alice"), query=query) as stream:
            assert stream.hello.event == "hello" and stream.hello.id is None
            assert stream.hello.json() == {"user": "alice", "newest_id": b1, "unread": 2,
                                           "replay": "live"}, query
    async with open_sse(server, server.token("carol")) as stream:  # only the broadcast
        assert stream.hello.json() == {"user": "carol", "newest_id": b1, "unread": 1, "replay": "live"}
    async with open_sse(server, server.token("bob")) as stream:
        assert stream.hello.json() == {"user": "bob", "newest_id": bob, "unread": 2, "replay": "live"}


async def test_notification_event_framing_and_payload(server: ServerProcess) -> None:
    async with open_sse(server, server.token("alice")) as stream:
        [minimal] = await server.publish(user="alice", title="Minimal")
        [full] = await server.publish(user="alice", title="Full", body="Body\nline two",
                                      priority="urgent", topic="chat", data={"thread": 7, "x": [None, 1.5]})
        [bcast] = await server.publish(broadcast=True, title="All")
        events = [await stream.next_of("notification") for _ in range(3)]
    assert [e.id for e in events] == [str(minimal), str(full), str(bcast)]
    payloads = [e.json() for e in events]
    for payload in payloads:
        assert set(payload) == NOTIFICATION_KEYS
        assert payload["read"] is False
        assert ISO_MS.match(payload["created_at"]), payload["created_at"]
    assert payloads[0] == {**payloads[0], "id": minimal, "user": "alice", "topic": None,
                           "title": "Minimal", "body": None, "priority": "medium", "data": None}
    assert payloads[1] == {**payloads[1], "id": full, "user": "alice", "topic": "chat", "title": "Full",
                           "body": "Body\nline two", "priority": "urgent",
                           "data": {"thread": 7, "x": [None, 1.5]}}
    assert payloads[2]["user"] is None and payloads[2]["id"] == bcast


async def test_read_events_reach_every_stream_of_the_user(server: ServerProcess) -> None:
    alice = server.token("alice")
    async with server.client() as c, \
            open_sse(server, alice) as s1, open_sse(server, alice) as s2, \
            open_sse(server, server.token("bob")) as bob_stream:
        ids = [(await server.publish(c, user="alice", title=f"n{i}"))[0] for i in range(4)]
        [bcast] = await server.publish(c, broadcast=True, title="all")
        [bobs] = await server.publish(c, user="bob", title="bob's")
        for s in (s1, s2):
            assert [n["id"] for n in await s.notifications(5)] == [*ids, bcast]
        assert [n["id"] for n in await bob_stream.notifications(2)] == [bcast, bobs]
        h = auth_headers(alice)

        async def expect_read(expected: list[int]) -> None:
            for s in (s1, s2):
                event = await s.next()
                assert (event.event, event.id, event.json()) == ("read", None, {"ids": expected})

        # One notification; the asking client's streams included.
        assert (await c.post(f"/notifications/{ids[0]}/read", headers=h)).status_code == 204
        await expect_read([ids[0]])

        # Already read: 204 again, but no read event; the next thing on the streams is a
        # notification published afterwards.
        assert (await c.post(f"/notifications/{ids[0]}/read", headers=h)).status_code == 204
        resp = await c.post("/notifications/read", json={"ids": [ids[0]]}, headers=h)
        assert resp.json() == {"updated": 0}
        [sentinel] = await server.publish(c, user="alice", title="sentinel")
        for s in (s1, s2):
            event = await s.next()
            assert (event.event, event.id) == ("notification", str(sentinel))

        # A list: only the ids whose state changed, ids alice cannot see ignored.
        resp = await c.post("/notifications/read", json={"ids": [ids[0], ids[1], ids[2], bobs]}, headers=h)
        assert resp.json() == {"updated": 2}
        await expect_read([ids[1], ids[2]])

        # All: the rest, broadcast included.
        resp = await c.post("/notifications/read", json={"all": True}, headers=h)
        assert resp.json() == {"updated": 3}
        await expect_read(sorted([ids[3], bcast, sentinel]))

        # Nothing changes now: no event.
        resp = await c.post("/notifications/read", json={"all": True}, headers=h)
        assert resp.json() == {"updated": 0}
        [last] = await server.publish(c, user="alice", title="last")
        for s in (s1, s2):
            event = await s.next()
            assert (event.event, event.id) == ("notification", str(last))

        # Bob saw none of alice's read events (his stream is next at his own notification).
        [bob2] = await server.publish(c, user="bob", title="bob again")
        event = await bob_stream.next()
        assert (event.event, event.id) == ("notification", str(bob2))


async def test_keepalive_comments_after_quiet_intervals(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--heartbeat", "0.3")
    async with sse_lines(server, server.token("alice")) as (resp, lines):
        assert resp.status_code == 200
        seen: list[tuple[float, str]] = []
        async with asyncio.timeout(5):
            async for line in lines:
                seen.append((time.monotonic(), line))
                if sum(1 for _, l in seen if l.startswith(":")) == 2:
                    break
            [nid] = await server.publish(user="alice", title="between keepalives")
            after: list[str] = []
            async for line in lines:
                after.append(line)
                if line == ": keepalive" and any(l.startswith("id:") for l in after):
                    break
    comments = [(t, l) for t, l in seen if l.startswith(":")]
    assert [l for _, l in comments] == [": keepalive"] * 2
    gaps = [b[0] - a[0] for a, b in zip(comments, comments[1:])]
    assert all(g >= 0.2 for g in gaps), gaps  # one per quiet interval, not a flood
    assert f"id: {nid}" in after
    assert [l for l in after if l.startswith(":")] == [": keepalive"]  # no other comment lines


async def test_topics_filter(server: ServerProcess) -> None:
    tok = server.token("alice")
    async with server.client() as c, open_sse(server, tok, query="topics=a,b") as filtered, \
            open_sse(server, tok, query="topics=") as empty, open_sse(server, tok) as plain:
        published = {}
        for name, body in [("a", {"user": "alice", "topic": "a"}), ("b", {"user": "alice", "topic": "b"}),
                           ("c", {"user": "alice", "topic": "c"}), ("none", {"user": "alice"}),
                           ("bcast-a", {"broadcast": True, "topic": "a"}),
                           ("bcast-none", {"broadcast": True}), ("sentinel", {"user": "alice", "topic": "b"})]:
            [published[name]] = await server.publish(c, title=name, **body)
        everything = list(published.values())
        assert [n["id"] for n in await filtered.notifications(4)] == [
            published["a"], published["b"], published["bcast-a"], published["sentinel"]]
        assert [n["id"] for n in await empty.notifications(len(everything))] == everything
        assert [n["id"] for n in await plain.notifications(len(everything))] == everything


async def test_invalid_topic_is_422_json(server: ServerProcess) -> None:
    async with server.client() as c:
        for topics in ("a,b/c", "has%20space", "a,,%2A", "x" * 129):
            resp = await c.get(f"/events?token={server.token('alice')}&topics={topics}")
            assert resp.status_code == 422, topics
            assert resp.headers["content-type"].startswith("application/json")
            body = resp.json()
            assert set(body) == {"error", "message"} and body["error"] and body["message"]


async def test_many_streams_of_one_user_mixed_transports(ws_server: ServerProcess) -> None:
    server = ws_server
    tok = server.token("alice")
    async with open_sse(server, tok) as s1, open_sse(server, tok) as s2, open_sse(server, tok) as s3, \
            open_ws(server, tok) as w1, open_ws(server, tok) as w2, \
            open_sse(server, server.token("bob")) as bob:
        async with server.client() as c:
            ids = []
            ids += await server.publish(c, user="alice", title="own")
            ids += await server.publish(c, broadcast=True, title="all")
            ids += await server.publish(c, users=["bob", "alice"], title="both")  # [bob's, alice's]
            ids += await server.publish(c, user="alice", title="topic", topic="t")
            ids += await server.publish(c, user="bob", title="bob only")
        alice_ids = [ids[0], ids[1], ids[3], ids[4]]
        bob_ids = [ids[1], ids[2], ids[5]]
        for s in (s1, s2, s3):
            assert [n["id"] for n in await s.notifications(4)] == alice_ids
        for w in (w1, w2):
            assert [n["id"] for n in await w.notifications(4)] == alice_ids
        got_bob = await bob.notifications(3)
        assert [n["id"] for n in got_bob] == bob_ids
        assert [n["user"] for n in got_bob] == [None, "bob", "bob"]
        # Nothing more was queued for alice: a fresh one is the next event everywhere.
        [last] = await server.publish(user="alice", title="last")
        for s in (s1, s2, s3):
            assert (await s.next()).id == str(last)
        for w in (w1, w2):
            assert (await w.recv())["id"] == last


async def test_other_users_notifications_never_arrive(server: ServerProcess) -> None:
    async with open_sse(server, server.token("alice")) as alice:
        await server.publish(user="bob", title="secret")
        await server.publish(users=["bob", "carol"], title="secret 2")
        await server.publish(user="alice.bob", title="similar name")  # not a prefix match
        [mine] = await server.publish(user="alice", title="mine")
        [n] = await alice.notifications(1)
    assert n["id"] == mine and n["title"] == "mine"


async def test_broadcast_reaches_everyone(ws_server: ServerProcess) -> None:
    server = ws_server
    users = ["u1", "u2", "u3"]
    async with open_sse(server, server.token("u1")) as a, open_sse(server, server.token("u2")) as b, \
            open_ws(server, server.token("u3")) as w:
        [bid] = await server.publish(broadcast=True, title="everyone", priority="high")
        for s, user in zip((a, b), users):
            [n] = await s.notifications(1)
            assert n["id"] == bid and n["user"] is None and n["priority"] == "high"
        frame = await w.recv()
        assert frame["type"] == "notification" and frame["id"] == bid and frame["user"] is None


async def test_client_disconnect_mid_stream_does_not_break_the_server(ws_server: ServerProcess) -> None:
    server = ws_server
    tok = server.token("alice")
    async with server.client() as c:
        # Several clients go away abruptly while notifications are flowing to them.
        for _ in range(3):
            async with open_sse(server, tok) as s, open_ws(server, tok) as w:
                await wait_for_metric(server, lambda m: m[OPEN_SSE] == 1 and m[OPEN_WS] == 1)
                publishing = asyncio.gather(*[server.publish(c, user="alice", title="x", body="y" * 2000)
                                              for _ in range(20)])
                await s.notifications(1)
                await w.notifications(1)
                w.ws.transport.abort()  # no close handshake
            # the SSE response was closed mid-stream by leaving the context
            await publishing
        await wait_for_metric(server, lambda m: m[OPEN_SSE] == 0 and m[OPEN_WS] == 0)
        [nid] = await server.publish(c, user="alice", title="still works")
    async with open_sse(server, tok, query="last_event_id=0") as s:
        got = await s.notifications(61)
    assert got[-1]["id"] == nid
    assert server.running


async def test_token_expiry_warns_at_once_then_ends_the_stream(server: ServerProcess) -> None:
    token = server.token("alice", ttl=3)
    expires_at = server.signer.verify_subscriber(token).expires_at
    assert expires_at is not None
    async with open_sse(server, token) as stream:
        event = await stream.next(timeout=2)  # at once: less than a minute remains
        assert (event.event, event.id) == ("token-expiring", None)
        assert event.json() == {"expires_at": iso_ms(int(expires_at * 1000))}
        assert ISO_MS.match(event.json()["expires_at"])
        # Still live until expiry.
        [nid] = await server.publish(user="alice", title="before expiry")
        [n] = await stream.notifications(1)
        assert n["id"] == nid
        with pytest.raises(EOFError):
            await stream.next(timeout=6)
        ended = time.time()
    assert expires_at - 0.1 <= ended <= expires_at + 2.0

