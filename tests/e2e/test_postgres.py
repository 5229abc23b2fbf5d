"""``sse-notify serve --store postgresql://...`` as an operator runs it: the real server on a
fresh database of the real PostgreSQL publishes, streams, replays, keeps history and read
state, keeps its data across a restart, and shares its secret and idempotency keys with a
second node on the same database; ``token``/``rotate-secret --store`` use the database's
secret; a database it cannot use stops it with one line and a non-zero exit; PostgreSQL
out of reach (a proxy the test cuts) gets 503s within seconds, open streams stay up, and
the service recovers by itself.

(Live delivery between nodes is the follower's, tested with it.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from sse_notify.config import Settings
from sse_notify.store import StoreConfigError, cluster_keyring
from sse_notify.tokens import TokenSigner

from ..helpers import ServerProcess, open_sse, poll, uid
from ..test_store_postgres import Proxy, through
from .test_cli import clean_env

pytestmark = pytest.mark.timeout(120)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sse_notify", *args], capture_output=True, text=True,
                          env=clean_env(**(env or {})), timeout=30)


def database_keyring(url: str) -> Any:
    """The secret the database keeps (read in a thread of its own: callers may be async)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(cluster_keyring, Settings.from_env({}, store=url)).result()


class PgServer(ServerProcess):
    """A server on a PostgreSQL store; its tokens are signed with the database's secret
    (unless ``SSE_NOTIFY_SECRET`` is given), which the server creates on first start."""

    def __init__(self, data_dir: Path, url: str, *args: str, env: dict[str, str] | None = None):
        super().__init__(data_dir, "--store", url, *args, env=env)
        self.store_url = url

    @property
    def signer(self) -> TokenSigner:
        if "SSE_NOTIFY_SECRET" in self.env:
            return super().signer
        return TokenSigner.from_keyring(database_keyring(self.store_url))


@pytest.fixture
def make_pg(tmp_path: Path, postgres_url: str) -> Iterator[Callable[..., PgServer]]:
    started: list[PgServer] = []

    def make(*args: str, env: dict[str, str] | None = None) -> PgServer:
        server = PgServer(tmp_path / f"node{len(started)}", postgres_url, *args, env=env)
        started.append(server)
        return server.start()  # type: ignore[return-value]

    yield make
    for server in started:
        server.stop()


async def post(server: ServerProcess, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async with server.client() as c:
        return await c.post("/notifications", content=orjson.dumps(body), headers={
            "Authorization": f"Bearer {server.publisher_token()}", "Content-Type": "application/json",
            **(headers or {})})


async def history(server: ServerProcess, user: str) -> list[tuple[int, bool]]:
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token(user)}"})
    assert resp.status_code == 200, resp.text
    return [(n["id"], n["read"]) for n in resp.json()["notifications"]]


# -- bad configuration ------------------------------------------------------------------

@pytest.mark.parametrize("url, words", [
    ("postgresql://nobody@127.0.0.1:1/x", "127.0.0.1:1"),
    ("postgresql://no_such_role_e2e@127.0.0.1:5432/postgres", "no_such_role_e2e"),
    ("postgres://postgres@127.0.0.1:5432/no_such_database_e2e", "no_such_database_e2e"),
    ("mysql://db/x", "mysql"),
])
def test_a_store_it_cannot_use_stops_serve_with_one_line(tmp_path: Path, url: str, words: str) -> None:
    result = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path), "--store", url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "Running on" not in result.stdout + result.stderr


def test_the_store_url_may_come_from_the_environment(tmp_path: Path) -> None:
    result = run_cli("serve", "--port", "0", "--data-dir", str(tmp_path),
                     env={"SSE_NOTIFY_STORE": "postgresql://nobody@127.0.0.1:1/x"})
    assert result.returncode != 0 and "127.0.0.1:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- one node ---------------------------------------------------------------------------

async def test_publish_stream_replay_history_and_read_state(make_pg: Callable[..., PgServer]) -> None:
    server = make_pg()
    alice = uid("alice")
    async with server.client() as c, open_sse(server, server.token(alice)) as stream:
        own = await server.publish(c, user=alice, title="one", data={"z": 1, "a": [True]})
        [other] = await server.publish(c, user=uid("bob"), title="not hers")
        broadcast = await server.publish(c, broadcast=True, title="all")
        live = await stream.notifications(2)
        assert [n["id"] for n in live] == own + broadcast
        assert live[0]["data"] == {"z": 1, "a": [True]} and list(live[0]["data"]) == ["z", "a"]
        assert other > own[0]
        resp = await c.post("/notifications/read", json={"ids": own},
                            headers={"Authorization": f"Bearer {server.token(alice)}"})
        assert resp.status_code == 200 and resp.json() == {"updated": 1}
        assert orjson.loads((await stream.next_of("read")).data) == {"ids": own}
        assert (await c.get("/healthz")).status_code == 200

    assert (await history(server, alice))[:2] == [(broadcast[0], False), (own[0], True)]
    async with open_sse(server, server.token(alice), headers={"Last-Event-ID": str(own[0])}) as stream:
        assert [n["id"] for n in await stream.notifications(1)] == broadcast  # replay after the cursor

    await asyncio.to_thread(server.restart)  # the database keeps everything, the secret too
    assert (await history(server, alice))[:2] == [(broadcast[0], False), (own[0], True)]
    assert await server.publish(user=alice, title="after") > broadcast


async def test_publishes_from_many_clients_get_distinct_increasing_ids(make_pg: Callable[..., PgServer]) -> None:
    server = make_pg()
    async with server.client() as c:
        results = await asyncio.gather(*(server.publish(c, user=f"u{i % 7}", title=str(i)) for i in range(100)))
    ids = sorted(i for r in results for i in r)
    assert ids == list(range(ids[0], ids[0] + 100))


async def test_postgresql_cut_off_answers_503_keeps_streams_and_recovers(
        tmp_path: Path, postgres_url: str) -> None:
    """The server reaches PostgreSQL through a proxy the test cuts: publishing, history and
    /healthz answer 503 with the JSON error within seconds (never a 500, never a hang), the
    open stream stays up, and when PostgreSQL is back everything works again by itself."""
    target = httpx.URL(postgres_url)
    proxy = Proxy((target.host, target.port or 5432))
    await proxy.up()
    server = PgServer(tmp_path / "node", through(proxy, postgres_url), env={"SSE_NOTIFY_SECRET": "s"})
    await asyncio.to_thread(server.start)  # the proxy serves from this loop meanwhile
    try:
        async with server.client() as c, open_sse(server, server.token("alice")) as stream:
            [before] = await server.publish(c, user="alice", title="before")
            assert [n["id"] for n in await stream.notifications(1)] == [before]
            await proxy.down()
            for method, path, body in [("POST", "/notifications", {"user": "alice", "title": "x"}),
                                       ("GET", "/notifications", None), ("GET", "/healthz", None)]:
                started = time.monotonic()
                token = server.publisher_token() if method == "POST" else server.token("alice")
                resp = await c.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
                assert time.monotonic() - started < 6, path
                assert resp.status_code == 503, (path, resp.text)
                assert resp.json()["error"] == "unavailable"
            await proxy.up()
            assert await poll(lambda: _healthy(c), timeout=10)
            [after] = await server.publish(c, user="alice", title="after")
            assert after == before + 1  # the refused publishes took no id
            assert [n["id"] for n in await stream.notifications(1)] == [after]  # the stream stayed up
    finally:
        await asyncio.to_thread(server.stop)
        await proxy.down()
    assert "Traceback" not in server.log, server.log


async def _healthy(c: httpx.AsyncClient) -> bool:
    return (await c.get("/healthz")).status_code == 200


# -- two nodes on one database ----------------------------------------------------------

async def test_two_nodes_share_the_secret_and_idempotency_keys(make_pg: Callable[..., PgServer]) -> None:
    a, b = make_pg(), make_pg()
    keyring = database_keyring(a.store_url)
    assert not (a.data_dir / "secret.key").exists()  # the secret is the database's, not a file's
    alice_token = TokenSigner.from_keyring(keyring).subscriber("alice", ttl=600)
    for node in (a, b):
        async with node.client() as c:
            resp = await c.get("/notifications", headers={"Authorization": f"Bearer {alice_token}"})
            assert resp.status_code == 200

    body = {"user": "alice", "title": "once"}
    first = await post(a, body, {"Idempotency-Key": "order-17"})
    again = await post(b, body, {"Idempotency-Key": "order-17"})  # the retry went to the other node
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert [i for i, _ in await history(b, "alice")] == first.json()["ids"]
    [later] = await b.publish(user="alice", title="from b")
    assert later > first.json()["ids"][0]


async def test_the_environment_secret_still_overrides(make_pg: Callable[..., PgServer]) -> None:
    server = make_pg(env={"SSE_NOTIFY_SECRET": "from-the-environment"})
    token = TokenSigner("from-the-environment").subscriber("alice", ttl=600)
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    with pytest.raises(StoreConfigError):  # and none was made in the database
        database_keyring(server.store_url)


# -- token and rotate-secret with --store -------------------------------------------------

async def test_token_and_rotate_secret_use_the_databases_secret(
        make_pg: Callable[..., PgServer], postgres_url: str, tmp_path: Path) -> None:
    refused = run_cli("token", "alice", "--store", postgres_url, "--data-dir", str(tmp_path / "cli"))
    assert refused.returncode != 0 and refused.stdout == ""
    assert len(refused.stderr.strip().splitlines()) == 1 and "no secret" in refused.stderr
    assert not (tmp_path / "cli" / "secret.key").exists()  # nor invented one in the data dir

    server = make_pg()
    minted = run_cli("token", "alice", "--store", postgres_url)
    assert minted.returncode == 0, minted.stderr
    old_token = minted.stdout.strip()
    assert await history(server, "alice") == [] and await _status(server, old_token) == 200

    rotated = run_cli("rotate-secret", "--store", postgres_url, "--grace", "1h")
    assert rotated.returncode == 0, rotated.stderr
    assert "database" in rotated.stderr
    new_token = run_cli("token", "alice", env={"SSE_NOTIFY_STORE": postgres_url}).stdout.strip()
    assert new_token and new_token != old_token
    await asyncio.to_thread(server.restart)  # a running server picks the new secret up on restart
    assert await _status(server, new_token) == 200
    assert await _status(server, old_token) == 200  # within the grace period
    assert await _status(server, TokenSigner("another").subscriber("alice", ttl=60)) == 401


async def _status(server: ServerProcess, token: str) -> int:
    async with server.client() as c:
        return (await c.get("/notifications", headers={"Authorization": f"Bearer {token}"})).status_code


def test_token_with_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    result = run_cli("token", "alice", "--store", "postgresql://nobody@127.0.0.1:1/x")
    assert result.returncode != 0 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "127.0.0.1:1" in result.stderr
