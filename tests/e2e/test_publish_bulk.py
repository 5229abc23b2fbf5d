"""Bulk publishing end to end (API v1.1): ``POST /notifications`` with a JSON array of 1 to
1000 notification bodies -- validated first (an invalid element is a 422 naming its index,
and nothing is stored), stored in one commit, answered in order, covered as a whole by an
``Idempotency-Key``, each element counted by the publish rate, delivered in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from ..helpers import ServerProcess, assert_error, open_sse, uid
from .wsclient import WS_SERVER_FLAGS, open_ws

pytestmark = pytest.mark.timeout(60)


def headers(server: ServerProcess, name: str = "backend", **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.publisher_token(name)}",
            "Content-Type": "application/json", **extra}


async def post(server: ServerProcess, c: httpx.AsyncClient, body: Any, **extra: str) -> httpx.Response:
    return await c.post("/notifications", content=orjson.dumps(body), headers=headers(server, **extra))


async def history(server: ServerProcess, c: httpx.AsyncClient, user: str) -> list[dict[str, Any]]:
    resp = await c.get("/notifications?limit=200", headers={"Authorization": f"Bearer {server.token(user)}"})
    assert resp.status_code == 200, resp.text
    return resp.json()["notifications"]


def _deep(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(depth - 1):
        data = {"a": data}
    return data


async def test_bulk_is_stored_and_answered_in_order(shared: ServerProcess) -> None:
    a, b, c_ = uid(), uid(), uid()
    body = [{"user": a, "title": "first", "priority": "high", "data": {"k": [1]}},
            {"users": [b, c_], "title": "second", "topic": "t"},
            {"user": a, "title": "third", "body": "text"}]
    async with shared.client() as c:
        resp = await post(shared, c, body)
        assert resp.status_code == 201, resp.text
        assert resp.headers["content-type"] == "application/json"
        results = resp.json()["results"]
        assert [len(r["ids"]) for r in results] == [1, 2, 1] and set(resp.json()) == {"results"}
        ids = [i for r in results for i in r["ids"]]
        assert ids == list(range(ids[0], ids[0] + 4))  # one commit: consecutive, in order
        stored_a = await history(shared, c, a)
        stored_b, stored_c = await history(shared, c, b), await history(shared, c, c_)
    assert [(n["id"], n["title"]) for n in stored_a] == [(ids[3], "third"), (ids[0], "first")]
    assert stored_a[1]["priority"] == "high" and stored_a[1]["data"] == {"k": [1]}
    assert stored_a[0]["body"] == "text"
    assert [(n["id"], n["topic"]) for n in stored_b + stored_c] == [(ids[1], "t"), (ids[2], "t")]


async def test_bulk_of_1000_is_accepted(shared: ServerProcess) -> None:
    user = uid()
    async with shared.client() as c:
        resp = await post(shared, c, [{"user": user, "title": str(i)} for i in range(1000)])
        assert resp.status_code == 201, resp.text
        assert len(resp.json()["results"]) == 1000
        assert len(await history(shared, c, user)) == 200  # a page of them


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"title": "no target"}, '[3]: give exactly one target'),
        ({"user": "x"}, "[3].title: Field required"),
        ({"user": "bad id", "title": "t"}, "[3].user: "),
        ("a string", "[3]: must be a JSON object."),
        ({"user": "x", "title": "t", "priority": "whenever"}, "[3].priority: "),
        # where the hand-written check of common bodies must step aside for the model
        ({"user": "x", "title": 5}, "[3].title: Input should be a valid string"),
        ({"user": "x", "title": "t", "extra": 1}, "[3].extra: Extra inputs are not permitted"),
        ({"user": "x", "title": "x" * 257}, "[3].title: String should have at most 256 characters"),
        ({"user": "x", "title": "t", "body": "y" * 4097}, "[3].body: String should have at most 4096 characters"),
        ({"broadcast": 1, "title": "t"}, "[3].broadcast: Input should be a valid boolean"),
        ({"users": ["a", "a"], "title": "t"}, '[3]: "users" must not repeat an id'),
        ({"users": [], "title": "t"}, "[3].users: List should have at least 1 item"),
        ({"user": "x", "title": "t", "data": [1]}, "[3].data: Input should be a valid dictionary"),
        ({"user": "x", "title": "t", "data": _deep(201)},
         "[3].data: nested deeper than 200 levels"),
        ({"user": "x", "title": "t", "escalate": {"after": "10m"}},
         "[3].escalate: this server has no webhook URL"),
    ],
)
async def test_an_invalid_element_is_422_naming_its_index_and_nothing_is_stored(
        shared: ServerProcess, bad: Any, message: str) -> None:
    user = uid()
    body = [{"user": user, "title": "ok"}] * 3 + [bad] + [{"user": user, "title": "ok"}]
    async with shared.client() as c:
        error = assert_error(await post(shared, c, body), 422)
        assert error["message"].startswith(message), error["message"]
        assert await history(shared, c, user) == []


@pytest.mark.parametrize("size", [0, 1001])
async def test_empty_or_over_1000_elements_is_422(shared: ServerProcess, size: int) -> None:
    user = uid()
    async with shared.client() as c:
        error = assert_error(await post(shared, c, [{"user": user, "title": "t"}] * size), 422)
        assert "1 to 1000" in error["message"]
        assert await history(shared, c, user) == []


async def test_idempotency_key_covers_the_whole_array(shared: ServerProcess) -> None:
    a, b = uid(), uid()
    key = f"bulk-{uuid.uuid4()}"
    async with shared.client() as c:
        first = await post(shared, c, [{"user": a, "title": "1"}, {"users": [a, b], "title": "2"}],
                           **{"Idempotency-Key": key})
        assert first.status_code == 201, first.text
        again = await post(shared, c, [{"user": a, "title": "1"}, {"users": [a, b], "title": "2"}],
                           **{"Idempotency-Key": key})
        assert again.status_code == 200 and again.json() == first.json()
        changed = await post(shared, c, [{"user": a, "title": "other"}], **{"Idempotency-Key": key})
        assert changed.status_code == 200 and changed.json() == first.json()
        # the same key on a single body: the ids the key stored, in order
        single = await post(shared, c, {"user": a, "title": "1"}, **{"Idempotency-Key": key})
        assert single.status_code == 200
        assert single.json() == {"ids": [i for r in first.json()["results"] for i in r["ids"]]}
        assert len(await history(shared, c, a)) == 2 and len(await history(shared, c, b)) == 1


async def test_a_key_first_used_by_a_single_body_answers_an_array_as_one_element(
        shared: ServerProcess) -> None:
    user = uid()
    key = f"single-{uuid.uuid4()}"
    async with shared.client() as c:
        first = await post(shared, c, {"users": [user, uid()], "title": "t"}, **{"Idempotency-Key": key})
        bulk = await post(shared, c, [{"user": user, "title": "t"}] * 2, **{"Idempotency-Key": key})
        assert bulk.status_code == 200 and bulk.json() == {"results": [first.json()]}
        assert len(await history(shared, c, user)) == 1


async def test_every_element_counts_against_the_publish_rate(make_server: Callable[..., ServerProcess]) -> None:
    # 0.01/s: no token comes back within the test, so every count is exact
    server = make_server("--publish-rate", "0.01", "--publish-burst", "10")
    user = uid()
    async with server.client() as c:
        assert (await post(server, c, [{"user": user, "title": "t"}] * 6)).status_code == 201
        refused = await post(server, c, [{"user": user, "title": "t"}] * 5)  # 4 left
        assert_error(refused, 429)
        assert int(refused.headers["Retry-After"]) >= 1
        # the refused bulk took nothing: exactly 4 are left
        assert (await post(server, c, [{"user": user, "title": "t"}] * 4)).status_code == 201
        assert_error(await post(server, c, {"user": user, "title": "t"}), 429)
        too_many = await c.post("/notifications", content=orjson.dumps([{"user": user, "title": "t"}] * 11),
                                headers=headers(server, "fresh"))
        error = assert_error(too_many, 429)  # more than the burst at once can never pass
        assert "at most 10 at once" in error["message"] and "Retry-After" not in too_many.headers
        assert len(await history(server, c, user)) == 10


async def test_a_bulk_is_delivered_on_every_stream_in_order(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(*WS_SERVER_FLAGS)
    body = [{"user": "alice", "title": f"n{i}"} if i % 3 else {"broadcast": True, "title": f"n{i}"}
            for i in range(300)] + [{"users": ["bob", "alice"], "title": "both"}]
    async with open_sse(server, server.token("alice")) as sse, open_ws(server, server.token("alice")) as ws, \
            open_sse(server, server.token("bob")) as bob:
        async with server.client() as c:
            resp = await post(server, c, body)
            assert resp.status_code == 201, resp.text
        ids = [i for r in resp.json()["results"] for i in r["ids"]]
        on_sse = [n["id"] for n in await sse.notifications(301)]
        on_ws = [n["id"] for n in await ws.notifications(301)]
        on_bob = [n["id"] for n in await bob.notifications(101)]
    alices = ids[:300] + [ids[301]]
    assert on_sse == on_ws == alices
    assert on_bob == [ids[i] for i in range(0, 300, 3)] + [ids[300]]
