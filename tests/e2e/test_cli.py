"""The command line as an operator uses it: ``sse-notify token`` and ``sse-notify serve`` run
as real processes (``python -m sse_notify``), their secret file, environment variables
against flags, signals, and option errors.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from sse_notify import cli
from sse_notify.cli import main
from sse_notify.config import load_secret
from sse_notify.tokens import InvalidToken, TokenSigner

from ..helpers import ServerProcess, open_sse, uid

TOKEN_LINE = re.compile(r"^[A-Za-z0-9_\-.]+\n$")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_NOTIFY_")}
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sse_notify", *args], capture_output=True, text=True,
                          env=clean_env(**(env or {})), cwd=cwd, timeout=timeout)


def mint(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = run_cli("token", *args, "--data-dir", str(data_dir), env=env)
    assert result.returncode == 0, result.stderr
    assert TOKEN_LINE.match(result.stdout), repr(result.stdout)  # exactly a token and a newline
    return result.stdout[:-1]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def status_of(server: ServerProcess, token: str, path: str = "/notifications") -> int:
    async with server.client() as c:
        return (await c.get(path, headers={"Authorization": f"Bearer {token}"})).status_code


class BareServer(ServerProcess):
    """A ServerProcess that does not add ``--port 0 --data-dir ...`` to the command line
    (``tests.helpers.ServerProcess`` always does), so SSE_NOTIFY_PORT and
    SSE_NOTIFY_DATA_DIR can be seen to apply. Runs in ``cwd`` so the default
    ``./sse-notify-data`` stays out of the repository."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str], cwd: Path):
        super().__init__(data_dir, *args, env=env)
        self.cwd = cwd

    def start(self) -> BareServer:
        self._ready.clear()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sse_notify", "serve", *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.cwd,
            env=clean_env(PYTHONUNBUFFERED="1", **self.env))
        import threading
        self._reader = threading.Thread(target=self._read_output, args=(self.proc,), daemon=True)
        self._reader.start()
        if not self._ready.wait(20) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("server did not start:\n" + self.log)
        return self


# -- sse-notify token ----------------------------------------------------------------------

def test_token_prints_exactly_a_subscriber_token_and_a_newline(tmp_path: Path) -> None:
    load_secret(tmp_path)  # as the server's first start leaves it
    result = run_cli("token", "alice", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert TOKEN_LINE.match(result.stdout), repr(result.stdout)
    signer = TokenSigner(load_secret(tmp_path))
    claims = signer.verify_subscriber(result.stdout.strip())
    assert claims.subject == "alice"
    assert claims.expires_at is not None and abs(claims.expires_at - (time.time() + 86400)) < 30
    with pytest.raises(InvalidToken):
        signer.verify_publisher(result.stdout.strip())


def test_token_publisher(tmp_path: Path) -> None:
    load_secret(tmp_path)
    token = mint(tmp_path, "--publisher", "billing-backend")
    signer = TokenSigner(load_secret(tmp_path))
    assert signer.verify_publisher(token).subject == "billing-backend"
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(token)


def test_token_ttl(tmp_path: Path) -> None:
    load_secret(tmp_path)
    token = mint(tmp_path, "bob", "--ttl", "120")
    claims = TokenSigner(load_secret(tmp_path)).verify_subscriber(token)
    assert claims.subject == "bob"
    assert claims.expires_at is not None and abs(claims.expires_at - (time.time() + 120)) < 15


async def test_token_from_another_directory_fails_in_one_line_and_creates_nothing(
        make_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    """The newcomer's trap: the server runs on one data directory, ``token`` is run from
    another. It must not invent a secret there and print a token the server rejects."""
    served = tmp_path / "served"
    server = make_server(data_dir=served)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for args in (["token", "alice"], ["token", "--publisher", "backend"], ["rotate-secret"]):
        result = run_cli(*args, cwd=elsewhere)
        assert result.returncode != 0, args
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"{elsewhere / 'sse-notify-data' / 'secret.key'} " in result.stderr  # absolute: where it looked
        assert "--data-dir DIR" in result.stderr and "SSE_NOTIFY_DATA_DIR" in result.stderr
        assert list(elsewhere.iterdir()) == []
    # pointed at the server's directory, the same command mints a token the server accepts
    for how in ({"args": ["--data-dir", str(served)]}, {"env": {"SSE_NOTIFY_DATA_DIR": str(served)}}):
        result = run_cli("token", "alice", *how.get("args", []), env=how.get("env"), cwd=elsewhere)
        assert result.returncode == 0, result.stderr
        assert await status_of(server, result.stdout.strip()) == 200
    assert list(elsewhere.iterdir()) == []


def test_token_reuses_the_secret_and_leaves_it_0600(tmp_path: Path) -> None:
    load_secret(tmp_path)
    secret_file = tmp_path / "secret.key"
    content = secret_file.read_bytes()
    first, second = mint(tmp_path, "alice"), mint(tmp_path, "alice")
    assert secret_file.read_bytes() == content and mode_of(secret_file) == 0o600
    signer = TokenSigner(content.decode().strip())
    assert signer.verify_subscriber(first).subject == signer.verify_subscriber(second).subject == "alice"


def test_secret_env_overrides_the_file_for_token(tmp_path: Path) -> None:
    file_secret = load_secret(tmp_path)
    token = mint(tmp_path, "alice", env={"SSE_NOTIFY_SECRET": "from-the-environment"})
    assert TokenSigner("from-the-environment").verify_subscriber(token).subject == "alice"
    with pytest.raises(InvalidToken):
        TokenSigner(file_secret).verify_subscriber(token)


def test_token_data_dir_env_and_flag_wins(tmp_path: Path) -> None:
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    load_secret(env_dir), load_secret(flag_dir)
    result = run_cli("token", "alice", env={"SSE_NOTIFY_DATA_DIR": str(env_dir)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert TokenSigner(load_secret(env_dir)).verify_subscriber(result.stdout.strip()).subject == "alice"
    token = mint(flag_dir, "alice", env={"SSE_NOTIFY_DATA_DIR": str(env_dir)})
    assert TokenSigner(load_secret(flag_dir)).verify_subscriber(token).subject == "alice"
    assert (flag_dir / "secret.key").read_text() != (env_dir / "secret.key").read_text()


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[..., int]:
    """``main(argv)`` in this process, with no SSE_NOTIFY_* from outside, the working
    directory in tmp, and serving refused (so a test can never block on a real server)."""
    for name in list(os.environ):
        if name.startswith("SSE_NOTIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)

    def refuse(settings: Any) -> None:
        raise AssertionError("serve got past option validation")

    monkeypatch.setattr(cli, "run", refuse)

    def call(*argv: str, env: dict[str, str] | None = None) -> int:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        return main(list(argv))

    return call


def test_token_usage_error_exits_nonzero_as_a_process(tmp_path: Path) -> None:
    result = run_cli("token", "--data-dir", str(tmp_path))  # neither USER nor --publisher
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.strip() and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [
    [],                                         # neither USER nor --publisher
    ["alice", "--publisher", "backend"],        # both
    ["bad user"],                               # not a valid user id
    ["x" * 129],
    ["alice", "--ttl", "0"],
    ["alice", "--ttl", "-5"],
    ["alice", "--ttl", "soon"],
    ["--publisher", "bad/name"],
])
def test_token_usage_errors_exit_nonzero_with_a_message(in_process: Callable[..., int], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    load_secret(tmp_path)  # refused for the input, not for a missing secret
    assert in_process("token", *args, "--data-dir", str(tmp_path)) != 0
    out, err = capsys.readouterr()
    assert out == ""  # nothing that could be mistaken for a token
    assert err.strip() and "no secret" not in err


# -- the secret of `serve` ------------------------------------------------------------------------

async def test_serve_creates_the_secret_0600_and_tokens_survive_a_restart(
        make_server: Callable[..., ServerProcess], tmp_path: Path) -> None:
    data_dir = tmp_path / "new-data-dir"
    assert not data_dir.exists()
    server = make_server(data_dir=data_dir)
    secret_file = data_dir / "secret.key"
    assert secret_file.is_file() and mode_of(secret_file) == 0o600
    assert (data_dir / "notifications.db").is_file()
    content = secret_file.read_bytes()
    cli_token = mint(data_dir, "alice")  # the CLI signs with the server's secret
    assert await status_of(server, cli_token) == 200
    [nid] = await server.publish(user="alice", title="before restart")
    await asyncio.to_thread(server.restart)
    assert secret_file.read_bytes() == content
    assert mode_of(secret_file) == 0o600
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {cli_token}"})
    assert resp.status_code == 200
    assert [n["id"] for n in resp.json()["notifications"]] == [nid]


async def test_secret_env_overrides_the_file_for_serve(make_server: Callable[..., ServerProcess],
                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    file_secret = load_secret(data_dir)
    server = make_server(data_dir=data_dir, env={"SSE_NOTIFY_SECRET": "env-secret-value"})
    assert await status_of(server, TokenSigner("env-secret-value").subscriber("alice")) == 200
    assert await status_of(server, TokenSigner(file_secret).subscriber("alice")) == 401
    assert (data_dir / "secret.key").read_text().strip() == file_secret  # left alone


# -- environment variables and flags ------------------------------------------------------------

async def stream_start(server: ServerProcess, within: float = 5.0) -> tuple[int, float]:
    """Open /events; return its ``retry:`` value and the seconds until the first comment
    (which must be ``: keepalive``). Fails if no keepalive arrives ``within`` seconds."""
    retry = None
    async with server.client() as c:
        async with c.stream("GET", f"/events?token={server.token(uid())}",
                            timeout=httpx.Timeout(10, read=None)) as resp:
            assert resp.status_code == 200
            start = time.monotonic()
            async with asyncio.timeout(within):
                async for line in resp.aiter_lines():
                    if line.startswith("retry:"):
                        retry = int(line.split(":", 1)[1])
                    elif line.startswith(":"):
                        assert line == ": keepalive"
                        assert retry is not None, "retry: comes first"
                        return retry, time.monotonic() - start
    raise AssertionError("stream ended")


async def publish_raw(server: ServerProcess, size: int) -> int:
    body = orjson.dumps({"user": "alice", "title": "t", "body": "b" * size})
    async with server.client() as c:
        resp = await c.post("/notifications", content=body,
                            headers={"Authorization": f"Bearer {server.publisher_token()}"})
    return resp.status_code


async def test_environment_variables_apply(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(env={"SSE_NOTIFY_RETRY": "1234", "SSE_NOTIFY_HEARTBEAT": "0.3",
                              "SSE_NOTIFY_MAX_BODY": "1000"})
    retry, keepalive_after = await stream_start(server, within=5)
    assert retry == 1234
    assert keepalive_after < 5  # the default heartbeat (15 s) would have timed out
    assert await publish_raw(server, 500) == 201
    assert await publish_raw(server, 1500) == 413


async def test_a_flag_wins_over_its_variable(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server("--retry", "4321", "--heartbeat", "0.3", "--max-body", "5000",
                         env={"SSE_NOTIFY_RETRY": "1234", "SSE_NOTIFY_HEARTBEAT": "60",
                              "SSE_NOTIFY_MAX_BODY": "1000"})
    retry, keepalive_after = await stream_start(server, within=5)
    assert retry == 4321
    assert keepalive_after < 5  # the variable's 60 s would have timed out
    assert await publish_raw(server, 1500) == 201


async def test_port_and_data_dir_from_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "env-data"
    port = free_port()
    server = BareServer(data_dir, env={"SSE_NOTIFY_PORT": str(port), "SSE_NOTIFY_DATA_DIR": str(data_dir)},
                        cwd=tmp_path)
    try:
        await asyncio.to_thread(server.start)
        assert server.port == port
        assert (data_dir / "secret.key").is_file() and (data_dir / "notifications.db").is_file()
        assert not (tmp_path / "sse-notify-data").exists()
        assert await status_of(server, server.token("alice")) == 200  # signed with data_dir's secret
    finally:
        await asyncio.to_thread(server.stop)


@pytest.mark.parametrize("given", ["default", "relative flag", "relative variable", "store"])
async def test_serve_logs_the_absolute_data_dir_it_uses(tmp_path: Path, given: str) -> None:
    args: list[str] = ["--port", "0"]
    env: dict[str, str] = {}
    data_dir = tmp_path / "sse-notify-data"
    if given == "relative flag":
        data_dir = tmp_path / "rel" / "flag"
        args += ["--data-dir", "rel/flag"]
    elif given == "relative variable":
        data_dir = tmp_path / "rel" / "env"
        env["SSE_NOTIFY_DATA_DIR"] = "rel/../rel/env"
    elif given == "store":
        args += ["--store", f"sqlite:///{tmp_path / 'elsewhere.db'}"]
    server = BareServer(data_dir, *args, env=env, cwd=tmp_path)
    try:
        await asyncio.to_thread(server.start)
        [line] = [line for line in server.output if "sse-notify on http://" in line]
        expected = f"(data: {data_dir}" + (f", store: sqlite:///{tmp_path / 'elsewhere.db'})" if given == "store" else ")")
        assert line.rstrip().endswith(expected), line
        assert (data_dir / "secret.key").is_file()
        assert await status_of(server, server.token("alice")) == 200
    finally:
        await asyncio.to_thread(server.stop)


async def test_port_flag_wins_over_the_variable(tmp_path: Path) -> None:
    env_port, flag_port = free_port(), free_port()
    server = BareServer(tmp_path / "d", "--port", str(flag_port), "--data-dir", str(tmp_path / "d"),
                        env={"SSE_NOTIFY_PORT": str(env_port)}, cwd=tmp_path)
    try:
        await asyncio.to_thread(server.start)
        assert server.port == flag_port != env_port
    finally:
        await asyncio.to_thread(server.stop)


# -- signals ------------------------------------------------------------------------------------

async def _shutdown_with_open_streams(server: ServerProcess, sig: signal.Signals) -> None:
    name = sig.name
    async with server.client() as c:
        ids = [i for n in range(5) for i in await server.publish(c, user="alice", title=f"n{n}")]
    async with open_sse(server, server.token("alice")) as stream:
        async with ws_connect(f"{server.ws_url}?token={server.token('bob')}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "auth_success"
            # both streams are live: one more notification reaches each
            [nid] = await server.publish(broadcast=True, title="last")
            assert (await stream.notifications(1))[0]["id"] == nid
            assert orjson.loads(await ws.recv())["id"] == nid
            started = time.monotonic()
            # stop in a thread so this loop keeps serving both client connections
            code = await asyncio.to_thread(server.stop, sig, 10.0)
            elapsed = time.monotonic() - started
            assert code == 0, f"{name}: exit status {code}\n{server.log}"
            assert elapsed < 5, f"{name}: shutdown took {elapsed:.1f}s"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)
        with pytest.raises(EOFError):  # the SSE response ended
            await stream.next(timeout=5)
    # nothing committed was lost
    await asyncio.to_thread(server.start)
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token('alice')}"})
    assert [n["id"] for n in resp.json()["notifications"]] == [nid, *ids[::-1]], name


async def test_sigint_and_sigterm_exit_0_within_5s_with_open_sse_and_websocket(
        make_server: Callable[..., ServerProcess]) -> None:
    """Two servers, one per signal, shut down side by side (each takes a few seconds)."""
    servers = await asyncio.gather(asyncio.to_thread(make_server), asyncio.to_thread(make_server))
    await asyncio.gather(_shutdown_with_open_streams(servers[0], signal.SIGINT),
                         _shutdown_with_open_streams(servers[1], signal.SIGTERM))


async def test_shutdown_after_websocket_clients_is_quick_and_logs_no_error(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    for user in ("alice", "bob"):
        async with ws_connect(f"{server.ws_url}?token={server.token(user)}") as ws:
            assert orjson.loads(await ws.recv())["type"] == "auth_success"
    started = time.monotonic()
    assert await asyncio.to_thread(server.stop, signal.SIGTERM, 10.0) == 0
    elapsed = time.monotonic() - started
    assert "Traceback" not in server.log and " ERROR " not in server.log, server.log
    assert elapsed < 2, f"an idle server took {elapsed:.1f}s to stop"


# -- option errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, env", [
    (["--retention", "90x"], {}),
    ([], {"SSE_NOTIFY_RETENTION": "1 fortnight"}),
])
def test_bad_retention_exits_nonzero_with_a_message_as_a_process(tmp_path: Path, args: list[str],
                                                                 env: dict[str, str]) -> None:
    result = run_cli("serve", "--data-dir", str(tmp_path), "--port", "0", *args, env=env, timeout=20)
    assert result.returncode != 0
    assert "retention" in result.stderr.lower(), result.stderr
    assert "Traceback" not in result.stderr
    assert "Running on" not in result.stdout + result.stderr


@pytest.mark.parametrize("args, env, word", [
    (["--retention", "90x"], {}, "retention"),
    (["--retention", "soon"], {}, "retention"),
    (["--retention", "0s"], {}, "retention"),
    (["--retention", "-5d"], {}, "retention"),
    (["--retention", "1.5h"], {}, "retention"),
    ([], {"SSE_NOTIFY_RETENTION": "1 fortnight"}, "retention"),
    (["--port", "http"], {}, "port"),
    ([], {"SSE_NOTIFY_PORT": "eighty"}, "port"),
    (["--heartbeat", "0"], {}, "heartbeat"),
    (["--max-body", "-1"], {}, "max"),
    ([], {"SSE_NOTIFY_RETRY": "fast"}, "retry"),
])
def test_bad_serve_options_exit_nonzero_with_a_message(in_process: Callable[..., int], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], args: list[str],
                                                       env: dict[str, str], word: str) -> None:
    assert in_process("serve", "--data-dir", str(tmp_path), *args, env=env) != 0
    assert word in capsys.readouterr().err.lower()


@pytest.mark.parametrize("retention", ["90s", "12h", "30d", "15m"])
async def test_retention_durations_are_accepted(make_server: Callable[..., ServerProcess], retention: str) -> None:
    server = make_server("--retention", retention)
    [nid] = await server.publish(user="alice", title="fresh")
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token('alice')}"})
    assert [n["id"] for n in resp.json()["notifications"]] == [nid]  # not older than the retention


async def test_retention_removes_old_notifications_at_start(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    [old] = await server.publish(user="alice", title="old")
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token('alice')}"})
    created = datetime.strptime(resp.json()["notifications"][0]["created_at"],
                                "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    await asyncio.to_thread(server.stop)
    while time.time() < created + 1.2:  # wait for the clock to make it older than 1 s
        await asyncio.sleep(0.05)
    server.args += ["--retention", "1s"]
    await asyncio.to_thread(server.start)
    async with server.client() as c:
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token('alice')}"})
        assert resp.json()["notifications"] == []
        [new] = await server.publish(c, user="alice", title="new")
    assert new > old  # ids are never reused, even after pruning
