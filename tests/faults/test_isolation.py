"""Scenario 7, isolation: a token for user A never reads, replays or marks anything of
user B, on any endpoint or transport; forged tokens never pass.

*Other user's data.* With alice's real token, through every carrier (``Authorization``,
``?token=``, the cookie; WebSocket: header, query, auth frame): history pages, the SSE and
WebSocket replay from 0, live streams (bob's notifications and bob's read events must not
arrive; a sentinel to alice, dispatched after them, proves they would have), ``hello``'s
``newest_id``, marking bob's notifications read by id, in bulk, with ``all``, and over the
WebSocket. Afterwards bob's read state must be untouched, broadcasts included (read state
is per user).

*Forged tokens.* Tampered payload or signature, spliced (bob's payload under alice's
signature), another secret, the wrong kind (publisher for subscriber and the reverse),
expired, without expiry, claims of the wrong type, truncated: each against every endpoint
and carrier must be refused (401, or ``error`` + close 4401 on ``/ws``). Then random
mutations of real tokens: every one that the server accepts must decode to exactly the
bytes of the token it came from (base64's spare bits can make two spellings of one token).

A breach is any answer that gives A something of B's or lets a forged token through.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from sse_notify import tokens as token_module
from sse_notify.tokens import TokenSigner

from ..e2e.wsclient import WS_SERVER_FLAGS
from ..helpers import ServerProcess
from .support import RawSSE, run_seed

SUBSCRIBER_SALT = token_module._SUBSCRIBER_SALT
PUBLISHER_SALT = token_module._PUBLISHER_SALT
A, B = "alice", "bob"
HTTP_CARRIERS = ("header", "query", "cookie")
WS_CARRIERS = ("header", "query", "frame")


@dataclass(frozen=True)
class Form:
    mutations: int  # random mutations of real tokens, each tried on one endpoint


SHORT = Form(mutations=150)
LONG = Form(mutations=5000)


@dataclass
class Tally:
    attempts: int = 0
    breaches: list[str] = field(default_factory=list)

    def check(self, safe: bool, what: str) -> None:
        self.attempts += 1
        if not safe:
            self.breaches.append(what)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}".rstrip()}  # h11 refuses a trailing space


def carry(token: str, carrier: str, path: str) -> tuple[str, dict[str, str]]:
    """``path`` and headers carrying a subscriber ``token`` the given way."""
    if carrier == "header":
        return path, bearer(token)
    if carrier == "cookie":
        return path, {"Cookie": f"sse_notify_token={token}"}
    return path + ("&" if "?" in path else "?") + f"token={token}", {}


class Bench:
    """The server, alice's and bob's notifications, and ways to use a token anywhere."""

    def __init__(self, server: ServerProcess, client: httpx.AsyncClient):
        self.server, self.client = server, client
        self.pub = {"Authorization": f"Bearer {server.publisher_token('iso')}"}
        self.ids: dict[str, list[int]] = {A: [], B: [], "broadcast": []}

    async def publish(self, expect_user: str, **body: Any) -> list[int]:
        resp = await self.client.post("/notifications", content=orjson.dumps({"title": "t", **body}),
                                      headers=self.pub)
        assert resp.status_code == 201, resp.text
        ids = resp.json()["ids"]
        self.ids[expect_user].extend(ids)
        return ids

    async def seed(self) -> None:
        for topic in (None, "a", "b"):
            extra = {} if topic is None else {"topic": topic}
            await self.publish(B, user=B, body="bob's secret", **extra)
            await self.publish(A, user=A, **extra)
            await self.publish("broadcast", broadcast=True, **extra)
        ids = await self.publish(A, users=[A, B])  # one id each, in that order
        self.ids[A].remove(ids[1])
        self.ids[B].append(ids[1])
        await self.publish(B, user=B)  # bob's is the newest of all

    # -- one request, any endpoint --------------------------------------------------------

    async def http(self, method: str, path: str, token: str, carrier: str,
                   body: Any = None) -> httpx.Response:
        path, headers = carry(token, carrier, path)
        content = None if body is None else orjson.dumps(body)
        return await self.client.request(method, path, headers=headers, content=content)

    async def sse(self, token: str, carrier: str, query: str = "") -> RawSSE:
        path, headers = carry(token, carrier, "/events" + (f"?{query}" if query else ""))
        return await RawSSE.open(self.server.port, path, headers)

    async def ws_hello(self, token: str, carrier: str, query: str = "",
                       cursor: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Open /ws with ``token``; returns (connection, first frame). The caller closes."""
        params = [query] if query else []
        headers = {}
        if carrier == "header":
            headers.update(bearer(token))
        elif carrier == "query":
            params.append(f"token={token}")
        if cursor is not None and carrier != "frame":
            params.append(f"last_event_id={cursor}")
        url = self.server.ws_url + ("?" + "&".join(params) if params else "")
        ws = await ws_connect(url, additional_headers=headers, open_timeout=10, close_timeout=1,
                              max_size=None)
        if carrier == "frame":
            frame: dict[str, Any] = {"type": "auth", "token": token}
            if cursor is not None:
                frame["last_event_id"] = cursor
            await ws.send(orjson.dumps(frame).decode())
        return ws, orjson.loads(await asyncio.wait_for(ws.recv(), 15))

    async def bob_unread(self) -> set[int]:
        resp = await self.http("GET", "/notifications?limit=200&unread=true", self.server.token(B), "header")
        assert resp.status_code == 200, resp.text
        return {n["id"] for n in resp.json()["notifications"]}


# -- A against B's data ---------------------------------------------------------------------

async def read_replay_sse(stream: RawSSE, newest: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while not out or out[-1]["id"] < newest:
        event = await asyncio.wait_for(stream.next_event(), 15)
        assert event is not None, "the replay ended early"
        if event.event == "notification":
            out.append(event.json())
    return out


async def other_users_data(bench: Bench, tally: Tally) -> None:
    alice = bench.server.token(A)
    bob_ids = set(bench.ids[B])
    alice_visible = set(bench.ids[A]) | set(bench.ids["broadcast"])
    newest_alice = max(alice_visible)

    for carrier in HTTP_CARRIERS:
        for query in ("limit=200", "limit=200&unread=true", "limit=200&unread=false",
                      f"limit=1&before={max(bob_ids) + 1}", f"before={min(bob_ids) + 1}"):
            resp = await bench.http("GET", f"/notifications?{query}", alice, carrier)
            got = {n["id"] for n in resp.json()["notifications"]} if resp.status_code == 200 else set()
            tally.check(resp.status_code == 200 and not got & bob_ids,
                        f"history {query} via {carrier}: {sorted(got & bob_ids)}")
        for nid in sorted(bob_ids):
            resp = await bench.http("POST", f"/notifications/{nid}/read", alice, carrier)
            tally.check(resp.status_code == 404, f"mark {nid} via {carrier}: {resp.status_code}")
        resp = await bench.http("POST", "/notifications/read", alice, carrier, {"ids": sorted(bob_ids)})
        tally.check(resp.status_code == 200 and resp.json()["updated"] == 0,
                    f"mark bob's ids in bulk via {carrier}: {resp.status_code} {resp.text}")

        stream = await bench.sse(alice, carrier, "last_event_id=0")
        try:
            assert stream.status == 200, stream.status
            hello = (await asyncio.wait_for(stream.next_event(), 15)).json()  # type: ignore[union-attr]
            tally.check(hello["user"] == A and hello["newest_id"] == newest_alice,
                        f"SSE hello via {carrier} shows {hello}, alice's newest is {newest_alice}")
            replay = await read_replay_sse(stream, newest_alice)
            got = {n["id"] for n in replay}
            tally.check(got == alice_visible, f"SSE replay via {carrier}: bob's {sorted(got & bob_ids)}, "
                                              f"missing {sorted(alice_visible - got)}")
        finally:
            stream.abort()

    for carrier in WS_CARRIERS:
        ws, hello = await bench.ws_hello(alice, carrier, cursor=0)
        try:
            tally.check(hello.get("type") == "auth_success" and hello["newest_id"] == newest_alice,
                        f"WS hello via {carrier}: {hello}")
            got: set[int] = set()
            while not got or max(got) < newest_alice:
                frame = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
                if frame["type"] == "notification":
                    got.add(frame["id"])
            tally.check(got == alice_visible, f"WS replay via {carrier}: bob's {sorted(got & bob_ids)}")
            await ws.send(orjson.dumps({"type": "read", "ids": sorted(bob_ids)}).decode())
            await ws.send(orjson.dumps({"type": "ping"}).decode())
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 15))
            tally.check(frame == {"type": "pong"}, f"WS read frame with bob's ids via {carrier}: {frame}")
        finally:
            await ws.close()

    await live_streams(bench, tally)

    # alice marks everything she can see; bob's own and his copy of the broadcasts stay unread
    for carrier in HTTP_CARRIERS:
        resp = await bench.http("POST", "/notifications/read", alice, carrier, {"all": True})
        tally.check(resp.status_code == 200, f"mark all via {carrier}: {resp.status_code}")
    ws, _ = await bench.ws_hello(alice, "query")
    await ws.send(orjson.dumps({"type": "read", "all": True}).decode())
    await ws.send(orjson.dumps({"type": "ping"}).decode())
    while orjson.loads(await asyncio.wait_for(ws.recv(), 15))["type"] != "pong":
        pass
    await ws.close()
    bob_unread = await bench.bob_unread()
    must_stay = bob_ids | set(bench.ids["broadcast"])
    tally.check(must_stay <= bob_unread, f"bob's read state changed by alice: {sorted(must_stay - bob_unread)}")


async def live_streams(bench: Bench, tally: Tally) -> None:
    """Alice's live streams (each transport, with and without topics) while bob gets
    notifications and marks them read; then a sentinel to alice, dispatched after all of
    them, ends the watch: nothing of bob's may arrive before it."""
    alice, bob = bench.server.token(A), bench.server.token(B)
    sse_streams = [await bench.sse(alice, c, q) for c in HTTP_CARRIERS for q in ("", "topics=a")]
    ws_streams = [(await bench.ws_hello(alice, c, q))[0] for c in WS_CARRIERS for q in ("", "topics=a")]
    try:
        for stream in sse_streams:
            assert stream.status == 200
            await asyncio.wait_for(stream.next_event(), 15)  # hello: registered from here on
        fresh = [*await bench.publish(B, user=B), *await bench.publish(B, user=B, topic="a")]
        resp = await bench.http("POST", "/notifications/read", bob, "header", {"ids": fresh})
        assert resp.json()["updated"] == 2
        sentinel = (await bench.publish(A, user=A, topic="a"))[0]
        for i, stream in enumerate(sse_streams):
            seen = []
            while True:
                event = await asyncio.wait_for(stream.next_event(), 15)
                assert event is not None
                if event.event == "notification" and event.json()["id"] == sentinel:
                    break
                seen.append((event.event, event.data))
            tally.check(not seen, f"alice's SSE stream {i} got {seen}")
        for i, ws in enumerate(ws_streams):
            seen = []
            while (frame := orjson.loads(await asyncio.wait_for(ws.recv(), 15))).get("id") != sentinel:
                seen.append(frame)
            tally.check(not seen, f"alice's WS stream {i} got {seen}")
    finally:
        for stream in sse_streams:
            stream.abort()
        for ws in ws_streams:
            await ws.close()


# -- forged tokens ------------------------------------------------------------------------------

def forged_tokens(server: ServerProcess) -> dict[str, str]:
    alice, bob = server.token(A), server.token(B)
    real = URLSafeTimedSerializer(_secret(server), salt=SUBSCRIBER_SALT)
    a_payload, a_stamp, a_sig = alice.rsplit(".", 2)
    b_payload = bob.rsplit(".", 2)[0]
    flipped = a_payload[:-3] + ("A" if a_payload[-3] != "A" else "B") + a_payload[-2:]
    return {
        "tampered-payload": f"{flipped}.{a_stamp}.{a_sig}",
        "tampered-signature": f"{a_payload}.{a_stamp}.{a_sig[:5]}{'x' if a_sig[5] != 'x' else 'y'}{a_sig[6:]}",
        "spliced-other-user": f"{b_payload}.{a_stamp}.{a_sig}",
        "truncated": alice[:-4],
        "extended": alice + "AAAA",
        "other-secret": TokenSigner("not-the-server-secret").subscriber(B),
        "wrong-kind-publisher": server.publisher_token(B),
        "expired": real.dumps({"u": B, "e": time.time() - 1}),
        "no-expiry": real.dumps({"u": B, "e": None}),
        "user-not-a-string": real.dumps({"u": [B], "e": time.time() + 3600}),
        "expiry-not-a-number": real.dumps({"u": B, "e": "9999999999"}),
        "invalid-user-id": real.dumps({"u": "../bob", "e": time.time() + 3600}),
        "empty": "",
        "garbage": "not.a.token",
    }


def _secret(server: ServerProcess) -> str:
    return server.env.get("SSE_NOTIFY_SECRET") or (server.data_dir / "secret.key").read_text().strip()


async def refused(bench: Bench, token: str, endpoint: str, carrier: str) -> tuple[bool, str]:
    """Try ``token`` on one endpoint through one carrier; (refused as it must be, what happened)."""
    bob_id = bench.ids[B][0]
    if endpoint == "history":
        resp = await bench.http("GET", "/notifications", token, carrier)
    elif endpoint == "mark-one":
        resp = await bench.http("POST", f"/notifications/{bob_id}/read", token, carrier)
    elif endpoint == "mark-many":
        resp = await bench.http("POST", "/notifications/read", token, carrier, {"all": True})
    elif endpoint == "publish":
        resp = await bench.client.post("/notifications", content=b'{"user":"bob","title":"x"}',
                                       headers=bearer(token))
    elif endpoint == "mint":
        resp = await bench.client.post("/tokens", content=b'{"user":"bob"}',
                                       headers=bearer(token))
    elif endpoint == "events":
        stream = await bench.sse(token, carrier, "last_event_id=0")
        stream.abort()
        return stream.status == 401, f"GET /events answered {stream.status}"
    else:  # ws
        ws, first = await bench.ws_hello(token, carrier, cursor=0)
        try:
            code = None
            try:
                await asyncio.wait_for(ws.recv(), 15)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd is not None else None
        finally:
            await ws.close()
        ok = first.get("type") == "error" and first.get("error") == "unauthorized" and code == 4401
        return ok, f"/ws answered {first} then close {code}"
    return resp.status_code == 401, f"answered {resp.status_code} {resp.text[:100]}"


SUBSCRIBER_ENDPOINTS = [(e, c) for e in ("history", "mark-one", "mark-many", "events") for c in HTTP_CARRIERS]
SUBSCRIBER_ENDPOINTS += [("ws", c) for c in WS_CARRIERS]
PUBLISHER_ENDPOINTS = [("publish", "header"), ("mint", "header")]


async def forged(bench: Bench, tally: Tally) -> None:
    server = bench.server
    for kind, token in forged_tokens(server).items():
        for endpoint, carrier in SUBSCRIBER_ENDPOINTS + PUBLISHER_ENDPOINTS:
            if kind == "wrong-kind-publisher" and endpoint in ("publish", "mint"):
                continue  # a publisher token there is the right kind
            ok, what = await refused(bench, token, endpoint, carrier)
            tally.check(ok, f"{kind} token on {endpoint} via {carrier}: {what}")
    subscriber = server.token(A)  # a real subscriber token is the wrong kind for publishing
    for endpoint, carrier in PUBLISHER_ENDPOINTS:
        ok, what = await refused(bench, subscriber, endpoint, carrier)
        tally.check(ok, f"subscriber token on {endpoint}: {what}")


def _parts(token: str) -> tuple[bytes, ...] | None:
    """The decoded (payload, timestamp, signature) of a token, None if it does not decode."""
    pieces = token.rsplit(".", 2)
    if len(pieces) != 3:
        return None
    try:
        return tuple(base64_decode(p.lstrip(".")) for p in pieces)
    except Exception:
        return None


MUTATION_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."


def mutate(rng: random.Random, token: str) -> str:
    chars = list(token)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op, at = rng.random(), rng.randrange(len(chars))
        if op < 0.6:
            chars[at] = rng.choice(MUTATION_ALPHABET)
        elif op < 0.8:
            chars.insert(at, rng.choice(MUTATION_ALPHABET))
        elif len(chars) > 1:
            del chars[at]
    return "".join(chars)


async def mutations(bench: Bench, tally: Tally, count: int, rng: random.Random) -> int:
    """Random mutations of real tokens; returns how many were equivalent spellings."""
    originals = [bench.server.token(A), bench.server.token(B), bench.server.publisher_token("iso")]
    endpoints = SUBSCRIBER_ENDPOINTS + PUBLISHER_ENDPOINTS
    equivalent = 0
    for _ in range(count):
        original = rng.choice(originals)
        token = mutate(rng, original)
        endpoint, carrier = rng.choice(endpoints)
        if endpoint == "ws" and rng.random() < 0.8:
            endpoint = "history"  # keep the slow WebSocket handshakes to a fifth
        if token == original:
            continue
        ok, what = await refused(bench, token, endpoint, carrier)
        if not ok and _parts(token) == _parts(original):
            equivalent += 1  # the same bytes, spelled differently: not a forgery
            continue
        tally.check(ok, f"mutation {token!r} of a real token on {endpoint} via {carrier}: {what}")
    return equivalent


@pytest.mark.fault(short=90, long=900)
async def test_no_cross_user_access_and_no_forged_token_passes(
        make_server: Callable[..., ServerProcess], long_mode: bool, figures: Callable[..., str]) -> None:
    form = LONG if long_mode else SHORT
    server = make_server(*WS_SERVER_FLAGS, "--no-access-log")
    tally = Tally()
    seed = run_seed()
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        bench = Bench(server, client)
        await bench.seed()
        await other_users_data(bench, tally)
        cross_user = tally.attempts
        await forged(bench, tally)
        forged_attempts = tally.attempts - cross_user
        equivalent = await mutations(bench, tally, form.mutations, random.Random(seed))

    figures("isolation", attempts=tally.attempts, breaches=len(tally.breaches),
            cross_user=cross_user, forged=forged_attempts,
            mutations=tally.attempts - cross_user - forged_attempts,
            equivalent_spellings=equivalent, seed=seed)
    assert not tally.breaches, "\n".join(tally.breaches[:30])
