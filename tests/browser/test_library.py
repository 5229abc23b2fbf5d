"""static/sse-notify.js in a real Chromium against the real server: live delivery, one
stream for many tabs, resume after reload and restart, proxy errors, token refresh, the
WebSocket fallbacks and the HTTP helpers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..helpers import ServerProcess
from .support import (
    SESSION_LOOP, ConsoleLog, FlakyProxy, eventually, metrics, open_harness, open_streams, received,
    start_client, statuses, wait_ids, wait_opens, wait_state, wait_streams,
)

pytestmark = SESSION_LOOP

FAST = {"backoff": {"initial": 200, "max": 1000}}


async def test_live_notification_arrives_within_a_second(
        server: ServerProcess, context: Any, console: ConsoleLog) -> None:
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice"))
    status = await wait_state(page, "open")
    assert status["user"] == "alice" and status["transport"] == "sse" and status["mode"] == "worker"

    started = time.monotonic()
    [nid] = await server.publish(user="alice", title="Ping", data={"k": 1})
    await wait_ids(page, [nid], timeout=1000)
    assert time.monotonic() - started < 1.0
    [n] = await page.evaluate("window.clients[0].log.notifications")
    assert n["title"] == "Ping" and n["data"] == {"k": 1} and n["read"] is False
    assert await page.evaluate("window.clients[0].log.unread") == 1
    assert console.errors == []


async def test_ten_tabs_share_one_stream(server: ServerProcess, context: Any, console: ConsoleLog) -> None:
    pages = [await open_harness(context, server.url) for _ in range(10)]
    for page in pages:
        await start_client(page, server.token("alice"))  # each tab its own token
    for page in pages:
        assert (await wait_state(page, "open"))["mode"] == "worker"
    assert await open_streams(server.url) == (1, 0)
    delivered_before = (await metrics(server.url))["sse_notify_events_delivered_total"]

    ids = []
    for i in range(3):
        ids += await server.publish(user="alice", title=f"n{i}")
    ids += await server.publish(broadcast=True, title="to everyone")
    for page in pages:
        await wait_ids(page, ids)
    for page in pages:
        assert await received(page) == ids  # each once, in order
    m = await metrics(server.url)
    assert m['sse_notify_open_streams{transport="sse"}'] == 1
    assert m["sse_notify_events_delivered_total"] - delivered_before == len(ids)  # not ten times
    assert console.errors == []


async def test_tabs_of_different_users_do_not_share(server: ServerProcess, context: Any) -> None:
    alice, bob = await open_harness(context, server.url), await open_harness(context, server.url)
    await start_client(alice, server.token("alice"))
    await start_client(bob, server.token("bob"))
    assert (await wait_state(alice, "open"))["user"] == "alice"
    assert (await wait_state(bob, "open"))["user"] == "bob"
    assert await open_streams(server.url) == (2, 0)
    [for_alice] = await server.publish(user="alice", title="a")
    [for_bob] = await server.publish(user="bob", title="b")
    await wait_ids(alice, [for_alice])
    await wait_ids(bob, [for_bob])
    assert await received(alice) == [for_alice] and await received(bob) == [for_bob]


async def test_tabs_share_by_user_even_when_the_token_is_compressed(server: ServerProcess, context: Any) -> None:
    user = "team-" + "a" * 100  # repetitive enough for itsdangerous to deflate the payload
    tokens = [server.token(user, ttl=3600 + i) for i in range(2)]
    assert tokens[0] != tokens[1] and all(t.startswith(".") for t in tokens)
    pages = [await open_harness(context, server.url) for _ in tokens]
    for page, token in zip(pages, tokens):
        await start_client(page, token)
    for page in pages:
        assert (await wait_state(page, "open"))["user"] == user
    assert await open_streams(server.url) == (1, 0)


async def test_cursor_survives_a_reload(server: ServerProcess, context: Any) -> None:
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice"))
    await wait_state(page, "open")
    [seen] = await server.publish(user="alice", title="seen")
    await wait_ids(page, [seen])
    await page.reload()  # the only tab: its worker and stream go away
    await wait_streams(server.url, 0)

    missed = [*await server.publish(user="alice", title="missed 1"),
              *await server.publish(user="alice", title="missed 2")]
    await page.wait_for_function("window.harnessReady === true")
    await start_client(page, server.token("alice"))
    assert (await wait_state(page, "open"))["replay"] == "resumed"
    await wait_ids(page, missed)
    [later] = await server.publish(user="alice", title="live again")
    await wait_ids(page, [later])
    assert await received(page) == [*missed, later]  # the one seen before the reload: not again


@pytest.mark.parametrize("transport", ["sse", "ws"])
async def test_restart_replays_what_was_published_meanwhile(
        make_server: Callable[..., ServerProcess], context: Any, transport: str) -> None:
    server = make_server("--retry", "300")
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice"), transport=transport, **FAST)
    assert (await wait_state(page, "open"))["transport"] == transport
    [before] = await server.publish(user="alice", title="before")
    await wait_ids(page, [before])

    server.stop()
    await wait_state(page, "reconnecting")
    # While the page's server is down, notifications are committed to its storage by a
    # second instance on another port (same data dir), which the page does not know of.
    other = make_server(data_dir=server.data_dir)
    meanwhile = [*await other.publish(user="alice", title="while down 1"),
                 *await other.publish(broadcast=True, title="while down 2"),
                 *await other.publish(user="alice", title="while down 3")]
    other.stop()
    server.start()
    await wait_opens(page, 2)
    [after] = await server.publish(user="alice", title="after")

    await wait_ids(page, [*meanwhile, after])
    assert await received(page) == [before, *meanwhile, after]  # none twice, in order
    log = await statuses(page)
    assert [s["replay"] for s in log if s["state"] == "open"] == ["live", "resumed"]
    assert any(s["state"] == "reconnecting" and s["retryIn"] is not None for s in log), \
        "the library's own backoff should have taken over from the browser's reconnect"


async def test_a_new_database_starts_the_cursor_over(
        make_server: Callable[..., ServerProcess], context: Any, tmp_path: Path) -> None:
    """A cursor from a history the server no longer has (its data dir was replaced): the
    client starts over instead of dropping the new, lower ids as seen."""
    env = {"SSE_NOTIFY_SECRET": "a-secret-both-servers-share"}
    server = make_server("--retry", "300", env=env)
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice"), **FAST)
    await wait_state(page, "open")
    old = [*await server.publish(user="alice", title="old 1"), *await server.publish(user="alice", title="old 2")]
    await wait_ids(page, old)
    server.stop()

    replaced = make_server("--retry", "300", env=env, data_dir=tmp_path / "new-data", start=False)
    replaced.port = server.port
    replaced.start()
    await wait_opens(page, 2)
    assert (await statuses(page))[-1]["replay"] == "reset"
    new = [*await replaced.publish(user="alice", title="new 1"), *await replaced.publish(user="alice", title="new 2")]
    assert new == old  # the same ids again, from a new history
    await page.wait_for_function("window.clients[0].log.notifications.length === 4")
    assert [n["title"] for n in await page.evaluate("window.clients[0].log.notifications")] == \
        ["old 1", "old 2", "new 1", "new 2"]
    assert await page.evaluate("window.clients[0].client.cursor") == new[-1]


async def test_proxy_errors_during_reconnect_do_not_stop_the_client(
        make_server: Callable[..., ServerProcess], context: Any) -> None:
    server = make_server("--retry", "300")
    async with FlakyProxy(server.port) as proxy:
        page = await open_harness(context, proxy.url)
        await start_client(page, server.token("alice"), **FAST)
        await wait_state(page, "open")
        [before] = await server.publish(user="alice", title="before")
        await wait_ids(page, [before])

        proxy.fail(502, 503)  # the stream is cut; every request now meets a 502 or a 503
        await page.wait_for_function(
            "window.clients[0].log.statuses.filter((s) => s.state === 'reconnecting' && s.retryIn !== null)"
            ".length >= 4")
        meanwhile = [*await server.publish(user="alice", title="during the outage 1"),
                     *await server.publish(user="alice", title="during the outage 2")]
        proxy.heal()
        await wait_opens(page, 2)
        [after] = await server.publish(user="alice", title="after")
        await wait_ids(page, [*meanwhile, after])

    assert await received(page) == [before, *meanwhile, after]
    assert proxy.answered[502] >= 2 and proxy.answered[503] >= 2
    retries = [s for s in await statuses(page) if s["state"] == "reconnecting" and s["retryIn"] is not None]
    assert {s["error"] for s in retries} & {"HTTP 502", "HTTP 503"}
    for s in retries:  # exponential backoff, capped, with jitter within [ceiling / 2, ceiling]
        ceiling = min(FAST["backoff"]["max"], FAST["backoff"]["initial"] * 2 ** (s["attempt"] - 1))
        assert ceiling / 2 <= s["retryIn"] <= ceiling, s
    assert max(s["attempt"] for s in retries) >= 4


async def test_websocket_when_a_proxy_blocks_event_streams(server: ServerProcess, context: Any) -> None:
    async with FlakyProxy(server.port) as proxy:
        proxy.block("/events", 403)
        page = await open_harness(context, proxy.url)
        await start_client(page, server.token("alice"), **FAST)
        assert (await wait_state(page, "open"))["transport"] == "ws"
        assert proxy.answered[403] >= 2
        assert await open_streams(server.url) == (0, 1)
        [nid] = await server.publish(user="alice", title="over ws")
        await wait_ids(page, [nid])


async def test_websocket_when_eventsource_is_missing(server: ServerProcess, context: Any) -> None:
    # No EventSource in the page, and no SharedWorker (whose scope would have one).
    await context.add_init_script("delete window.EventSource; delete window.SharedWorker;")
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice"))
    assert (await wait_state(page, "open"))["transport"] == "ws"
    assert await open_streams(server.url) == (0, 1)
    ids = [*await server.publish(user="alice", title="over ws"),
           *await server.publish(user="alice", title="again")]
    await wait_ids(page, ids)
    await page.evaluate("window.clients[0].client.markRead('all')")  # read state syncs too
    await page.wait_for_function("window.clients[0].log.unread === 0")
    assert sorted(await page.evaluate("window.clients[0].log.reads")) == ids


@pytest.mark.parametrize("worker", ["missing", "not loading"])
async def test_leader_tab_holds_the_stream_without_shared_worker(
        server: ServerProcess, context: Any, worker: str) -> None:
    """No SharedWorker: one tab, elected with a Web Lock, holds the stream and relays it
    over a BroadcastChannel; when it closes, another tab takes over and resumes."""
    if worker == "missing":
        await context.add_init_script("delete window.SharedWorker")
    else:
        await context.route("**/sse-notify-worker.js", lambda route: route.fulfill(status=404))
    pages = [await open_harness(context, server.url) for _ in range(3)]
    for page in pages:
        await start_client(page, server.token("alice"), **FAST)
    for page in pages:
        await wait_state(page, "open")
    await wait_streams(server.url, 1)
    modes = [await page.evaluate("window.clients[0].client.status.mode") for page in pages]
    assert sorted(modes) == ["follower", "follower", "leader"]
    [first] = await server.publish(user="alice", title="first")
    for page in pages:
        await wait_ids(page, [first])

    await pages[modes.index("leader")].close()
    rest = [p for i, p in enumerate(pages) if modes[i] != "leader"]

    async def one_new_leader() -> bool:
        now = sorted([await p.evaluate("window.clients[0].client.status.mode") for p in rest])
        return now == ["follower", "leader"]
    await eventually(one_new_leader, what="a new leader")
    [second] = await server.publish(user="alice", title="second")
    for page in rest:
        await wait_ids(page, [second])
        assert await received(page) == [first, second]
    assert await open_streams(server.url) == (1, 0)


async def test_token_is_refreshed_before_it_expires(server: ServerProcess, context: Any) -> None:
    minted: list[str] = []

    def mint(reason: str) -> str:
        minted.append(reason)
        return server.token("alice", ttl=3600)

    await context.expose_function("mintToken", mint)
    page = await open_harness(context, server.url)
    # Under a minute left: the server warns (token-expiring) at once, the library refreshes.
    await start_client(page, server.token("alice", ttl=5), get_token=True, **FAST)
    await wait_state(page, "open")
    [first] = await server.publish(user="alice", title="first")
    await wait_ids(page, [first])
    await wait_opens(page, 2)
    [second] = await server.publish(user="alice", title="second")
    await wait_ids(page, [second])
    assert minted == ["expiring"]
    assert await received(page) == [first, second]
    log = await statuses(page)
    assert [s["replay"] for s in log if s["state"] == "open"] == ["live", "resumed"]
    assert not any(s["error"] == "unauthorized" for s in log)


async def test_expired_token_is_refreshed_after_401_and_stream_resumes(
        make_server: Callable[..., ServerProcess], context: Any) -> None:
    server = make_server("--retry", "300")
    minted: list[str] = []

    def mint(reason: str) -> str | None:
        minted.append(reason)
        # Decline the early refresh, so the token really expires on the open stream and the
        # reconnect meets a 401; then hand out a good one.
        return None if reason == "expiring" else server.token("alice", ttl=3600)

    await context.expose_function("mintToken", mint)
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice", ttl=2), get_token=True, **FAST)
    await wait_state(page, "open")
    [first] = await server.publish(user="alice", title="before expiry")
    await wait_ids(page, [first])
    await page.wait_for_function("window.clients[0].log.statuses.at(-1).state !== 'open'")
    [gap] = await server.publish(user="alice", title="in the gap")  # must come through the resume
    await wait_opens(page, 2)
    [after] = await server.publish(user="alice", title="after refresh")
    await wait_ids(page, [gap, after])
    assert await received(page) == [first, gap, after]
    assert minted == ["expiring", "unauthorized"]
    assert any(s["error"] == "unauthorized" for s in await statuses(page))


async def test_initially_expired_token_asks_get_token(server: ServerProcess, context: Any) -> None:
    expired = server.token("alice", ttl=0.5)
    async with server.client() as http:  # wait until the server itself rejects it
        async def rejected() -> bool:
            resp = await http.get("/notifications", headers={"Authorization": f"Bearer {expired}"})
            return resp.status_code == 401
        await eventually(rejected, timeout=5, what="the token to expire")
    minted: list[str] = []

    def mint(reason: str) -> str:
        minted.append(reason)
        return server.token("alice")

    await context.expose_function("mintToken", mint)
    page = await open_harness(context, server.url)
    await start_client(page, expired, get_token=True, **FAST)
    await wait_state(page, "open")
    [nid] = await server.publish(user="alice", title="hello")
    await wait_ids(page, [nid])
    assert minted == ["unauthorized"]


async def test_rejected_token_without_get_token_stops_as_unauthorized(server: ServerProcess, context: Any) -> None:
    page = await open_harness(context, server.url)
    await start_client(page, "not-a-token", **FAST)
    status = await wait_state(page, "unauthorized")
    assert status["error"] == "no valid token"
    assert await open_streams(server.url) == (0, 0)


async def test_history_and_mark_read_helpers(server: ServerProcess, context: Any) -> None:
    ids = [*await server.publish(user="alice", title="one"), *await server.publish(user="alice", title="two")]
    page = await open_harness(context, server.url)
    await start_client(page, server.token("alice"))
    assert (await wait_state(page, "open"))["unread"] == 2
    first_page = await page.evaluate("window.clients[0].client.history({limit: 1})")
    assert [n["id"] for n in first_page["notifications"]] == [ids[1]] and first_page["next_before"] == ids[1]
    await page.evaluate("(id) => window.clients[0].client.markRead(id)", ids[0])
    await page.wait_for_function("window.clients[0].log.unread === 1")
    assert await page.evaluate("window.clients[0].log.reads") == [ids[0]]
    status = await page.evaluate("window.clients[0].client.markRead(999999).then(() => null, (e) => e.status)")
    assert status == 404
    unread = await page.evaluate("window.clients[0].client.history({unread: true})")
    assert [n["id"] for n in unread["notifications"]] == [ids[1]]
