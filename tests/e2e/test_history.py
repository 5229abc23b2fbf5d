"""History (``GET /notifications``), read state, and where a subscriber token may travel.

A module-wide server serves the tests that only touch their own fresh user ids; tests
whose exact expectations include broadcasts (which every user sees) get a server of their
own. Every request uses a fresh connection (``req``): after an answer sent before the
request body was read, Hypercorn drops the keep-alive connection, and reusing it races
with that close.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from ..helpers import NOTIFICATION_KEYS, ServerProcess, assert_error, open_sse, uid



async def req(server: ServerProcess, method: str, path: str, *, user: str | None = None,
              json: Any = None, headers: dict[str, str] | None = None,
              cookies: dict[str, str] | None = None) -> httpx.Response:
    """One request on a fresh connection; ``user`` adds a bearer subscriber token."""
    headers = dict(headers or {})
    if user is not None:
        headers["Authorization"] = f"Bearer {server.token(user)}"
    async with server.client(cookies=cookies) as c:
        return await c.request(method, path, headers=headers,
                               content=None if json is None else orjson.dumps(json))


async def page(server: ServerProcess, user: str, query: str = "") -> dict[str, Any]:
    resp = await req(server, "GET", "/notifications" + (f"?{query}" if query else ""), user=user)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"notifications", "next_before"}
    return body


def ids_of(body: dict[str, Any]) -> list[int]:
    return [n["id"] for n in body["notifications"]]


async def publish_n(server: ServerProcess, user: str, n: int) -> list[int]:
    """``n`` notifications for ``user``, published one after another; ids ascending."""
    ids: list[int] = []
    async with server.client() as c:
        for i in range(n):
            ids += await server.publish(c, user=user, title=f"n{i}")
    return ids


async def mark_read(server: ServerProcess, user: str, body: Any) -> int:
    resp = await req(server, "POST", "/notifications/read", user=user, json=body)
    assert resp.status_code == 200, resp.text
    assert set(resp.json()) == {"updated"}
    return resp.json()["updated"]


# -- listing -------------------------------------------------------------------------------

async def test_history_is_newest_first_own_plus_broadcasts_only(server: ServerProcess) -> None:
    async with server.client() as c:
        [a1] = await server.publish(c, user="alice", title="a1")
        [b1] = await server.publish(c, user="bob", title="b1")
        [all1] = await server.publish(c, broadcast=True, title="everyone")
        [a2] = await server.publish(c, user="alice", title="a2", topic="chat")
        [b2] = await server.publish(c, user="bob", title="b2")
    alice = await page(server, "alice")
    assert ids_of(alice) == [a2, all1, a1] and alice["next_before"] is None
    assert ids_of(await page(server, "bob")) == [b2, all1, b1]
    assert ids_of(await page(server, "carol")) == [all1]
    for item in alice["notifications"]:
        assert set(item) == NOTIFICATION_KEYS and item["read"] is False
    assert [n["user"] for n in alice["notifications"]] == ["alice", None, "alice"]
    assert alice["notifications"][0]["topic"] == "chat"


async def test_read_flags_and_per_user_read_state_of_broadcasts(server: ServerProcess) -> None:
    async with server.client() as c:
        [a1] = await server.publish(c, user="alice", title="a1")
        [bc] = await server.publish(c, broadcast=True, title="everyone")
        [a2] = await server.publish(c, user="alice", title="a2")
    assert (await req(server, "POST", f"/notifications/{a1}/read", user="alice")).status_code == 204
    assert (await req(server, "POST", f"/notifications/{bc}/read", user="alice")).status_code == 204
    alice = await page(server, "alice")
    assert [(n["id"], n["read"]) for n in alice["notifications"]] == [(a2, False), (bc, True), (a1, True)]
    # alice reading the broadcast did not read it for bob
    bob = await page(server, "bob")
    assert [(n["id"], n["read"]) for n in bob["notifications"]] == [(bc, False)]
    assert ids_of(await page(server, "bob", "unread=true")) == [bc]
    assert ids_of(await page(server, "alice", "unread=true")) == [a2]
    # and bob marking all read marks only his own view
    assert await mark_read(server, "bob", {"all": True}) == 1
    assert ids_of(await page(server, "carol", "unread=true")) == [bc]
    assert ids_of(await page(server, "alice", "unread=false")) == [bc, a1]


async def test_unread_filter_and_empty_history(shared: ServerProcess) -> None:
    user = uid()
    assert await page(shared, user) == {"notifications": [], "next_before": None}
    ids = await publish_n(shared, user, 4)
    await mark_read(shared, user, {"ids": [ids[1], ids[3]]})
    assert ids_of(await page(shared, user, "unread=true")) == [ids[2], ids[0]]
    assert ids_of(await page(shared, user, "unread=false")) == [ids[3], ids[1]]
    assert ids_of(await page(shared, user)) == ids[::-1]
    assert all(n["read"] is False for n in (await page(shared, user, "unread=true"))["notifications"])
    assert all(n["read"] is True for n in (await page(shared, user, "unread=false"))["notifications"])


# -- limit, before, next_before --------------------------------------------------------------

@pytest.fixture(scope="module")
def many(shared: ServerProcess) -> tuple[str, list[int]]:
    """One user with 55 notifications (ids ascending)."""
    user = uid("many")
    ids: list[int] = []
    with httpx.Client(base_url=shared.url, timeout=10) as c:
        for i in range(55):
            resp = c.post("/notifications", content=orjson.dumps({"user": user, "title": f"n{i}"}),
                          headers={"Authorization": f"Bearer {shared.publisher_token()}"})
            assert resp.status_code == 201
            ids += resp.json()["ids"]
    return user, ids


async def test_limit_defaults_to_50(shared: ServerProcess, many: tuple[str, list[int]]) -> None:
    user, ids = many
    body = await page(shared, user)
    assert ids_of(body) == ids[::-1][:50]
    assert body["next_before"] == ids[5]


@pytest.mark.parametrize("limit, expected", [(1, 1), (54, 54), (55, 55), (200, 55)])
async def test_limit_in_range(shared: ServerProcess, many: tuple[str, list[int]], limit: int, expected: int) -> None:
    user, ids = many
    body = await page(shared, user, f"limit={limit}")
    assert ids_of(body) == ids[::-1][:expected]
    # next_before is null exactly when nothing older matches
    assert body["next_before"] == (None if expected == len(ids) else ids[::-1][expected - 1])


async def test_before_is_exclusive(shared: ServerProcess, many: tuple[str, list[int]]) -> None:
    user, ids = many
    body = await page(shared, user, f"before={ids[30]}&limit=5")
    assert ids_of(body) == [ids[29], ids[28], ids[27], ids[26], ids[25]]
    assert body["next_before"] == ids[25]
    # before the oldest: nothing, and nothing older
    assert await page(shared, user, f"before={ids[0]}") == {"notifications": [], "next_before": None}
    # a before beyond the newest id behaves like no before
    assert ids_of(await page(shared, user, f"before={ids[-1] + 1000}&limit=3")) == ids[::-1][:3]


@pytest.mark.parametrize("before", ["0", "-5"])
async def test_before_zero_or_negative_is_an_empty_page(shared: ServerProcess, many: tuple[str, list[int]],
                                                        before: str) -> None:
    user, _ = many
    assert await page(shared, user, f"before={before}") == {"notifications": [], "next_before": None}


async def test_paging_with_next_before_walks_everything_once(shared: ServerProcess,
                                                             many: tuple[str, list[int]]) -> None:
    user, ids = many
    seen: list[int] = []
    query = "limit=7"
    pages = 0
    while True:
        body = await page(shared, user, query)
        pages += 1
        seen += ids_of(body)
        if body["next_before"] is None:
            break
        assert body["next_before"] == ids_of(body)[-1]
        query = f"limit=7&before={body['next_before']}"
    assert seen == ids[::-1]
    assert pages == 8  # 55 = 7 * 7 + 6: the last page is short and says so


async def test_next_before_is_null_when_exactly_limit_items_remain(shared: ServerProcess) -> None:
    user = uid()
    ids = await publish_n(shared, user, 5)
    body = await page(shared, user, "limit=5")
    assert ids_of(body) == ids[::-1] and body["next_before"] is None
    body = await page(shared, user, "limit=4")
    assert ids_of(body) == ids[:0:-1] and body["next_before"] == ids[1]
    body = await page(shared, user, f"limit=1&before={ids[1]}")
    assert ids_of(body) == [ids[0]] and body["next_before"] is None
    body = await page(shared, user, f"limit=2&before={ids[2]}")
    assert ids_of(body) == [ids[1], ids[0]] and body["next_before"] is None


async def test_next_before_counts_only_matching_notifications(shared: ServerProcess) -> None:
    user = uid()
    n = await publish_n(shared, user, 6)
    await mark_read(shared, user, {"ids": [n[0], n[1]]})  # the two oldest are read
    # four unread, and older notifications exist but none of them is unread
    body = await page(shared, user, "unread=true&limit=4")
    assert ids_of(body) == [n[5], n[4], n[3], n[2]] and body["next_before"] is None
    body = await page(shared, user, "unread=true&limit=3")
    assert ids_of(body) == [n[5], n[4], n[3]] and body["next_before"] == n[3]
    body = await page(shared, user, f"unread=true&before={n[3]}")
    assert ids_of(body) == [n[2]] and body["next_before"] is None
    body = await page(shared, user, "unread=false&limit=2")
    assert ids_of(body) == [n[1], n[0]] and body["next_before"] is None
    await mark_read(shared, user, {"ids": [n[5]]})
    body = await page(shared, user, "unread=false&limit=1")
    assert ids_of(body) == [n[5]] and body["next_before"] == n[5]
    body = await page(shared, user, f"unread=false&limit=2&before={n[5]}")
    assert ids_of(body) == [n[1], n[0]] and body["next_before"] is None


@pytest.mark.parametrize("query", [
    "limit=0", "limit=201", "limit=-1", "limit=abc", "limit=1.5", "limit=1e2", "limit=",
    "limit=99999999999999999999999",
    "before=abc", "before=1.5", "before=", "before=0x10", "before=1e3",
    "unread=yes", "unread=1", "unread=0", "unread=True", "unread=TRUE", "unread=",
])
async def test_bad_query_parameters_are_422(shared: ServerProcess, query: str) -> None:
    resp = await req(shared, "GET", f"/notifications?{query}", user=uid())
    assert_error(resp, 422)


async def test_huge_before_is_not_a_server_error(shared: ServerProcess, many: tuple[str, list[int]]) -> None:
    user, ids = many
    resp = await req(shared, "GET", "/notifications?limit=2&before=" + "9" * 30, user=user)
    # an integer, just a large one: either every notification is older, or it is refused
    if resp.status_code == 200:
        assert ids_of(resp.json()) == ids[::-1][:2]
    else:
        assert_error(resp, 422)


async def test_history_requires_a_subscriber_token(shared: ServerProcess) -> None:
    assert_error(await req(shared, "GET", "/notifications"), 401)
    assert_error(await req(shared, "GET", "/notifications",
                           headers={"Authorization": f"Bearer {shared.publisher_token()}"}), 401)


# -- mark read -------------------------------------------------------------------------------

async def test_mark_one_read_is_204_and_idempotent(shared: ServerProcess) -> None:
    user = uid()
    ids = await publish_n(shared, user, 2)
    resp = await req(shared, "POST", f"/notifications/{ids[0]}/read", user=user)
    assert resp.status_code == 204 and resp.content == b""
    assert [n["read"] for n in (await page(shared, user))["notifications"]] == [False, True]
    again = await req(shared, "POST", f"/notifications/{ids[0]}/read", user=user)
    assert again.status_code == 204
    assert [n["read"] for n in (await page(shared, user))["notifications"]] == [False, True]


async def test_mark_one_read_of_someone_elses_or_unknown_id_is_404(shared: ServerProcess) -> None:
    alice, bob = uid(), uid()
    [theirs] = await publish_n(shared, alice, 1)
    resp = await req(shared, "POST", f"/notifications/{theirs}/read", user=bob)
    assert_error(resp, 404)
    assert (await page(shared, alice))["notifications"][0]["read"] is False
    for nid in (theirs + 10**9, 0, 10**30):
        assert_error(await req(shared, "POST", f"/notifications/{nid}/read", user=alice), 404)
    # not an id at all: no such path, still the JSON error
    assert_error(await req(shared, "POST", "/notifications/abc/read", user=alice), 404)


async def test_mark_one_read_requires_a_subscriber_token(shared: ServerProcess) -> None:
    user = uid()
    [nid] = await publish_n(shared, user, 1)
    assert_error(await req(shared, "POST", f"/notifications/{nid}/read"), 401)
    assert_error(await req(shared, "POST", f"/notifications/{nid}/read",
                           headers={"Authorization": f"Bearer {shared.publisher_token()}"}), 401)
    assert (await page(shared, user))["notifications"][0]["read"] is False


async def test_mark_many_counts_only_changed_and_ignores_invisible(shared: ServerProcess) -> None:
    alice, bob = uid(), uid()
    a = await publish_n(shared, alice, 4)
    [b] = await publish_n(shared, bob, 1)
    assert await mark_read(shared, alice, {"ids": [a[0], a[1]]}) == 2
    assert await mark_read(shared, alice, {"ids": [a[0], a[1], a[2]]}) == 1
    assert await mark_read(shared, alice, {"ids": [a[3], a[3]]}) == 1  # a duplicate changes once
    assert await mark_read(shared, alice, {"ids": [a[3]]}) == 0
    # ids alice cannot see are ignored, and stay unread for their owner
    assert await mark_read(shared, alice, {"ids": [b, a[-1] + 10**9]}) == 0
    assert (await page(shared, bob))["notifications"][0]["read"] is False
    assert ids_of(await page(shared, alice, "unread=false")) == a[::-1]


async def test_mark_all_read(shared: ServerProcess) -> None:
    alice, bob = uid(), uid()
    a = await publish_n(shared, alice, 3)
    [b] = await publish_n(shared, bob, 1)
    await mark_read(shared, alice, {"ids": [a[1]]})
    assert await mark_read(shared, alice, {"all": True}) == 2
    assert await mark_read(shared, alice, {"all": True}) == 0
    assert ids_of(await page(shared, alice, "unread=true")) == []
    assert ids_of(await page(shared, bob, "unread=true")) == [b]


@pytest.mark.parametrize("body", [
    {}, {"ids": "1"}, {"ids": ["1"]}, {"ids": [1.5]}, {"ids": None}, {"all": "true"},
    [1, 2], "all",
])
async def test_mark_many_bad_bodies_are_422(shared: ServerProcess, body: Any) -> None:
    user = uid()
    [nid] = await publish_n(shared, user, 1)
    if isinstance(body, dict) and body.get("ids") == ["1"]:
        body = {"ids": [str(nid)]}
    assert_error(await req(shared, "POST", "/notifications/read", user=user, json=body), 422)
    assert ids_of(await page(shared, user, "unread=true")) == [nid]


async def test_mark_many_malformed_json_is_400_and_token_required(shared: ServerProcess) -> None:
    user = uid()
    async with shared.client() as c:
        resp = await c.post("/notifications/read", content=b"{ids:",
                            headers={"Authorization": f"Bearer {shared.token(user)}"})
    assert_error(resp, 400)
    assert_error(await req(shared, "POST", "/notifications/read", json={"all": True}), 401)


# -- subscriber token carriers -----------------------------------------------------------------

async def test_each_carrier_works_alone(shared: ServerProcess) -> None:
    user = uid()
    [nid] = await publish_n(shared, user, 1)
    token = shared.token(user)
    by_header = await req(shared, "GET", "/notifications", headers={"Authorization": f"Bearer {token}"})
    by_query = await req(shared, "GET", f"/notifications?token={token}")
    by_cookie = await req(shared, "GET", "/notifications", cookies={"sse_notify_token": token})
    for resp in (by_header, by_query, by_cookie):
        assert resp.status_code == 200, resp.text
        assert ids_of(resp.json()) == [nid]
    # the bearer scheme name is case-insensitive
    assert (await req(shared, "GET", "/notifications", headers={"Authorization": f"bearer {token}"})).status_code == 200


def _carriers(server: ServerProcess, header: str | None, query: str | None,
              cookie: str | None) -> dict[str, Any]:
    return {
        "path": "/notifications" + (f"?token={query}" if query is not None else ""),
        "headers": {"Authorization": header} if header is not None else {},
        "cookies": {"sse_notify_token": cookie} if cookie is not None else None,
    }


@pytest.mark.parametrize("header, query, cookie, who", [
    ("Bearer {alice}", "{bob}", "{carol}", "alice"),   # header first
    ("Bearer {alice}", "bad", "bad", "alice"),
    (None, "{bob}", "{carol}", "bob"),                 # then query
    (None, "{bob}", "bad", "bob"),
    (None, None, "{carol}", "carol"),                  # then cookie
    ("Bearer bad", "{bob}", "{carol}", None),          # a bad header is not skipped
    ("Basic {alice}", "{bob}", None, None),            # a non-bearer header is still the carrier
    ("Bearer", "{bob}", None, None),
    (None, "bad", "{carol}", None),                    # a bad query is not skipped
    (None, "", "{carol}", None),                       # an empty ?token= is present, and bad
    (None, "{publisher}", "{carol}", None),
    (None, None, "bad", None),
])
async def test_the_first_carrier_present_is_the_one_used(shared: ServerProcess, header: str | None,
                                                         query: str | None, cookie: str | None,
                                                         who: str | None) -> None:
    users = {name: uid(name) for name in ("alice", "bob", "carol")}
    expected = {name: await publish_n(shared, user, 1) for name, user in users.items()}
    tokens = {name: shared.token(user) for name, user in users.items()}
    tokens["publisher"] = shared.publisher_token()
    fill = (lambda v: None if v is None else v.format(**tokens))
    spec = _carriers(shared, fill(header), fill(query), fill(cookie))
    resp = await req(shared, "GET", spec["path"], headers=spec["headers"], cookies=spec["cookies"])
    if who is None:
        assert_error(resp, 401)
    else:
        assert resp.status_code == 200, resp.text
        assert ids_of(resp.json()) == expected[who]


async def test_carrier_precedence_applies_to_events_too(shared: ServerProcess) -> None:
    alice, bob = uid(), uid()
    # a bad header wins over a good query token: 401 with the JSON error
    async with open_sse(shared, shared.token(bob), headers={"Authorization": "Bearer bad"}) as stream:
        resp = stream.response
        await resp.aread()
        assert_error(resp, 401)
    # a good header wins over a bad query token
    async with open_sse(shared, "bad", headers={"Authorization": f"Bearer {shared.token(alice)}"}) as stream:
        assert stream.response.status_code == 200
        assert stream.hello.json()["user"] == alice
    # the cookie alone opens a stream
    async with shared.client(cookies={"sse_notify_token": shared.token(bob)}) as c:
        async with open_sse(shared, client=c) as stream:
            assert stream.response.status_code == 200
            assert stream.hello.json()["user"] == bob


async def test_read_state_survives_a_restart(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    user = uid()
    ids = await publish_n(server, user, 3)
    await mark_read(server, user, {"ids": [ids[0]]})
    await asyncio.to_thread(server.restart)
    body = await page(server, user)
    assert [(n["id"], n["read"]) for n in body["notifications"]] == [(ids[2], False), (ids[1], False), (ids[0], True)]
