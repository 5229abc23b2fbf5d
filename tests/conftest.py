"""Shared fixtures: a real server per test (``server``) or with flags (``make_server``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import ServerProcess


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
