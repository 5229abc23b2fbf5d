"""``POST /notifications`` end to end: targets, every validation rule, publisher auth,
Idempotency-Key, and "the 201 comes only after the commit".

One server is shared by the module; every test addresses its own fresh user ids, so the
tests do not see each other's notifications. Tests that publish broadcasts, need special
flags or kill the server start their own.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from sse_notify.config import load_secret
from sse_notify.tokens import TokenSigner

from ..helpers import ISO_MS, NOTIFICATION_KEYS, ServerProcess, assert_error, uid



def pub_headers(server: ServerProcess, name: str = "backend", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.publisher_token(name)}",
            "Content-Type": "application/json", **extra}


async def post(server: ServerProcess, c: httpx.AsyncClient, body: Any, *,
               headers: dict[str, str] | None = None, raw: bytes | None = None) -> httpx.Response:
    return await c.post("/notifications", content=raw if raw is not None else orjson.dumps(body),
                        headers=headers if headers is not None else pub_headers(server))


async def history(server: ServerProcess, user: str, query: str = "") -> list[dict[str, Any]]:
    """The user's history, on a fresh connection: after an answer sent before the request
    body was read (401, 413, ...) Hypercorn drops the keep-alive connection, and reusing it
    races with that close."""
    async with server.client() as c:
        resp = await c.get("/notifications" + (f"?{query}" if query else ""),
                           headers={"Authorization": f"Bearer {server.token(user)}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["notifications"]


# -- targets -----------------------------------------------------------------------------

async def test_publish_to_one_user_stores_the_contract_shape(shared: ServerProcess) -> None:
    alice = uid()
    async with shared.client() as c:
        resp = await post(shared, c, {"user": alice, "title": "New message"})
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        assert set(body) == {"ids"}
        [nid] = body["ids"]
        assert isinstance(nid, int) and nid > 0
        [stored] = await history(shared, alice)
    assert set(stored) == NOTIFICATION_KEYS
    assert stored["id"] == nid and stored["user"] == alice and stored["title"] == "New message"
    # absent optional fields are null, priority defaults to medium, read starts false
    assert stored["topic"] is None and stored["body"] is None and stored["data"] is None
    assert stored["priority"] == "medium" and stored["read"] is False
    assert ISO_MS.match(stored["created_at"]), stored["created_at"]


async def test_publish_passes_every_field_through(shared: ServerProcess) -> None:
    alice = uid()
    data = {"thread": 7, "nested": {"list": [1, 2.5, None, True, "ü€😀"]}, "empty": {}}
    async with shared.client() as c:
        before = time.time()
        resp = await post(shared, c, {"user": alice, "title": "T ✓", "body": "line1\nline2",
                                      "priority": "urgent", "topic": "chat.room:1", "data": data})
        after = time.time()
        assert resp.status_code == 201, resp.text
        [stored] = await history(shared, alice)
    assert stored["title"] == "T ✓" and stored["body"] == "line1\nline2"
    assert stored["priority"] == "urgent" and stored["topic"] == "chat.room:1"
    assert stored["data"] == data
    created = datetime.strptime(stored["created_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    assert before - 2 <= created <= after + 1, "created_at must be the current UTC time"


@pytest.mark.parametrize("priority", ["low", "medium", "high", "urgent"])
async def test_every_priority_is_accepted(shared: ServerProcess, priority: str) -> None:
    alice = uid()
    async with shared.client() as c:
        resp = await post(shared, c, {"user": alice, "title": "p", "priority": priority})
        assert resp.status_code == 201, resp.text
        [stored] = await history(shared, alice)
    assert stored["priority"] == priority


async def test_users_gives_one_id_per_user_in_the_order_of_users(shared: ServerProcess) -> None:
    users = [uid("c"), uid("a"), uid("b"), uid("a")]  # deliberately not sorted
    async with shared.client() as c:
        resp = await post(shared, c, {"users": users, "title": "multi"})
        assert resp.status_code == 201, resp.text
        ids = resp.json()["ids"]
        assert len(ids) == len(users) and len(set(ids)) == len(users)
        assert ids == sorted(ids), "ids increase in commit order, which is the order of users"
        for user, nid in zip(users, ids):
            [stored] = await history(shared, user)
            assert stored["id"] == nid and stored["user"] == user and stored["title"] == "multi"


async def test_users_at_the_limit_of_1000_is_accepted(shared: ServerProcess) -> None:
    users = [f"{uid('m')}-{i}" for i in range(1000)]
    async with shared.client() as c:
        resp = await post(shared, c, {"users": users, "title": "many"})
        assert resp.status_code == 201, resp.text
        ids = resp.json()["ids"]
        assert len(ids) == 1000 and ids == sorted(set(ids))
        [last] = await history(shared, users[-1])
        assert last["id"] == ids[-1]


async def test_broadcast_is_one_notification_every_user_sees(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    async with server.client() as c:
        resp = await post(server, c, {"broadcast": True, "title": "all hands"})
        assert resp.status_code == 201, resp.text
        [nid] = resp.json()["ids"]
        for user in ("alice", "bob", uid()):
            [stored] = await history(server, user)
            assert stored["id"] == nid and stored["user"] is None and stored["title"] == "all hands"


async def test_ids_strictly_increase_across_publishes(shared: ServerProcess) -> None:
    alice = uid()
    async with shared.client() as c:
        ids = []
        for i in range(5):
            resp = await post(shared, c, {"user": alice, "title": f"n{i}"})
            ids += resp.json()["ids"]
    assert ids == sorted(ids) and len(set(ids)) == 5


# -- validation ----------------------------------------------------------------------------

LONG = "x" * 129

INVALID_BODIES: dict[str, Callable[[str], Any]] = {
    "missing title": lambda u: {"user": u},
    "empty title": lambda u: {"user": u, "title": ""},
    "title 257 chars": lambda u: {"user": u, "title": "t" * 257},
    "body 4097 chars": lambda u: {"user": u, "title": "t", "body": "b" * 4097},
    "unknown priority": lambda u: {"user": u, "title": "t", "priority": "critical"},
    "priority wrong case": lambda u: {"user": u, "title": "t", "priority": "HIGH"},
    "user with a space": lambda u: {"user": u + " x", "title": "t"},
    "user with a slash": lambda u: {"user": u + "/x", "title": "t"},
    "user empty": lambda u: {"user": "", "title": "t"},
    "user 129 chars": lambda u: {"user": LONG, "title": "t"},
    "user non-ascii": lambda u: {"user": u + "é", "title": "t"},
    "topic with a space": lambda u: {"user": u, "title": "t", "topic": "a b"},
    "topic empty": lambda u: {"user": u, "title": "t", "topic": ""},
    "topic 129 chars": lambda u: {"user": u, "title": "t", "topic": LONG},
    "user and broadcast": lambda u: {"user": u, "broadcast": True, "title": "t"},
    "user and users": lambda u: {"user": u, "users": [u + "x"], "title": "t"},
    "users and broadcast": lambda u: {"users": [u], "broadcast": True, "title": "t"},
    "no target": lambda u: {"title": "t"},
    "broadcast false only": lambda u: {"broadcast": False, "title": "t"},
    "users empty": lambda u: {"users": [], "title": "t"},
    "users 1001": lambda u: {"users": [f"{u}-{i}" for i in range(1001)], "title": "t"},
    "users duplicates": lambda u: {"users": [u, u + "x", u], "title": "t"},
    "users with a bad id": lambda u: {"users": [u, "bad id"], "title": "t"},
    # wrong types
    "title a number": lambda u: {"user": u, "title": 5},
    "title null": lambda u: {"user": u, "title": None},
    "body a number": lambda u: {"user": u, "title": "t", "body": 5},
    "priority a number": lambda u: {"user": u, "title": "t", "priority": 1},
    "user a number": lambda u: {"user": 5, "title": "t"},
    "users a string": lambda u: {"users": u, "title": "t"},
    "users of numbers": lambda u: {"users": [1, 2], "title": "t"},
    "broadcast a string": lambda u: {"broadcast": "true", "title": "t"},
    "topic a number": lambda u: {"user": u, "title": "t", "topic": 3},
    "data a list": lambda u: {"user": u, "title": "t", "data": [1, 2]},
    "data a string": lambda u: {"user": u, "title": "t", "data": "x"},
    "data a number": lambda u: {"user": u, "title": "t", "data": 1},
    "body is a string": lambda u: "hello",
    "body is null": lambda u: None,
}


@pytest.mark.parametrize("case", list(INVALID_BODIES))
async def test_schema_violations_are_422_and_store_nothing(shared: ServerProcess, case: str) -> None:
    user = uid()
    async with shared.client() as c:
        resp = await post(shared, c, INVALID_BODIES[case](user))
        assert_error(resp, 422)
        assert await history(shared, user) == []


@pytest.mark.parametrize("field, size", [("title", 256), ("title", 1), ("body", 4096), ("body", 0)])
async def test_length_limits_are_inclusive(shared: ServerProcess, field: str, size: int) -> None:
    user = uid()
    body = {"user": user, "title": "t", field: "é" * size}  # characters, not bytes
    async with shared.client() as c:
        resp = await post(shared, c, body)
        assert resp.status_code == 201, resp.text
        [stored] = await history(shared, user)
    assert stored[field] == "é" * size


@pytest.mark.parametrize("name", ["a", "A.b_c-d@e:f", "9" * 128])
async def test_every_allowed_id_character_is_accepted(shared: ServerProcess, name: str) -> None:
    topic = uid("t")
    async with shared.client() as c:
        resp = await post(shared, c, {"user": name, "title": "t", "topic": topic})
        assert resp.status_code == 201, resp.text
        [nid] = resp.json()["ids"]
        resp = await post(shared, c, {"user": uid(), "title": "t", "topic": name})
        assert resp.status_code == 201, resp.text
        assert any(n["id"] == nid for n in await history(shared, name))


@pytest.mark.parametrize("raw", [b"{", b'{"user": "a", "title": "t",}', b"not json", b"",
                                 b'{"user": "a", "title": "t"} trailing', b"\xff\xfe"])
async def test_malformed_json_is_400(shared: ServerProcess, raw: bytes) -> None:
    async with shared.client() as c:
        assert_error(await post(shared, c, None, raw=raw), 400)


async def test_body_just_under_the_default_limit_is_accepted(shared: ServerProcess) -> None:
    user = uid()
    data = {"blob": "z" * 60000}
    async with shared.client() as c:
        resp = await post(shared, c, {"user": user, "title": "big", "data": data})
        assert resp.status_code == 201, resp.text
        [stored] = await history(shared, user)
    assert stored["data"] == data


async def raw_post(server: ServerProcess, body: bytes, *, chunked: bool = False) -> httpx.Response:
    """POST /notifications over a bare socket, reading the answer while the body is still
    being sent. A server may (and this one does) answer 413 as soon as it sees the size and
    close the connection; httpx and asyncio streams then report the failed write instead of
    the answer, so this uses blocking sockets: a thread writes, another reads."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    head = (b"POST /notifications HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + server.publisher_token().encode() + b"\r\n"
            b"Content-Type: application/json\r\n" + framing + b"\r\n\r\n")

    def exchange() -> httpx.Response:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)

        def send() -> None:
            try:
                sock.sendall(head)
                for start in range(0, len(body), 65536):
                    piece = body[start:start + 65536]
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server stopped reading: expected once it has answered 413

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            received = b""
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                assert chunk, f"connection closed before an answer: {received!r}"
                received += chunk
            head_part, _, content = received.partition(b"\r\n\r\n")
            lines = head_part.decode("latin-1").split("\r\n")
            headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]))
            while len(content) < int(headers.get("content-length", "0")):
                chunk = sock.recv(65536)
                assert chunk, "connection closed in the middle of the answer"
                content += chunk
            return httpx.Response(int(lines[0].split()[1]), headers=headers, content=content)
        finally:
            sock.close()
            sender.join(10)

    return await asyncio.to_thread(exchange)


@pytest.mark.parametrize("size", [65537, 70000, 10 * 1024 * 1024])
async def test_body_over_the_default_64kib_is_413(shared: ServerProcess, size: int) -> None:
    user = uid()
    prefix = orjson.dumps({"user": user, "title": "t", "data": {"x": ""}})[:-3]
    raw = prefix + b"y" * (size - len(prefix) - 3) + b'"}}'
    assert len(raw) == size
    assert_error(await raw_post(shared, raw), 413)
    async with shared.client() as c:
        assert await history(shared, user) == []
        assert (await c.get("/healthz")).status_code == 200


async def test_chunked_body_over_the_limit_is_413(shared: ServerProcess) -> None:
    """No Content-Length: the server must count what arrives, not trust a header."""
    user = uid()
    prefix = orjson.dumps({"user": user, "title": "t", "data": {"x": ""}})[:-3]
    raw = prefix + b"y" * (10 * 1024 * 1024) + b'"}}'
    assert_error(await raw_post(shared, raw, chunked=True), 413)
    assert await history(shared, user) == []


async def test_chunked_body_under_the_limit_is_accepted(shared: ServerProcess) -> None:
    user = uid()
    resp = await raw_post(shared, orjson.dumps({"user": user, "title": "chunked"}), chunked=True)
    assert resp.status_code == 201, resp.text
    assert [n["id"] for n in await history(shared, user)] == resp.json()["ids"]


async def test_max_body_flag_sets_the_limit(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--max-body", "2000")
    user = uid()
    async with server.client() as c:
        resp = await post(server, c, {"user": user, "title": "t", "body": "b" * 1800})
        assert resp.status_code == 201, resp.text
        resp = await post(server, c, {"user": user, "title": "t", "body": "b" * 2100})
        assert_error(resp, 413)
        assert len(await history(server, user)) == 1


# -- publisher auth -------------------------------------------------------------------------

def _tamper(token: str) -> str:
    """Change the signature's first character: its last one can differ only in base64's
    padding bits, which decode to the same signature (a valid token, now and then)."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


@pytest.mark.parametrize("case", [
    "missing", "empty bearer", "basic scheme", "subscriber token", "tampered signature",
    "tampered payload", "other secret", "garbage", "token in query", "token in cookie",
])
async def test_publish_without_a_valid_publisher_token_is_401(shared: ServerProcess, case: str) -> None:
    user = uid()
    good = shared.publisher_token()
    headers: dict[str, str] = {"Content-Type": "application/json"}
    params: dict[str, str] = {}
    cookies: dict[str, str] = {}
    if case == "empty bearer":
        headers["Authorization"] = "Bearer"
    elif case == "basic scheme":
        headers["Authorization"] = f"Basic {good}"
    elif case == "subscriber token":
        headers["Authorization"] = f"Bearer {shared.token('backend')}"
    elif case == "tampered signature":
        headers["Authorization"] = f"Bearer {_tamper(good)}"
    elif case == "tampered payload":
        payload, _, rest = good.partition(".")
        headers["Authorization"] = f"Bearer {payload[:-2] + ('AA' if payload[-2:] != 'AA' else 'BB')}.{rest}"
    elif case == "other secret":
        headers["Authorization"] = f"Bearer {TokenSigner('another-secret').publisher('backend')}"
    elif case == "garbage":
        headers["Authorization"] = "Bearer not-a-token"
    elif case == "token in query":
        params["token"] = good
    elif case == "token in cookie":
        cookies["sse_notify_token"] = good
    async with shared.client(cookies=cookies) as c:
        resp = await c.post("/notifications", params=params, headers=headers,
                            content=orjson.dumps({"user": user, "title": "t"}))
        assert_error(resp, 401)
        assert await history(shared, user) == []


@pytest.mark.parametrize("path", ["/notifications", "/tokens", "/notifications/read"])
async def test_a_request_refused_before_its_body_arrived_keeps_the_connection(
        shared: ServerProcess, path: str) -> None:
    """The body comes in a second segment, after the server has already refused the
    token: the server still reads it, so the keep-alive connection carries the next
    request (otherwise a client that already sent that request sees it fail)."""
    body = b'{"user": "u", "title": "t"}'

    def exchange() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", shared.port), timeout=10) as sock:
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer forged\r\n"
                         b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)))
            time.sleep(0.2)  # the refusal is sent before the body arrives
            sock.sendall(body + b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            received = b""
            while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"}"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
        return re.findall(rb"HTTP/1\.1 (\d{3}) ", received)

    assert await asyncio.to_thread(exchange) == [b"401", b"200"]


async def test_expired_publisher_token_is_401(shared: ServerProcess) -> None:
    user = uid()
    token = shared.signer.publisher("backend", ttl=1)
    headers = {"Authorization": f"Bearer {token}"}
    async with shared.client() as c:
        resp = await post(shared, c, {"user": user, "title": "while valid"}, headers=headers)
        assert resp.status_code == 201, "a publisher token with a ttl works until it expires"
        deadline = time.monotonic() + 10
        while True:  # poll the clock, not a fixed sleep
            resp = await post(shared, c, {"user": user, "title": "after expiry"}, headers=headers)
            if resp.status_code != 201 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert_error(resp, 401)
    async with shared.client() as c:  # a fresh connection: Hypercorn drops one answered early
        assert_error(await post(shared, c, {"user": user, "title": "rejected"}, headers=headers), 401)
        titles = [n["title"] for n in await history(shared, user)]
    assert "while valid" in titles and "rejected" not in titles


async def test_a_publisher_token_of_a_rotated_out_secret_stops_at_the_end_of_its_grace(
        make_server: Callable[..., ServerProcess]) -> None:
    """Verified publisher tokens are remembered; a remembered one must still stop working
    exactly when the signer would refuse it."""
    server = make_server()
    old_pub = TokenSigner(load_secret(server.data_dir)).publisher("backend")
    await asyncio.to_thread(server.stop)
    subprocess.run([sys.executable, "-m", "sse_notify", "rotate-secret", "--data-dir",
                    str(server.data_dir), "--grace", "3s"], check=True, capture_output=True)
    rotated_at = time.time()
    await asyncio.to_thread(server.start)
    user = uid()
    headers = {"Authorization": f"Bearer {old_pub}"}
    async with server.client() as c:
        for _ in range(3):  # verified once, then taken from memory
            assert (await post(server, c, {"user": user, "title": "t"}, headers=headers)).status_code == 201
        while time.time() < rotated_at + 3.2:
            await asyncio.sleep(0.1)
        assert_error(await post(server, c, {"user": user, "title": "late"}, headers=headers), 401)


# -- idempotency ----------------------------------------------------------------------------

async def test_repeated_idempotency_key_returns_200_with_the_first_ids(shared: ServerProcess) -> None:
    users = [uid(), uid()]
    key = f"order-{uuid.uuid4()}"
    async with shared.client() as c:
        headers = pub_headers(shared, **{"Idempotency-Key": key})
        first = await post(shared, c, {"users": users, "title": "once"}, headers=headers)
        assert first.status_code == 201, first.text
        again = await post(shared, c, {"users": users, "title": "once"}, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        # even a different body under the same key stores nothing new
        third = await post(shared, c, {"users": users, "title": "changed"}, headers=headers)
        assert third.status_code == 200 and third.json() == first.json()
        for user, nid in zip(users, first.json()["ids"]):
            stored = await history(shared, user)
            assert [n["id"] for n in stored] == [nid] and stored[0]["title"] == "once"


async def test_idempotency_key_is_per_publisher(shared: ServerProcess) -> None:
    user = uid()
    key = f"k-{uuid.uuid4()}"
    async with shared.client() as c:
        a = await post(shared, c, {"user": user, "title": "from a"},
                       headers=pub_headers(shared, "backend-a", **{"Idempotency-Key": key}))
        b = await post(shared, c, {"user": user, "title": "from b"},
                       headers=pub_headers(shared, "backend-b", **{"Idempotency-Key": key}))
        assert a.status_code == 201 and b.status_code == 201
        assert set(a.json()["ids"]).isdisjoint(b.json()["ids"])
        titles = sorted(n["title"] for n in await history(shared, user))
    assert titles == ["from a", "from b"]


async def test_different_keys_and_no_key_each_store(shared: ServerProcess) -> None:
    user = uid()
    async with shared.client() as c:
        for key in ("k1", "k2", None, None):
            extra = {"Idempotency-Key": f"{key}-{user}"} if key else {}
            resp = await post(shared, c, {"user": user, "title": "t"}, headers=pub_headers(shared, **extra))
            assert resp.status_code == 201
        assert len(await history(shared, user)) == 4


@pytest.mark.parametrize("key", ["k" * 129, "", "tab\there", "ünï", "line\x7f"])
async def test_invalid_idempotency_key_is_422(shared: ServerProcess, key: str) -> None:
    user = uid()
    headers = [(b"Authorization", f"Bearer {shared.publisher_token()}".encode()),
               (b"Content-Type", b"application/json"),
               (b"Idempotency-Key", key.encode("utf-8"))]
    async with shared.client() as c:
        resp = await c.post("/notifications", content=orjson.dumps({"user": user, "title": "t"}),
                            headers=headers)
        assert_error(resp, 422)
        assert await history(shared, user) == []


@pytest.mark.parametrize("key", ["k" * 128, "a", "a !~{}\"'<>z", "0c8f2a7e-uuid-like"])
async def test_valid_idempotency_keys_are_accepted(shared: ServerProcess, key: str) -> None:
    user = uid()
    async with shared.client() as c:
        headers = pub_headers(shared, f"p-{user}", **{"Idempotency-Key": key})
        first = await post(shared, c, {"user": user, "title": "t"}, headers=headers)
        assert first.status_code == 201, first.text
        again = await post(shared, c, {"user": user, "title": "t"}, headers=headers)
        assert again.status_code == 200 and again.json() == first.json()


async def test_concurrent_repeats_of_one_key_store_once(shared: ServerProcess) -> None:
    user = uid()
    headers = pub_headers(shared, **{"Idempotency-Key": f"race-{user}"})
    async with shared.client() as c:
        answers = await asyncio.gather(*(post(shared, c, {"user": user, "title": "t"}, headers=headers)
                                         for _ in range(10)))
        assert sorted(r.status_code for r in answers) == [200] * 9 + [201]
        assert len({tuple(r.json()["ids"]) for r in answers}) == 1
        assert len(await history(shared, user)) == 1


# -- commit before answer -------------------------------------------------------------------

async def test_history_right_after_201_shows_every_notification(shared: ServerProcess) -> None:
    user = uid()
    async with shared.client() as c:
        answers = await asyncio.gather(*(post(shared, c, {"user": user, "title": f"n{i}"})
                                         for i in range(30)))
        ids = sorted(i for r in answers for i in r.json()["ids"])
        assert all(r.status_code == 201 for r in answers)
        stored = await history(shared, user)
    assert sorted(n["id"] for n in stored) == ids


async def test_a_201_survives_a_crash(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    user = uid()
    async with server.client() as c:
        answers = await asyncio.gather(*(post(server, c, {"user": user, "title": f"n{i}"})
                                         for i in range(20)))
        ids = sorted(i for r in answers for i in r.json()["ids"])
    server.kill()  # SIGKILL: no clean shutdown
    server.start()
    async with server.client() as c:
        stored = await history(server, user)
        assert sorted(n["id"] for n in stored) == ids
        # and ids keep increasing after the restart
        [nid] = (await post(server, c, {"user": user, "title": "after"})).json()["ids"]
    assert nid > max(ids)
