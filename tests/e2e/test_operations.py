"""Operations: /healthz, /metrics, the JSON error contract (404, 405, every error body),
CORS, no token in the server's output, and the demo page.

One default server and one CORS server are shared by the module; counter checks compare
before/after values, so they hold whatever ran earlier.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect

from sse_notify.config import Settings

from ..helpers import ServerProcess, assert_error, open_sse, poll, uid


ALLOWED = "http://a.example"
ALSO_ALLOWED = "http://c.example"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("cors"), "--allow-origin", ALLOWED,
                           "--allow-origin", ALSO_ALLOWED).start()
    yield server
    server.stop()


# -- /healthz ----------------------------------------------------------------------------------

async def test_healthz(shared: ServerProcess) -> None:
    async with shared.client() as c:
        resp = await c.get("/healthz")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json() == {"status": "ok"}


# -- /metrics ----------------------------------------------------------------------------------

async def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (name, sorted labels)."""
    async with server.client() as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_is_prometheus_text_with_every_contract_metric(shared: ServerProcess) -> None:
    async with shared.client() as c:
        resp = await c.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert families["sse_notify_open_streams"].type == "gauge"
    transports = {s.labels["transport"] for s in families["sse_notify_open_streams"].samples}
    assert transports >= {"sse", "ws"}
    for counter in ("sse_notify_notifications_published", "sse_notify_events_delivered",
                    "sse_notify_events_replayed", "sse_notify_slow_consumer_disconnects"):
        assert families[counter].type == "counter", counter
        assert [s.name for s in families[counter].samples if s.name.endswith("_total")] == [counter + "_total"]
    for line in ('sse_notify_open_streams{transport="sse"} ', 'sse_notify_open_streams{transport="ws"} ',
                 "sse_notify_notifications_published_total ", "sse_notify_events_delivered_total ",
                 "sse_notify_events_replayed_total ", "sse_notify_slow_consumer_disconnects_total "):
        assert any(row.startswith(line) for row in resp.text.splitlines()), line


async def test_published_counts_each_stored_notification(shared: ServerProcess) -> None:
    name = "sse_notify_notifications_published_total"
    start = value(await scrape(shared), name)
    await shared.publish(users=[uid(), uid(), uid()], title="three")
    assert value(await scrape(shared), name) == start + 3
    await shared.publish(broadcast=True, title="one for everyone")
    assert value(await scrape(shared), name) == start + 4
    # nothing stored, nothing counted: an idempotent repeat and a rejected publish
    key = {"Idempotency-Key": uid("k")}
    await shared.publish(user=uid(), title="once", headers=key)
    await shared.publish(user=uid(), title="once", headers=key, expect=200)
    async with shared.client() as c:
        resp = await c.post("/notifications", content=b'{"user": "bad id", "title": "rejected"}',
                            headers={"Authorization": f"Bearer {shared.publisher_token()}"})
        assert resp.status_code == 422
    assert value(await scrape(shared), name) == start + 5


async def test_open_streams_gauge_per_transport(shared: ServerProcess) -> None:
    name = "sse_notify_open_streams"
    base = await scrape(shared)
    sse0, ws0 = value(base, name, transport="sse"), value(base, name, transport="ws")

    async def gauges_are(sse: float, ws: float) -> bool:
        now = await scrape(shared)
        return (value(now, name, transport="sse"), value(now, name, transport="ws")) == (sse, ws)

    async with open_sse(shared, shared.token(uid())) as stream:
        assert stream.response.status_code == 200
        assert await gauges_are(sse0 + 1, ws0)
        async with ws_connect(f"{shared.ws_url}?token={shared.token(uid())}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "auth_success"
            assert await gauges_are(sse0 + 1, ws0 + 1)
            async with open_sse(shared, shared.token(uid())):
                assert await gauges_are(sse0 + 2, ws0 + 1)
            # the server notices a closed stream asynchronously: poll for it
            assert await poll(lambda: gauges_are(sse0 + 1, ws0 + 1))
        assert await poll(lambda: gauges_are(sse0 + 1, ws0))
    assert await poll(lambda: gauges_are(sse0, ws0))


async def test_delivered_and_replayed_counters_move(shared: ServerProcess) -> None:
    user = uid()
    delivered, replayed = "sse_notify_events_delivered_total", "sse_notify_events_replayed_total"
    async with open_sse(shared, shared.token(user)) as one, open_sse(shared, shared.token(user)) as two:
        before = await scrape(shared)
        await shared.publish(user=user, title="to two streams")
        await shared.publish(user=uid(), title="to nobody listening")
        await one.notifications(1)
        await two.notifications(1)
        after = await scrape(shared)
    assert value(after, delivered) - value(before, delivered) == 2
    assert value(after, replayed) == value(before, replayed)  # live, not replayed
    # a reconnect from cursor 0 replays everything the user can see (own and broadcasts)
    await shared.publish(user=user, title="second")
    await shared.publish(user=user, title="third")
    async with shared.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {shared.token(user)}"})
        visible = len(resp.json()["notifications"])
    assert visible >= 3
    async with open_sse(shared, shared.token(user), query="last_event_id=0") as stream:
        assert stream.hello.json()["replay"] == "resumed"
        await stream.notifications(visible)
        final = await scrape(shared)
    assert value(final, replayed) - value(after, replayed) == visible
    assert value(final, delivered) == value(after, delivered)


# -- JSON errors for every non-2xx -----------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("GET", "/nope"), ("POST", "/nope"), ("GET", "/notifications/1"), ("GET", "/api/notifications"),
    ("GET", "/static/missing.css"), ("GET", "/ws"), ("GET", "/events/extra"), ("DELETE", "/x/y/z"),
    ("GET", "/notifications/1/read/more"), ("POST", "/notifications/abc/read"),
])
async def test_unknown_paths_are_json_404(shared: ServerProcess, method: str, path: str) -> None:
    async with shared.client() as c:
        resp = await c.request(method, path)
    assert_error(resp, 404)


@pytest.mark.parametrize("method, path", [
    ("DELETE", "/notifications"), ("PUT", "/notifications"), ("PATCH", "/notifications"),
    ("GET", "/tokens"), ("DELETE", "/tokens"), ("POST", "/healthz"), ("PUT", "/healthz"),
    ("POST", "/metrics"), ("GET", "/notifications/read"), ("GET", "/notifications/1/read"),
    ("POST", "/events"), ("DELETE", "/events"), ("PUT", "/events"),
])
async def test_wrong_method_is_json_405(shared: ServerProcess, method: str, path: str) -> None:
    async with shared.client() as c:
        resp = await c.request(method, path)
    assert_error(resp, 405)


ERROR_CASES: list[tuple[str, str, str, Any, int]] = [
    # (method, path, who: none|sub|pub, body, status)
    ("POST", "/notifications", "none", {"user": "a", "title": "t"}, 401),
    ("POST", "/notifications", "pub", b"{", 400),
    ("POST", "/notifications", "pub", {"user": "a"}, 422),
    ("POST", "/notifications", "pub", {"user": "a", "title": "t", "body": "x" * 70000}, 413),
    ("GET", "/notifications?limit=500", "sub", None, 422),
    ("GET", "/notifications", "none", None, 401),
    ("POST", "/notifications/999999999/read", "sub", None, 404),
    ("POST", "/notifications/read", "sub", {"ids": "x"}, 422),
    ("POST", "/notifications/read", "sub", b"[", 400),
    ("POST", "/tokens", "sub", {"user": "a"}, 401),
    ("POST", "/tokens", "pub", {"user": "a b"}, 422),
    ("GET", "/events", "none", None, 401),
    ("GET", "/events?token=garbage", "none", None, 401),
    ("GET", "/events?topics=bad%20topic", "sub", None, 422),
]


@pytest.mark.parametrize("method, path, who, body, status", ERROR_CASES,
                         ids=[f"{m} {p} {s}" for m, p, _, _, s in ERROR_CASES])
async def test_every_error_body_is_exactly_error_and_message(shared: ServerProcess, method: str, path: str,
                                                             who: str, body: Any, status: int) -> None:
    headers = {"sub": {"Authorization": f"Bearer {shared.token(uid())}"},
               "pub": {"Authorization": f"Bearer {shared.publisher_token()}"}, "none": {}}[who]
    content = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
    async with shared.client() as c:
        resp = await c.request(method, path, headers=headers, content=content)
    assert_error(resp, status)


# -- CORS --------------------------------------------------------------------------------------

def cors_of(resp: httpx.Response) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


async def cors_probe(server: ServerProcess, origin: str) -> dict[str, dict[str, str]]:
    """The CORS headers of each kind of answer for a request from ``origin``."""
    out: dict[str, dict[str, str]] = {}
    sub = {"Authorization": f"Bearer {server.token(uid())}", "Origin": origin}
    pub = {"Authorization": f"Bearer {server.publisher_token()}", "Origin": origin}
    async with server.client() as c:
        resp = await c.get("/notifications", headers=sub)
        assert resp.status_code == 200
        out["history"] = cors_of(resp)
        resp = await c.post("/notifications", headers=pub, content=orjson.dumps({"user": "x", "title": "t"}))
        assert resp.status_code == 201
        out["publish"] = cors_of(resp)
        resp = await c.post("/notifications/read", headers=sub, content=b'{"all": true}')
        assert resp.status_code == 200
        out["mark-read"] = cors_of(resp)
        resp = await c.get("/notifications", headers={"Origin": origin})
        assert resp.status_code == 401
        out["error"] = cors_of(resp)
        for path, method in (("/notifications", "POST"), ("/events", "GET"), ("/notifications/read", "POST")):
            resp = await c.options(path, headers={
                "Origin": origin, "Access-Control-Request-Method": method,
                "Access-Control-Request-Headers": "authorization, content-type"})
            assert resp.status_code < 300, resp.text
            out[f"preflight {path}"] = cors_of(resp)
    async with server.client(cookies={"sse_notify_token": server.token(uid())}) as c:
        async with open_sse(server, headers={"Origin": origin}, client=c) as stream:
            assert stream.response.status_code == 200
            out["events"] = cors_of(stream.response)
    async with server.client() as c:
        async with c.stream("GET", "/events?token=bad", headers={"Origin": origin}) as resp:
            await resp.aread()
            assert resp.status_code == 401
            out["events error"] = cors_of(resp)
    return out


async def test_no_cors_headers_by_default(shared: ServerProcess) -> None:
    for what, headers in (await cors_probe(shared, ALLOWED)).items():
        assert headers == {}, what


@pytest.mark.parametrize("origin", [ALLOWED, ALSO_ALLOWED])
async def test_allowed_origin_gets_credentialed_cors_everywhere(cors_server: ServerProcess, origin: str) -> None:
    probe = await cors_probe(cors_server, origin)
    for what, headers in probe.items():
        assert headers.get("access-control-allow-origin") == origin, (what, headers)
        assert headers.get("access-control-allow-credentials") == "true", (what, headers)
    for what in ("preflight /notifications", "preflight /notifications/read"):
        methods = {m.strip().upper() for m in probe[what]["access-control-allow-methods"].split(",")}
        assert "POST" in methods, probe[what]
    assert "GET" in {m.strip().upper() for m in probe["preflight /events"]["access-control-allow-methods"].split(",")}
    for what in ("preflight /notifications", "preflight /events"):
        allowed_headers = {h.strip().lower() for h in probe[what]["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed_headers, probe[what]


@pytest.mark.parametrize("origin", ["http://b.example", "https://a.example", "http://a.example:8080",
                                    "http://sub.a.example", "null"])
async def test_other_origins_get_no_cors_headers(cors_server: ServerProcess, origin: str) -> None:
    for what, headers in (await cors_probe(cors_server, origin)).items():
        assert headers == {}, (origin, what, headers)


async def test_allow_origin_env_takes_a_comma_list(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"SSE_NOTIFY_ALLOW_ORIGIN": "http://a.example, http://b.example"})
    async with server.client() as c:
        for origin, allowed in (("http://a.example", True), ("http://b.example", True), ("http://c.example", False)):
            resp = await c.get("/healthz", headers={"Origin": origin})
            assert resp.headers.get("access-control-allow-origin") == (origin if allowed else None), origin
    async with open_sse(server, server.token("alice"), headers={"Origin": "http://b.example"}) as stream:
        assert stream.response.headers.get("access-control-allow-origin") == "http://b.example"
        assert stream.response.headers.get("access-control-allow-credentials") == "true"


async def test_allow_origin_flag_wins_over_env(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--allow-origin", "http://c.example",
                         env={"SSE_NOTIFY_ALLOW_ORIGIN": "http://a.example,http://b.example"})
    async with server.client() as c:
        for origin, allowed in (("http://c.example", True), ("http://a.example", False)):
            resp = await c.get("/healthz", headers={"Origin": origin})
            assert resp.headers.get("access-control-allow-origin") == (origin if allowed else None), origin


# -- no tokens in the output -----------------------------------------------------------------

async def test_tokens_never_appear_in_server_output(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    user = uid()
    stream_token = server.token(user)
    header_token = server.token(user)
    cookie_token = server.token(user)
    ws_token = server.token(user)
    publisher = server.publisher_token("leaky-backend")
    bogus = "canary-" + uuid.uuid4().hex  # an invalid token is just as secret-looking
    assert len({stream_token, header_token, cookie_token, ws_token}) == 4
    async with open_sse(server, stream_token, query="last_event_id=0&topics=") as stream:
        async with server.client() as c:
            resp = await c.post("/notifications", headers={"Authorization": f"Bearer {publisher}"},
                                content=orjson.dumps({"user": user, "title": "t"}))
            assert resp.status_code == 201
            resp = await c.get("/notifications", headers={"Authorization": f"Bearer {header_token}"})
            assert resp.status_code == 200
            assert (await c.get(f"/notifications?token={bogus}")).status_code == 401
            assert (await c.get("/notifications", headers={"Authorization": f"Bearer {bogus}x"})).status_code == 401
        await stream.notifications(1)
    async with server.client(cookies={"sse_notify_token": cookie_token}) as c:
        assert (await c.get("/notifications?limit=1")).status_code == 200
    async with ws_connect(f"{server.ws_url}?token={ws_token}") as ws:
        assert orjson.loads(await ws.recv())["type"] == "auth_success"
    async with ws_connect(server.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "auth", "token": f"{bogus}ws"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "error"

    async def all_requests_logged() -> bool:
        log = server.log
        return log.count("/notifications") >= 5 and "/events" in log and log.count("/ws") >= 2

    # the access log is written as each request ends; wait for every line to be there
    assert await poll(all_requests_logged), server.log
    server.stop()
    log = server.log
    for secret in (stream_token, header_token, cookie_token, ws_token, publisher, bogus):
        assert secret not in log, "a token leaked into the server output"
    # itsdangerous tokens are payload.timestamp.signature: no signature part either
    for token in (stream_token, header_token, publisher):
        assert token.rsplit(".", 1)[-1] not in log
    assert "token=" not in log


# -- the demo page -----------------------------------------------------------------------------

async def test_root_serves_the_demo_page(shared: ServerProcess) -> None:
    index = Settings().static_dir / "index.html"
    async with shared.client() as c:
        resp = await c.get("/")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    assert resp.content == Path(index).read_bytes()
