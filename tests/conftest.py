"""Shared fixtures: a real server per test (``server``) or with flags (``make_server``), and
a database of the test's own on the real PostgreSQL (``postgres_url``) and Redis (``redis_url``).

The suite runs in parallel (pytest-xdist, ``-n`` in pyproject's addopts; ``-n 0`` runs it
in one process): every test holds a shared lock on the machine's services for its
whole run (setup, call, teardown), and a test marked ``exclusive`` -- one that restarts
Redis or PostgreSQL, or kicks every Redis subscriber -- holds it alone, so no other test
meets the service it disturbs. The lock is a file lock (``flock``), so it holds across the
workers and across concurrent runs on one machine; a waiting exclusive test keeps new
tests out (a turnstile) so it is not starved.

The fault suite's ``FIGURES`` lines travel in each test's ``user_properties`` and are
repeated in the closing summary here, where they reach the summary from every worker.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .helpers import ServerProcess
from .services import REDIS_URL, create_database, drop_database, random_name


LOCK_DIR = Path(tempfile.gettempdir())
FIGURES = "fault figures"  # the user_properties key of a FIGURES line (tests/faults/conftest.py)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "exclusive: the test disturbs a service every test shares "
                                       "(restarts Redis or PostgreSQL, kicks all Redis subscribers): "
                                       "no other test runs meanwhile, also in parallel runs")


@contextmanager
def services_lock(exclusive: bool, directory: Path = LOCK_DIR) -> Iterator[None]:
    """Shared (or, for an exclusive test, sole) use of the machine's PostgreSQL and Redis."""
    with open(directory / "sse-notify-tests-services.lock", "a") as lock, \
            open(directory / "sse-notify-tests-turnstile.lock", "a") as turnstile:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # behind a waiting exclusive test
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            if not exclusive:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    with services_lock(exclusive=item.get_closest_marker("exclusive") is not None):
        yield


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = [value for reports in terminalreporter.stats.values() for report in reports
             if getattr(report, "when", None) == "call"
             for name, value in getattr(report, "user_properties", ()) if name == FIGURES]
    if lines:
        terminalreporter.section("fault figures")
        for line in lines:
            terminalreporter.write_line(line)


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
