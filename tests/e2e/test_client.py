"""The Python SDK (``sse_notify.client``) against the real server, both ``Client`` and
``AsyncClient``: publishing one, many and broadcast; retries that reuse one
``Idempotency-Key`` and never store twice -- over a connection dropped after the server
committed (a TCP proxy here swallows the answer), a timeout, a real 429 from
``--publish-rate`` (its ``Retry-After`` waited out) and a real 503 from a locked
database; typed exceptions carrying the contract's JSON error; ``token()`` opening a
stream.

``presence()`` and ``status()`` are tested only as far as the server goes today (it has
neither endpoint yet): the requests that reach the wire, and the server's JSON 404 mapped
to ``NotFound``.
"""

from __future__ import annotations

import asyncio
import re
import socket
import sqlite3
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import httpx
import pytest

from sse_notify.client import (AsyncClient, Client, InvalidRequest, NetworkError, NotFound, NotificationStatus,
                               Presence, RateLimited, Receipt, SSENotifyError, TokenInfo, Unauthorized)


from ..helpers import ServerProcess, open_sse, poll, uid

pytestmark = pytest.mark.timeout(60)

FAST = {"backoff": 0.01}  # retries in these tests wait milliseconds, unless a Retry-After says otherwise


class SDK:
    """One client kind, sync (run in a thread, as a Flask view would) or async, calling
    one method per fresh client."""

    def __init__(self, kind: str, url: str, token: str, **options: Any):
        self.kind, self.url, self.token, self.options = kind, url, token, options

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            def run() -> Any:
                with Client(self.url, self.token, **self.options) as client:
                    return getattr(client, method)(*args, **kwargs)
            return await asyncio.to_thread(run)
        async with AsyncClient(self.url, self.token, **self.options) as client:
            return await getattr(client, method)(*args, **kwargs)


@pytest.fixture(params=["sync", "async"])
def sdk(request: pytest.FixtureRequest) -> Callable[..., SDK]:
    def make(server: ServerProcess, url: str | None = None, token: str | None = None, **options: Any) -> SDK:
        return SDK(request.param, url or server.url, token or server.publisher_token(), **options)
    return make


class Proxy:
    """A TCP proxy in front of the server that sees every request and answer. The first
    ``drop`` answers are swallowed once the server has sent them (so it has committed):
    ``mode="drop"`` then closes the client's connection, ``"stall"`` holds it open
    silently until the client gives up. ``on_status`` runs for each answer's status before
    the answer goes on."""

    def __init__(self, target: int, *, drop: int = 0, mode: str = "drop",
                 on_status: Callable[[int], None] | None = None):
        self.target, self.drop, self.mode, self.on_status = target, drop, mode, on_status
        self.requests: list[str] = []  # request lines
        self.keys: list[str | None] = []  # Idempotency-Key of each request
        self.statuses: list[int] = []  # every answer the server sent, swallowed ones too
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._closed.set()
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)  # each ends at its EOF
        await self._server.wait_closed()

    async def _connection(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers |= {client_writer, server_writer}
        upstream = asyncio.create_task(self._upstream(client_reader, server_writer))
        try:
            while chunk := await server_reader.read(65536):
                statuses = [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", chunk)]
                self.statuses += statuses
                if statuses and self.drop > 0:
                    self.drop -= 1
                    if self.mode == "stall":
                        await self._closed.wait()
                    return
                for status in statuses:
                    if self.on_status is not None:
                        self.on_status(status)
                client_writer.write(chunk)
                await client_writer.drain()
        except ConnectionError:
            pass
        finally:
            upstream.cancel()
            client_writer.close()
            server_writer.close()

    async def _upstream(self, client_reader: asyncio.StreamReader, server_writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await client_reader.read(65536):
                for head in re.findall(rb"(?:GET|POST) [^\r\n]+\r\n(?:[^\r\n]+\r\n)*", chunk):
                    self.requests.append(head.split(b"\r\n", 1)[0].decode())
                    key = re.search(rb"\r\nidempotency-key: ([^\r\n]+)", head, re.IGNORECASE)
                    self.keys.append(key.group(1).decode() if key else None)
                server_writer.write(chunk)
                await server_writer.drain()
        except ConnectionError:
            pass


async def history(server: ServerProcess, user: str, *, broadcasts: bool = False) -> list[dict[str, Any]]:
    """The user's notifications, newest first; broadcasts (other tests' too) only if asked."""
    async with server.client() as c:
        resp = await c.get("/notifications?limit=200", headers={"Authorization": f"Bearer {server.token(user)}"})
    assert resp.status_code == 200, resp.text
    return [n for n in resp.json()["notifications"] if broadcasts or n["user"] is not None]


# -- publishing ----------------------------------------------------------------------

async def test_publish_to_a_user_reaches_their_stream(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    user = uid()
    async with open_sse(shared, shared.token(user)) as stream:
        ids = await sdk(shared)("publish", user=user, title="Hello", body="text", priority="high",
                                topic="chat", data={"thread": 7})
        [got] = await stream.notifications(1)
    assert len(ids) == 1 and got["id"] == ids[0]
    assert {k: got[k] for k in ("user", "title", "body", "priority", "topic", "data")} == {
        "user": user, "title": "Hello", "body": "text", "priority": "high", "topic": "chat",
        "data": {"thread": 7}}


async def test_publish_to_users_and_broadcast(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    a, b = uid(), uid()
    client = sdk(shared)
    ids = await client("publish", users=[a, b], title="to both")
    [broadcast] = await client("publish", broadcast=True, title="to everyone")
    assert len(ids) == 2 and broadcast > max(ids)
    for user, own in ((a, ids[0]), (b, ids[1])):
        got = [(n["id"], n["user"]) for n in await history(shared, user, broadcasts=True)]
        assert got[:2] == [(broadcast, None), (own, user)]


async def test_publish_many_is_one_bulk_request(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    a, b, c = uid(), uid(), uid()
    async with Proxy(shared.port) as proxy:
        results = await sdk(shared, proxy.url)("publish_many", [
            {"user": a, "title": "one"}, {"users": [b, c], "title": "two", "priority": "urgent"}])
    assert [len(r) for r in results] == [1, 2]
    assert proxy.requests == ["POST /notifications HTTP/1.1"] and proxy.statuses == [201]
    assert [n["title"] for n in await history(shared, a)] == ["one"]
    assert [n["id"] for n in await history(shared, c)] == [results[1][1]]


# -- retries never store twice -------------------------------------------------------

@pytest.mark.parametrize("mode", ["drop", "stall"])
async def test_a_retry_after_a_lost_answer_stores_once(shared: ServerProcess, sdk: Callable[..., SDK],
                                                       mode: str) -> None:
    user = uid()
    async with Proxy(shared.port, drop=1, mode=mode) as proxy:
        ids = await sdk(shared, proxy.url, timeout=1.0, **FAST)("publish", user=user, title="once")
    # the server stored it and answered 201, which the client never saw; the retry,
    # under the same key, got 200 with the first ids
    assert proxy.statuses == [201, 200]
    assert len(proxy.keys) == 2 and proxy.keys[0] == proxy.keys[1] is not None
    assert [(n["id"], n["title"]) for n in await history(shared, user)] == [(ids[0], "once")]


async def test_a_bulk_retry_stores_once(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    a, b = uid(), uid()
    async with Proxy(shared.port, drop=1) as proxy:
        results = await sdk(shared, proxy.url, **FAST)("publish_many", [{"user": a, "title": "x"},
                                                                        {"user": b, "title": "y"}])
    assert proxy.statuses == [201, 200] and proxy.keys[0] == proxy.keys[1]
    assert [n["id"] for n in await history(shared, a)] == results[0]
    assert [n["id"] for n in await history(shared, b)] == results[1]


async def test_every_publish_call_has_its_own_key(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    user = uid()
    async with Proxy(shared.port) as proxy:
        client = sdk(shared, proxy.url)
        first = await client("publish", user=user, title="same")
        second = await client("publish", user=user, title="same")
        key = f"order-{user}-shipped"
        chosen = await client("publish", user=user, title="same", idempotency_key=key)
        again = await client("publish", user=user, title="same", idempotency_key=key)
    assert first != second and chosen == again
    assert len(set(proxy.keys)) == 3 and proxy.keys[2:] == [key] * 2
    assert proxy.statuses == [201, 201, 201, 200]
    assert len(await history(shared, user)) == 3


async def test_no_answer_after_the_retries_is_a_network_error(shared: ServerProcess,
                                                              sdk: Callable[..., SDK]) -> None:
    user = uid()
    async with Proxy(shared.port, drop=99) as proxy:
        with pytest.raises(NetworkError) as caught:
            await sdk(shared, proxy.url, retries=2, **FAST)("publish", user=user, title="lost")
    assert caught.value.status is None and caught.value.code == "network_error"
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert proxy.statuses == [201, 200, 200] and len(set(proxy.keys)) == 1  # 1 + 2 retries, one key
    assert len(await history(shared, user)) == 1


async def test_a_server_that_is_down_is_retried_then_a_network_error(shared: ServerProcess,
                                                                     sdk: Callable[..., SDK]) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(NetworkError) as caught:
        await sdk(shared, url, retries=2, **FAST)("publish", user="alice", title="x")
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_429_is_waited_out_for_its_retry_after(make_server: Callable[..., ServerProcess],
                                                     sdk: Callable[..., SDK]) -> None:
    server = make_server("--publish-rate", "1", "--publish-burst", "1")
    user = uid()
    async with Proxy(server.port) as proxy:
        client = sdk(server, proxy.url, **FAST)
        await client("publish", user=user, title="spends the burst")
        started = time.monotonic()
        ids = await client("publish", user=user, title="waits")
        waited = time.monotonic() - started
    assert proxy.statuses == [201, 429, 201]
    assert waited >= 0.95, waited  # Retry-After: 1, not the 10 ms backoff
    assert proxy.keys[1] == proxy.keys[2]
    assert [n["id"] for n in await history(server, user)][0] == ids[0]


async def test_429_is_raised_when_retries_are_spent_or_waiting_cannot_help(
        make_server: Callable[..., ServerProcess], sdk: Callable[..., SDK]) -> None:
    server = make_server("--publish-rate", "1", "--publish-burst", "2")
    async with Proxy(server.port) as proxy:
        client = sdk(server, proxy.url, retries=0)
        await client("publish", user="alice", title="one")
        with pytest.raises(RateLimited) as caught:  # more than the burst at once: never passes
            await client("publish_many", [{"user": "alice", "title": "x"}] * 3)
        assert caught.value.retry_after is None and proxy.statuses == [201, 429]
        await client("publish", user="alice", title="two")
        with pytest.raises(RateLimited) as caught:
            await client("publish", user="alice", title="three")
    assert caught.value.status == 429 and caught.value.code == "rate_limited"
    assert caught.value.retry_after == 1.0 and "per second" in caught.value.message
    assert proxy.statuses == [201, 429, 201, 429]  # retries=0: no second attempt


async def test_503_from_locked_storage_is_retried(make_server: Callable[..., ServerProcess],
                                                  sdk: Callable[..., SDK]) -> None:
    server = make_server()
    user = uid()
    await server.publish(user=user, title="creates the database")
    locker = sqlite3.connect(server.data_dir / "notifications.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: publishing answers 503

    def unlock(status: int) -> None:  # the first 503 is on its way to the client: storage recovers
        if status == 503 and locker.in_transaction:
            locker.execute("ROLLBACK")

    try:
        async with Proxy(server.port, on_status=unlock) as proxy:
            ids = await sdk(server, proxy.url, timeout=30.0, **FAST)("publish", user=user, title="after 503")
    finally:
        locker.close()
    assert proxy.statuses == [503, 201] and proxy.keys[0] == proxy.keys[1]
    assert [n["title"] for n in await history(server, user)] == ["after 503", "creates the database"]
    assert (await history(server, user))[0]["id"] == ids[0]


# -- typed errors --------------------------------------------------------------------

async def test_401_is_unauthorized(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    subscriber = shared.token("alice")  # the wrong kind of token
    for token in ("not-a-token", subscriber):
        with pytest.raises(Unauthorized) as caught:
            await sdk(shared, token=token, **FAST)("publish", user="alice", title="x")
        assert (caught.value.status, caught.value.code) == (401, "unauthorized") and caught.value.message
        assert subscriber not in str(caught.value)


async def test_422_and_413_are_invalid_requests(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    client = sdk(shared, **FAST)
    with pytest.raises(InvalidRequest) as caught:
        await client("publish", user="alice", users=["bob"], title="two targets")
    assert (caught.value.status, caught.value.code) == (422, "validation_error")
    with pytest.raises(InvalidRequest) as caught:
        await client("publish", user="not a valid id", title="x")
    assert caught.value.status == 422
    with pytest.raises(InvalidRequest) as caught:
        await client("publish_many", [{"user": "alice", "title": "ok"}, {"user": "alice"}])
    assert caught.value.status == 422 and "1" in caught.value.message  # names the index
    with pytest.raises(InvalidRequest) as caught:
        await client("publish", user="alice", title="big", data={"x": "y" * 70_000})
    assert (caught.value.status, caught.value.code) == (413, "payload_too_large")
    with pytest.raises(InvalidRequest):
        await client("token", "not a valid id")
    with pytest.raises(InvalidRequest) as caught:  # no --webhook-url (and, until escalation lands, no field)
        await client("publish", user="alice", title="x", escalate={"after": "10m", "unless": "read"})
    assert caught.value.status == 422


async def test_presence_and_status_requests(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    """The requests on the wire, and an id that can never exist answered 404 (``NotFound``,
    not retried)."""
    async with Proxy(shared.port) as proxy:
        client = sdk(shared, proxy.url, **FAST)
        presence = await client("presence", "alice", "bob@example.com")
        assert set(presence) == {"alice", "bob@example.com"}
        with pytest.raises(NotFound) as status:
            await client("status", 2**62)
    assert proxy.requests == ["GET /presence?user=alice&user=bob%40example.com HTTP/1.1",
                              f"GET /notifications/{2**62}/status HTTP/1.1"]
    assert proxy.statuses[1] == 404 and len(proxy.statuses) == 2  # not retried
    assert isinstance(status.value, SSENotifyError)
    assert (status.value.status, status.value.code) == (404, "not_found") and status.value.message


async def test_presence_follows_a_users_streams(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    client = sdk(shared)
    user = uid()
    assert await client("presence", user) == {user: Presence(online=False, streams=0, last_seen=None)}
    async with open_sse(shared, shared.token(user)), open_sse(shared, shared.token(user)):
        assert await poll(lambda: _presence_is(client, user, online=True, streams=2))
    assert await poll(lambda: _presence_is(client, user, online=False, streams=0))
    [seen] = (await client("presence", user)).values()
    assert seen.last_seen is not None and abs(seen.last_seen.timestamp() - time.time()) < 30


async def _presence_is(client: SDK, user: str, **expected: object) -> bool:
    [answer] = (await client("presence", user)).values()
    return all(getattr(answer, name) == value for name, value in expected.items())


async def test_status_follows_delivery_and_read(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    client = sdk(shared)
    user = uid()
    [nid] = await client("publish", user=user, title="did they see it?")
    status = await client("status", nid)
    assert status == NotificationStatus(nid, False, {user: Receipt(None, None)})
    token = shared.token(user)
    async with open_sse(shared, token, query=f"last_event_id={nid - 1}") as stream:  # replayed
        assert [n["id"] for n in await stream.notifications(1)] == [nid]
        assert await poll(lambda: _receipt_set(client, nid, user, "delivered_at"))
        async with shared.client() as c:
            resp = await c.post(f"/notifications/{nid}/read", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 204, resp.text
        assert await poll(lambda: _receipt_set(client, nid, user, "read_at"))
    [broadcast] = await client("publish", broadcast=True, title="to all")
    assert await client("status", broadcast) == NotificationStatus(broadcast, True, {}, read=0)


async def _receipt_set(client: SDK, nid: int, user: str, field: str) -> bool:
    return getattr((await client("status", nid)).users[user], field) is not None


# -- tokens --------------------------------------------------------------------------

async def test_token_opens_a_stream(shared: ServerProcess, sdk: Callable[..., SDK]) -> None:
    user = uid()
    before = time.time()
    info = await sdk(shared)("token", user, ttl=600)
    assert isinstance(info, TokenInfo) and info.user == user
    assert before + 590 <= info.expires_at.timestamp() <= time.time() + 610
    assert info.token not in repr(info)
    async with open_sse(shared, info.token) as stream:
        assert stream.hello.json()["user"] == user  # type: ignore[attr-defined]
        [id_] = await shared.publish(user=user, title="with a minted token")
        assert (await stream.notifications(1))[0]["id"] == id_
