"""Replay after a dropped connection, end to end: where the cursor comes from, invalid
cursors, whole-history replay, ordering, topics, offline users, retention resets and
durability across SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import quote

import httpx

from ..helpers import ServerProcess, SSEStream, open_sse
from .wsclient import Publisher, auth_headers


async def _publish_for_alice(server: ServerProcess) -> list[int]:
    """alice, broadcast, bob, alice(topic a), broadcast(topic b), alice: returns all ids."""
    async with server.client() as c:
        ids = []
        for body in ({"user": "alice"}, {"broadcast": True}, {"user": "bob"},
                     {"user": "alice", "topic": "a"}, {"broadcast": True, "topic": "b"},
                     {"user": "alice"}):
            ids += await server.publish(c, title="n", **body)
    return ids


async def _expect_then_live(server: ServerProcess, stream: SSEStream, expected: list[int],
                            user: str = "alice") -> None:
    """``expected`` replayed in this order, then a fresh notification as the very next one
    (so nothing else was replayed, and the stream went on live)."""
    got = [n["id"] for n in await stream.notifications(len(expected))]
    assert got == expected
    [live] = await server.publish(user=user, title="live")
    [n] = await stream.notifications(1)
    assert n["id"] == live


async def test_cursor_from_header(server: ServerProcess) -> None:
    ids = await _publish_for_alice(server)
    alice = [ids[0], ids[1], ids[3], ids[4], ids[5]]
    async with open_sse(server, server.token("alice"), headers={"Last-Event-ID": str(ids[1])}) as s:
        assert s.hello.json() == {"user": "alice", "newest_id": ids[5], "unread": 5, "replay": "resumed"}
        await _expect_then_live(server, s, alice[2:])


async def test_cursor_from_query(server: ServerProcess) -> None:
    ids = await _publish_for_alice(server)
    async with open_sse(server, server.token("alice"), query=f"last_event_id={ids[3]}") as s:
        assert s.hello.json()["replay"] == "resumed"
        await _expect_then_live(server, s, [ids[4], ids[5]])


async def test_header_cursor_wins_over_query(server: ServerProcess) -> None:
    ids = await _publish_for_alice(server)
    async with open_sse(server, server.token("alice"), query=f"last_event_id={ids[0]}",
                        headers={"Last-Event-ID": str(ids[3])}) as s:
        assert s.hello.json()["replay"] == "resumed"
        await _expect_then_live(server, s, [ids[4], ids[5]])
    # and the other way round (the live one published above is replayed too)
    expected = [i for i in await _visible(server, "alice") if i > ids[0]]
    async with open_sse(server, server.token("alice"), query=f"last_event_id={ids[3]}",
                        headers={"Last-Event-ID": str(ids[0])}) as s:
        await _expect_then_live(server, s, expected)


INVALID_CURSORS = ["abc", "-1", "1" * 19, "", "1.5", "0x10", "+3", "1 2", "\u0661\u0662"]  # last: Arabic-Indic digits
#: Whitespace around digits is not part of a valid cursor either. Only the query string can
#: carry it: HTTP drops whitespace around a header value (RFC 9110 5.5), so the header
#: ``Last-Event-ID:  5`` arrives as ``5`` and is a valid cursor.
SPACED_CURSORS = [" 5", "5 ", "\t5", " 5 ", "5\n"]


async def test_invalid_cursors_are_ignored_and_start_live(server: ServerProcess) -> None:
    await _publish_for_alice(server)
    tok = server.token("alice")
    async with server.client() as c:
        for cursor in INVALID_CURSORS:
            carriers = [{"query": "last_event_id=" + quote(cursor)}]
            if cursor.isascii():  # a header value must be ASCII on the wire
                carriers.append({"headers": {"Last-Event-ID": cursor}})
            for kwargs in carriers:
                async with open_sse(server, tok, client=c, **kwargs) as s:  # type: ignore[arg-type]
                    assert s.response.status_code == 200, kwargs
                    assert s.hello.json()["replay"] == "live", kwargs
                    await _expect_then_live(server, s, [])


async def test_cursors_with_whitespace_in_the_query_are_ignored_and_start_live(server: ServerProcess) -> None:
    ids = await _publish_for_alice(server)
    async with server.client() as c:
        for cursor in SPACED_CURSORS:
            query = "last_event_id=" + quote(cursor.replace("5", str(ids[0])))  # ?last_event_id=%201...
            async with open_sse(server, server.token("alice"), client=c, query=query) as s:
                assert s.hello.json()["replay"] == "live", repr(cursor)
                await _expect_then_live(server, s, [])


async def test_cursor_zero_replays_the_whole_history(server: ServerProcess) -> None:
    ids = await _publish_for_alice(server)
    async with open_sse(server, server.token("alice"), query="last_event_id=0") as s:
        assert s.hello.json()["replay"] == "resumed"
        await _expect_then_live(server, s, [ids[0], ids[1], ids[3], ids[4], ids[5]])
    async with open_sse(server, server.token("bob"), headers={"Last-Event-ID": "0"}) as s:
        await _expect_then_live(server, s, [ids[1], ids[2], ids[4]], user="bob")


async def test_replay_is_in_increasing_order_across_pages(server: ServerProcess) -> None:
    """More than one replay page (1000) of interleaved own/broadcast/foreign ids."""
    kinds = [{"user": "alice"}, {"broadcast": True}, {"user": "alice"}, {"user": "bob"}] * 4
    async with server.client() as c:
        sem = asyncio.Semaphore(8)
        publish = Publisher(server, c)

        async def one(i: int) -> list[int]:
            async with sem:
                return await publish(title=f"n{i}", **kinds[i % len(kinds)])

        results = await asyncio.gather(*[one(i) for i in range(1360)])
    visible = sorted(nid for i, ids in enumerate(results) if "bob" not in kinds[i % 16].values() for nid in ids)
    assert len(visible) == 1020
    async with open_sse(server, server.token("alice"), query="last_event_id=0") as s:
        await _expect_then_live(server, s, visible)
    visible = await _visible(server, "alice")  # now with the live one
    async with open_sse(server, server.token("alice"), headers={"Last-Event-ID": str(visible[15])}) as s:
        await _expect_then_live(server, s, visible[16:])


async def test_topics_filter_applies_to_replay(server: ServerProcess) -> None:
    ids = await _publish_for_alice(server)
    async with open_sse(server, server.token("alice"), query="last_event_id=0&topics=a") as s:
        assert s.hello.json()["replay"] == "resumed"
        assert [n["id"] for n in await s.notifications(1)] == [ids[3]]
        [live] = await server.publish(user="alice", title="live", topic="a")
        assert [n["id"] for n in await s.notifications(1)] == [live]
    async with open_sse(server, server.token("alice"), query=f"last_event_id={ids[0]}&topics=b,zz") as s:
        assert [n["id"] for n in await s.notifications(1)] == [ids[4]]


async def test_offline_user_gets_missed_notifications_at_next_connect(server: ServerProcess) -> None:
    tok = server.token("carol")
    async with open_sse(server, tok) as s:
        [first] = await server.publish(user="carol", title="while online")
        assert [n["id"] for n in await s.notifications(1)] == [first]
    # carol is offline now
    async with server.client() as c:
        missed = await server.publish(c, user="carol", title="missed 1")
        missed += await server.publish(c, broadcast=True, title="missed 2")
        missed += await server.publish(c, users=["dave", "carol"], title="missed 3")
    missed = [missed[0], missed[1], missed[3]]
    async with open_sse(server, tok, headers={"Last-Event-ID": str(first)}) as s:
        assert s.hello.json() == {"user": "carol", "newest_id": missed[-1], "unread": 4, "replay": "resumed"}
        await _expect_then_live(server, s, missed, user="carol")
    async with server.client() as c:
        resp = await c.get("/notifications", headers=auth_headers(tok))
    assert {n["id"] for n in resp.json()["notifications"]} >= {first, *missed}


async def test_retention_reset(make_server: Callable[..., ServerProcess]) -> None:
    retention = 2.0
    server = make_server("--retention", f"{int(retention)}s")
    async with server.client() as c:
        old = []
        for body in ({"user": "alice"}, {"broadcast": True}, {"user": "alice"}):
            old += await server.publish(c, title="old", **body)
        resp = await c.get("/notifications", headers=auth_headers(server.token("alice")))
    created = max(_epoch(n["created_at"]) for n in resp.json()["notifications"])
    server.stop()
    # The only thing to wait for here is the clock: the notifications must be older than
    # the retention when the server prunes at start.
    await asyncio.sleep(max(0.0, created + retention + 0.05 - time.time()))
    server.start()
    async with server.client() as c:
        fresh = await server.publish(c, user="alice", title="fresh")
        fresh += await server.publish(c, broadcast=True, title="fresh all")
        resp = await c.get("/notifications", headers=auth_headers(server.token("alice")))
        assert [n["id"] for n in resp.json()["notifications"]] == fresh[::-1]  # old ones gone
    for cursor in (old[0], 0):
        async with open_sse(server, server.token("alice"), headers={"Last-Event-ID": str(cursor)}) as s:
            assert s.hello.json()["replay"] == "reset", cursor
            assert [n["id"] for n in await s.notifications(2)] == fresh


def _epoch(iso: str) -> float:
    from datetime import datetime
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


async def _visible(server: ServerProcess, user: str) -> list[int]:
    """Every id ``user`` can see, ascending (from history, page by page)."""
    ids: list[int] = []
    before = ""
    async with server.client() as c:
        while True:
            resp = await c.get(f"/notifications?limit=200{before}", headers=auth_headers(server.token(user)))
            assert resp.status_code == 200
            page = resp.json()
            ids += [n["id"] for n in page["notifications"]]
            if page["next_before"] is None:
                return sorted(ids)
            before = f"&before={page['next_before']}"


async def test_cursor_beyond_any_issued_id_is_reset(server: ServerProcess) -> None:
    async with open_sse(server, server.token("alice"), query="last_event_id=5") as s:
        assert s.hello.json() == {"user": "alice", "newest_id": 0, "unread": 0, "replay": "reset"}
        await _expect_then_live(server, s, [])
    ids = await _publish_for_alice(server)
    for cursor in (str(ids[-1] + 1), "999999999999999999"):
        visible = await _visible(server, "alice")
        async with open_sse(server, server.token("alice"), headers={"Last-Event-ID": cursor}) as s:
            assert s.hello.json()["replay"] == "reset", cursor
            await _expect_then_live(server, s, visible)


async def test_every_acknowledged_id_survives_sigkill(server: ServerProcess) -> None:
    acked: list[int] = []
    failures: list[BaseException] = []
    enough = asyncio.Event()

    async def publisher(n: int) -> None:
        async with server.client() as c:
            while True:
                body = {"user": "alice"} if n % 2 else {"broadcast": True}
                try:
                    resp = await c.post("/notifications", json={"title": f"p{n}", **body},
                                        headers=auth_headers(server.publisher_token()))
                except httpx.HTTPError as exc:
                    failures.append(exc)
                    return
                if resp.status_code != 201:
                    failures.append(AssertionError(resp.text))
                    return
                acked.extend(resp.json()["ids"])
                if len(acked) >= 150:
                    enough.set()

    tasks = [asyncio.create_task(publisher(n)) for n in range(6)]
    await asyncio.wait_for(enough.wait(), 20)
    await asyncio.to_thread(server.kill)  # while the publishers are still going
    await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert failures and all(isinstance(f, httpx.HTTPError) for f in failures), failures
    snapshot = sorted(acked)
    server.start()
    async with open_sse(server, server.token("alice"), query="last_event_id=0") as s:
        newest = s.hello.json()["newest_id"]
        assert newest >= snapshot[-1]
        got: list[int] = []
        while not got or got[-1] < newest:  # everything here is visible to alice
            got += [n["id"] for n in await s.notifications(1)]
    assert got == sorted(set(got))
    # Every 201'd id is there; ids committed but not yet answered when killed may be too.
    assert set(snapshot) <= set(got)
    assert server.running
