"""Shared fixtures: a real server per test (``server``) or with flags (``make_server``), and
a database of the test's own on the real PostgreSQL (``postgres_url``) and Redis (``redis_url``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import ServerProcess
from .services import REDIS_URL, create_database, drop_database, random_name


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database of this test's own, dropped afterwards."""
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture
def redis_url() -> str:
    """The Redis server with a channel name of this test's own (pub/sub is server-wide)."""
    return f"{REDIS_URL}?channel={random_name('sse-notify-test')}"


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """``make_server(*flags, env=..., data_dir=...)`` starts a server; all stop at teardown."""
    started: list[ServerProcess] = []

    def make(*args: str, env: dict[str, str] | None = None, data_dir: Path | None = None,
             start: bool = True) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *args, env=env)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: Callable[..., ServerProcess]) -> ServerProcess:
    return make_server()
