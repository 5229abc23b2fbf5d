"""``/openapi.json`` kept true against the running server: every route it serves is
described and every described route is served; every answer to a set of real requests
(successes and each contract error) has a described status, and its body is valid for
the described schema. It is also a reference written for callers: every operation has a
summary and a description free of the implementation's internals, every answer a
description, and every JSON body an example that is valid for its schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from websockets.asyncio.client import connect as ws_connect

from sse_notify import Settings, create_app

from ..helpers import ServerProcess

MAX_BODY = 2000

#: Statuses described but not produced here: each needs a server in another state, and
#: has its own tests (limits: test_limits.py; storage down: test_storage_failure.py).
ELSEWHERE = {"429", "503"}


@dataclass
class Case:
    method: str
    path: str  # the concrete path requested
    route: str  # the described path it belongs to
    status: int
    token: str | None = None  # "pub", "sub", "other" or None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("openapi"), "--max-body", str(MAX_BODY), "--no-access-log")
    yield server.start()
    server.stop()


def described(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


def test_every_route_served_is_described_and_every_description_is_served(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    app = create_app(Settings.from_env({}, data_dir=server.data_dir))  # only to read its routes
    routes = {(method.lower(), rule.rule.replace("<int:id>", "{id}"))
              for rule in app.url_map.iter_rules() for method in rule.methods or ()
              if method not in ("HEAD", "OPTIONS") and rule.endpoint not in ("static", "openapi")}
    lean = {("get", "/events"), ("get", "/ws")}  # served in front of Quart only
    assert described(doc) == routes | lean
    assert doc["components"]["securitySchemes"].keys() == {
        "publisher", "subscriber", "subscriberQuery", "subscriberCookie"}


def cases(nid: int, others: int) -> list[Case]:
    big = b'{"x": "' + b"x" * MAX_BODY + b'"}'
    return [
        Case("POST", "/notifications", "/notifications", 201, "pub", b'{"user": "alice", "title": "t"}',
             {"Idempotency-Key": "k1"}),
        Case("POST", "/notifications", "/notifications", 200, "pub", b'{"user": "alice", "title": "t"}',
             {"Idempotency-Key": "k1"}),
        Case("POST", "/notifications", "/notifications", 201, "pub",  # bulk
             b'[{"user": "alice", "title": "t"}, {"users": ["bob", "carol"], "title": "t"}]',
             {"Idempotency-Key": "k2"}),
        Case("POST", "/notifications", "/notifications", 200, "pub", b'[{"user": "alice", "title": "t"}]',
             {"Idempotency-Key": "k2"}),
        Case("POST", "/notifications", "/notifications", 422, "pub", b'[{"user": "alice", "title": "t"}, {}]'),
        Case("POST", "/notifications", "/notifications", 400, "pub", b"{not json"),
        Case("POST", "/notifications", "/notifications", 401, None, b'{"user": "alice", "title": "t"}'),
        Case("POST", "/notifications", "/notifications", 401, "sub", b'{"user": "alice", "title": "t"}'),
        Case("POST", "/notifications", "/notifications", 413, "pub", big),
        Case("POST", "/notifications", "/notifications", 422, "pub", b'{"user": "alice"}'),
        Case("GET", "/notifications?limit=5", "/notifications", 200, "sub"),
        Case("GET", "/notifications", "/notifications", 401, "pub"),
        Case("GET", "/notifications?limit=0", "/notifications", 422, "sub"),
        Case("POST", f"/notifications/{nid}/read", "/notifications/{id}/read", 204, "sub"),
        Case("POST", f"/notifications/{others}/read", "/notifications/{id}/read", 404, "sub"),
        Case("POST", f"/notifications/{nid}/read", "/notifications/{id}/read", 401, None),
        Case("POST", "/notifications/read", "/notifications/read", 200, "sub", b'{"all": true}'),
        Case("POST", "/notifications/read", "/notifications/read", 400, "sub", b"[1,"),
        Case("POST", "/notifications/read", "/notifications/read", 401, None, b'{"all": true}'),
        Case("POST", "/notifications/read", "/notifications/read", 413, "sub", big),
        Case("POST", "/notifications/read", "/notifications/read", 422, "sub", b'{"ids": "1"}'),
        Case("GET", f"/notifications/{nid}/status", "/notifications/{id}/status", 200, "pub"),
        Case("GET", "/notifications/999999/status", "/notifications/{id}/status", 404, "pub"),
        Case("GET", f"/notifications/{nid}/status", "/notifications/{id}/status", 401, "sub"),
        Case("POST", "/tokens", "/tokens", 201, "pub", b'{"user": "carol", "ttl": 60}'),
        Case("POST", "/tokens", "/tokens", 400, "pub", b"nope"),
        Case("POST", "/tokens", "/tokens", 401, "sub", b'{"user": "carol"}'),
        Case("POST", "/tokens", "/tokens", 413, "pub", big),
        Case("POST", "/tokens", "/tokens", 422, "pub", b'{"user": "not a name"}'),
        Case("GET", "/presence?user=alice&user=bob", "/presence", 200, "pub"),
        Case("GET", "/presence", "/presence", 422, "pub"),
        Case("GET", "/presence?user=alice", "/presence", 401, "sub"),
        Case("GET", "/healthz", "/healthz", 200),
        Case("GET", "/metrics", "/metrics", 200),
        Case("GET", "/", "/", 200),
        Case("GET", "/docs", "/docs", 200),
        Case("GET", "/events", "/events", 200, "sub"),
        Case("GET", "/events", "/events", 401, None),
        Case("GET", "/events?topics=not%20a%20topic", "/events", 422, "sub"),
    ]


def check_answer(doc: dict[str, Any], case: Case, resp: httpx.Response) -> None:
    assert resp.status_code == case.status, (case, resp.text[:200])
    operation = doc["paths"][case.route][case.method.lower()]
    answer = operation["responses"].get(str(case.status))
    assert answer is not None, f"{case.method} {case.route} answered {case.status}, not described"
    content = answer.get("content")
    if content is None:
        assert resp.content == b"", case
        return
    [(content_type, media)] = content.items()
    assert resp.headers["content-type"].split(";")[0] == content_type.split(";")[0], case
    if content_type == "application/json":
        schema = {**media["schema"], "components": doc["components"]}  # so $refs resolve
        errors = sorted(Draft202012Validator(schema).iter_errors(resp.json()), key=str)
        assert not errors, (case, resp.json(), errors[0].message)


async def test_answers_have_described_statuses_and_bodies(server: ServerProcess) -> None:
    async with server.client() as c:
        doc = (await c.get("/openapi.json")).json()
        [nid] = await server.publish(c, user="alice", title="mine")
        [others] = await server.publish(c, user="bob", title="not alice's")
        tokens = {"pub": server.publisher_token(), "sub": server.token("alice"), None: None}
        produced: dict[tuple[str, str], set[str]] = {}
        for case in cases(nid, others):
            headers = dict(case.headers)
            if tokens[case.token] is not None:
                headers["Authorization"] = f"Bearer {tokens[case.token]}"
            request = c.build_request(case.method, case.path, content=case.body, headers=headers)
            resp = await c.send(request, stream=True)
            try:
                if resp.headers.get("content-type", "").startswith("text/event-stream"):
                    resp._content = b""  # a stream never ends: its head is what is checked
                    assert case.status == 200
                    check_answer(doc, case, resp)
                else:
                    await resp.aread()
                    check_answer(doc, case, resp)
            finally:
                await resp.aclose()
            produced.setdefault((case.method.lower(), case.route), set()).add(str(case.status))
    async with ws_connect(f"{server.ws_url}?token={server.token('alice')}") as ws:  # 101
        assert "auth_success" in await ws.recv()
    produced[("get", "/ws")] = {"101"}
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            missing = set(operation["responses"]) - produced.get((method, path), set()) - ELSEWHERE
            assert not missing, f"{method.upper()} {path} describes {missing}, never produced here"


#: Words of the implementation that a caller's reference must not show (the publish
#: operation once described itself with a code comment about Quart's routing).
INTERNALS = re.compile(r"quart|hypercorn|:class:|:func:|sse_notify\.|transports\b|never runs|\bview\b",
                       re.IGNORECASE)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield f"{method.upper()} {path}", operation


def test_every_operation_is_described_for_the_people_who_call_it(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    texts = [("info", doc["info"]["description"])]
    for name, operation in operations(doc):
        summary, description = operation.get("summary", ""), operation.get("description", "")
        assert summary.strip() and "\n" not in summary, f"{name}: no one-line summary"
        assert len(description.strip()) >= 40, f"{name}: no description"
        assert len(operation.get("tags", [])) == 1, f"{name}: not in one group of the reference"
        texts += [(name, summary), (name, description)]
        for status, answer in operation["responses"].items():
            assert answer.get("description", "").strip(), f"{name} {status}: answer not described"
            texts.append((f"{name} {status}", answer["description"]))
        texts += [(f"{name} {p['name']}", p.get("description", "")) for p in operation.get("parameters", [])]
    texts += [(name, scheme["description"]) for name, scheme in doc["components"]["securitySchemes"].items()]
    leaks = [(where, INTERNALS.search(text).group()) for where, text in texts if INTERNALS.search(text)]
    assert not leaks, leaks
    publish = doc["paths"]["/notifications"]["post"]
    assert publish["summary"] == "Publish a notification"
    assert "Idempotency-Key" in {p["name"] for p in publish["parameters"]}


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, where: str) -> None:
    errors = sorted(Draft202012Validator({**schema, "components": doc["components"]}).iter_errors(value), key=str)
    assert not errors, (where, value, errors[0].message if errors else None)


def test_every_json_body_has_an_example_valid_for_its_schema(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    for name, operation in operations(doc):
        if "requestBody" in operation:
            media = operation["requestBody"]["content"]["application/json"]
            examples = [e["value"] for e in media.get("examples", {}).values()]
            assert examples, f"{name}: no request example"
            for value in examples:
                validate(doc, media["schema"], value, name)
        for status, answer in operation["responses"].items():
            for content_type, media in answer.get("content", {}).items():
                if content_type == "text/html":
                    continue  # a page, seen in the browser
                assert "example" in media, f"{name} {status}: no example"
                if content_type == "application/json":
                    validate(doc, media["schema"], media["example"], f"{name} {status}")
    stream = doc["paths"]["/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]["example"]
    assert stream.startswith("retry: 3000\n\nevent: hello\n")


def test_publish_body_is_described_as_one_notification_or_an_array(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    body = doc["paths"]["/notifications"]["post"]["requestBody"]["content"]["application/json"]
    validator = Draft202012Validator({**body["schema"], "components": doc["components"]})
    one = {"user": "alice", "title": "t"}
    assert validator.is_valid(one) and validator.is_valid([one]) and validator.is_valid([one] * 1000)
    assert not validator.is_valid([]) and not validator.is_valid([one] * 1001)
    assert not validator.is_valid([one, {"user": "alice", "title": 5}])
