"""``GET /presence`` on one node (SQLite), against the real server: a user's SSE streams and
WebSockets are counted while open and within 2 seconds of opening; when the last one
closes the user is offline with ``last_seen`` the time it closed; a node stopped cleanly
leaves its users offline at once, one SIGKILLed stops counting after
``SSE_NOTIFY_PRESENCE_TTL``; bad requests get the contract's 422 and 401.

(Several nodes on PostgreSQL: ``test_presence_postgres.py``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
import pytest

from ..helpers import ISO_MS, ServerProcess, assert_error, open_sse, poll, uid
from .wsclient import WS_SERVER_FLAGS, auth_headers, open_ws

pytestmark = pytest.mark.timeout(60)

#: The contract: a stream opened or closed anywhere shows within this many seconds.
ACCURACY = 2.0


async def presence(server: ServerProcess, *users: str, client: httpx.AsyncClient | None = None) -> dict[str, Any]:
    async with server.client() as c:
        resp = await (client or c).get("/presence", params=[("user", u) for u in users],
                                       headers=auth_headers(server.publisher_token()))
    assert resp.status_code == 200, resp.text
    return resp.json()["users"]


async def wait_for(server: ServerProcess, user: str, streams: int, timeout: float = ACCURACY) -> dict[str, Any]:
    """Poll until ``user`` has ``streams`` open streams (with a deadline); the last answer."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        seen.update((await presence(server, user))[user])
        return seen["streams"] == streams

    assert await poll(check, timeout), f"{user}: {seen} after {timeout} s, wanted {streams} streams"
    return seen


def epoch_ms(text: str) -> int:
    assert ISO_MS.match(text), text
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture
def server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server(*WS_SERVER_FLAGS)


async def test_sse_and_websocket_streams_are_counted_and_last_seen_set_when_the_last_closes(
        server: ServerProcess) -> None:
    user, other = uid("alice"), uid("bob")
    assert await presence(server, user, other) == {
        user: {"online": False, "streams": 0, "last_seen": None},
        other: {"online": False, "streams": 0, "last_seen": None}}
    async with open_sse(server, server.token(user)):
        assert await wait_for(server, user, 1) == {"online": True, "streams": 1, "last_seen": None}
        async with open_ws(server, server.token(user)):
            assert await wait_for(server, user, 2) == {"online": True, "streams": 2, "last_seen": None}
            assert (await presence(server, other))[other]["streams"] == 0  # only that user's
        assert await wait_for(server, user, 1) == {"online": True, "streams": 1, "last_seen": None}
        closed_after = int(time.time() * 1000)
    answer = await wait_for(server, user, 0)
    assert answer["online"] is False and answer["last_seen"] is not None
    # When the stream closed: noticed within a second (a heartbeat), and ms are kept.
    assert closed_after - 10 <= epoch_ms(answer["last_seen"]) <= int(time.time() * 1000)
    async with open_sse(server, server.token(user)):  # online again: no last_seen while online
        assert await wait_for(server, user, 1) == {"online": True, "streams": 1, "last_seen": None}


async def test_users_are_answered_once_each_in_the_order_asked(server: ServerProcess) -> None:
    users = [uid(f"u{i}") for i in range(100)]
    asked = [users[1], users[0], users[1], *users[2:]]  # a repeat counts once
    answer = await presence(server, *asked)
    assert list(answer) == [users[1], users[0], *users[2:]]


async def test_bad_requests_get_the_contract_errors(server: ServerProcess) -> None:
    pub = auth_headers(server.publisher_token())
    async with server.client() as c:
        for params in ([], [("user", "not a name")], [("user", "")], [("user", "x" * 129)],
                       [("user", f"u{i}") for i in range(101)], [("user", "ok"), ("user", "bad/name")]):
            body = assert_error(await c.get("/presence", params=params, headers=pub), 422)
            assert body["error"] == "validation_error"
        for headers in ({}, auth_headers(server.token("alice")), {"Authorization": "Bearer nonsense"}):
            body = assert_error(await c.get("/presence", params={"user": "alice"}, headers=headers), 401)
            assert body["error"] == "unauthorized"
        assert_error(await c.post("/presence", params={"user": "alice"}, headers=pub), 405)


async def test_a_clean_shutdown_leaves_its_users_offline_at_once(server: ServerProcess) -> None:
    user = uid("carol")
    async with open_sse(server, server.token(user)) as stream:
        await wait_for(server, user, 1)
        stopped_at = int(time.time() * 1000)
        assert server.stop() == 0
        with pytest.raises((EOFError, httpx.HTTPError)):
            await stream.next(timeout=5)
    server.start()
    answer = (await presence(server, user))[user]  # at once: no waiting for any expiry
    assert answer["online"] is False
    assert stopped_at <= epoch_ms(answer["last_seen"]) <= int(time.time() * 1000)


async def test_a_killed_node_stops_counting_after_the_presence_ttl(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"SSE_NOTIFY_PRESENCE_TTL": "3"})
    user = uid("dave")
    async with open_sse(server, server.token(user)) as stream:
        await wait_for(server, user, 1)
        server.kill()
        killed_at, killed = int(time.time() * 1000), time.monotonic()
        with pytest.raises((EOFError, httpx.HTTPError)):
            await stream.next(timeout=5)
    server.start()  # a new node: the killed one's count stays until its heartbeat is 3 s old
    answer = await wait_for(server, user, 0, timeout=killed + 3 + ACCURACY - time.monotonic())
    # Last seen: the killed node's last heartbeat, at most a second before it died.
    assert killed_at - 1500 <= epoch_ms(answer["last_seen"]) <= killed_at
