"""``POST /tokens``, token expiry, and the two token kinds never standing in for each other.

One server for the module; each test uses fresh user ids.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any

import httpx
import orjson
import pytest

from sse_notify.tokens import InvalidToken, TokenSigner

from ..helpers import ISO_MS, ServerProcess, assert_error, open_sse, uid



def parse_iso(text: str) -> float:
    assert ISO_MS.match(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


async def call(server: ServerProcess, method: str, path: str, token: str | None = None,
               body: Any = None, raw: bytes | None = None) -> httpx.Response:
    """One request on a fresh connection (Hypercorn drops a keep-alive connection whose
    request was answered before its body was read)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    content = raw if raw is not None else (None if body is None else orjson.dumps(body))
    async with server.client() as c:
        return await c.request(method, path, headers=headers, content=content)


async def mint(server: ServerProcess, body: Any) -> httpx.Response:
    return await call(server, "POST", "/tokens", server.publisher_token(), body)


# -- POST /tokens ------------------------------------------------------------------------------

async def test_mint_answers_201_with_token_user_and_expiry(shared: ServerProcess) -> None:
    user = uid()
    before = time.time()
    resp = await mint(shared, {"user": user, "ttl": 3600})
    after = time.time()
    assert resp.status_code == 201, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"token", "user", "expires_at"}
    assert body["user"] == user and isinstance(body["token"], str) and body["token"]
    expires = parse_iso(body["expires_at"])
    assert before + 3600 - 1 <= expires <= after + 3600 + 1
    # the token is a subscriber token for that user, expiring when the answer says
    claims = shared.signer.verify_subscriber(body["token"])
    assert claims.subject == user
    assert claims.expires_at is not None and abs(claims.expires_at - expires) < 0.01
    with pytest.raises(InvalidToken):
        shared.signer.verify_publisher(body["token"])


async def test_mint_without_ttl_defaults_to_24h(shared: ServerProcess) -> None:
    before = time.time()
    resp = await mint(shared, {"user": uid()})
    assert resp.status_code == 201, resp.text
    expires = parse_iso(resp.json()["expires_at"])
    assert before + 86400 - 1 <= expires <= time.time() + 86400 + 1


async def test_minted_token_works_for_history_mark_read_and_events(shared: ServerProcess) -> None:
    user = uid()
    token = (await mint(shared, {"user": user, "ttl": 600})).json()["token"]
    [nid] = await shared.publish(user=user, title="for the minted token")
    resp = await call(shared, "GET", "/notifications", token)
    assert resp.status_code == 200, resp.text
    assert [n["id"] for n in resp.json()["notifications"]] == [nid]
    assert (await call(shared, "POST", f"/notifications/{nid}/read", token)).status_code == 204
    async with open_sse(shared, token) as stream:
        assert stream.response.status_code == 200
        hello = stream.hello.json()
        assert hello["user"] == user and hello["newest_id"] == nid and hello["unread"] == 0
        [live] = await shared.publish(user=user, title="live")
        [event] = await stream.notifications(1)
    assert event["id"] == live


async def test_minted_token_carries_its_expiry_to_the_stream(shared: ServerProcess) -> None:
    """With less than a minute left, token-expiring is sent at once, with the same
    expires_at that POST /tokens reported."""
    resp = await mint(shared, {"user": uid(), "ttl": 30})
    body = resp.json()
    async with open_sse(shared, body["token"]) as stream:
        event = await stream.next_of("token-expiring")
    assert event.id is None
    assert abs(parse_iso(event.json()["expires_at"]) - parse_iso(body["expires_at"])) < 0.002


@pytest.mark.parametrize("body", [
    {}, {"ttl": 60}, {"user": "bad user"}, {"user": ""}, {"user": "x" * 129}, {"user": 5},
    {"user": "alice", "ttl": "60"}, {"user": "alice", "ttl": 0}, {"user": "alice", "ttl": -5},
    {"user": "alice", "ttl": 1.5}, {"user": "alice", "ttl": True}, ["alice"], "alice",
])
async def test_mint_schema_violations_are_422(shared: ServerProcess, body: Any) -> None:
    assert_error(await mint(shared, body), 422)


@pytest.mark.parametrize("raw", [b"", b"{", b"user=alice"])
async def test_mint_malformed_json_is_400(shared: ServerProcess, raw: bytes) -> None:
    assert_error(await call(shared, "POST", "/tokens", shared.publisher_token(), raw=raw), 400)


async def test_mint_requires_a_publisher_token(shared: ServerProcess) -> None:
    body = {"user": uid()}
    assert_error(await call(shared, "POST", "/tokens", None, body), 401)
    assert_error(await call(shared, "POST", "/tokens", shared.token("backend"), body), 401)
    assert_error(await call(shared, "POST", "/tokens", TokenSigner("other").publisher("backend"), body), 401)
    # not from the query string either: publisher tokens travel only in the header
    async with shared.client() as c:
        resp = await c.post(f"/tokens?token={shared.publisher_token()}", content=orjson.dumps(body))
    assert_error(resp, 401)


# -- expiry ------------------------------------------------------------------------------------

async def _poll_until_rejected(server: ServerProcess, token: str, deadline: float) -> httpx.Response:
    """GET /notifications with ``token`` until it stops working (polling the clock)."""
    while True:
        resp = await call(server, "GET", "/notifications", token)
        if resp.status_code != 200 or time.monotonic() > deadline:
            return resp
        await asyncio.sleep(0.05)


async def test_subscriber_tokens_expire(shared: ServerProcess) -> None:
    user = uid()
    direct = shared.token(user, ttl=1)
    minted = (await mint(shared, {"user": user, "ttl": 1})).json()
    expires = parse_iso(minted["expires_at"])
    for token in (direct, minted["token"]):
        assert (await call(shared, "GET", "/notifications", token)).status_code == 200
    deadline = time.monotonic() + 10
    for token in (direct, minted["token"]):
        assert_error(await _poll_until_rejected(shared, token, deadline), 401)
    assert time.time() >= expires - 0.05, "rejected before its expires_at"
    # an expired token opens no stream either
    async with open_sse(shared, direct) as stream:
        await stream.response.aread()
        assert_error(stream.response, 401)


async def test_stream_ends_when_its_token_expires(shared: ServerProcess) -> None:
    user = uid()
    token = shared.token(user, ttl=1.5)
    async with open_sse(shared, token) as stream:
        warning = await stream.next_of("token-expiring")
        assert warning.id is None
        expires = parse_iso(warning.json()["expires_at"])
        with pytest.raises(EOFError):
            await stream.next(timeout=10)
    assert time.time() >= expires - 0.05


# -- wrong kind --------------------------------------------------------------------------------

async def test_publisher_token_is_no_subscriber_token(shared: ServerProcess) -> None:
    # a publisher named like a user still cannot read that user's notifications
    user = uid()
    [nid] = await shared.publish(user=user, title="private")
    token = shared.publisher_token(user)
    assert_error(await call(shared, "GET", "/notifications", token), 401)
    assert_error(await call(shared, "POST", f"/notifications/{nid}/read", token), 401)
    assert_error(await call(shared, "POST", "/notifications/read", token, {"all": True}), 401)
    async with shared.client() as c:
        assert_error(await c.get(f"/notifications?token={token}"), 401)
    async with shared.client(cookies={"sse_notify_token": token}) as c:
        assert_error(await c.get("/notifications"), 401)
    async with open_sse(shared, token) as stream:
        await stream.response.aread()
        assert_error(stream.response, 401)
    async with open_sse(shared, headers={"Authorization": f"Bearer {token}"}) as stream:
        await stream.response.aread()
        assert_error(stream.response, 401)
    unread = await call(shared, "GET", "/notifications?unread=true", shared.token(user))
    assert [n["id"] for n in unread.json()["notifications"]] == [nid]


async def test_subscriber_token_is_no_publisher_token(shared: ServerProcess) -> None:
    user = uid()
    token = shared.token("backend")
    assert_error(await call(shared, "POST", "/notifications", token, {"user": user, "title": "t"}), 401)
    assert_error(await call(shared, "POST", "/tokens", token, {"user": user}), 401)
    resp = await call(shared, "GET", "/notifications", shared.token(user))
    assert resp.json()["notifications"] == []


async def test_tokens_from_another_secret_are_rejected(shared: ServerProcess) -> None:
    other = TokenSigner("a-different-secret")
    assert_error(await call(shared, "GET", "/notifications", other.subscriber("alice")), 401)
    assert_error(await call(shared, "POST", "/notifications", other.publisher("backend"),
                            {"user": "alice", "title": "t"}), 401)
