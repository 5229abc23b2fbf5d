"""The test harness's own machinery: the services lock that keeps a test which restarts
Redis or PostgreSQL (``@pytest.mark.exclusive``) apart from every other test, also across
the parallel workers (tests/conftest.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from .conftest import services_lock

WAIT = 5.0  # seconds; every wait below ends on an event, this only bounds a failure


def hold(directory: Path, exclusive: bool, entered: threading.Event, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with services_lock(exclusive, directory):
            entered.set()
            release.wait(WAIT)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_shared_holders_run_together_and_an_exclusive_one_waits_for_them(tmp_path: Path) -> None:
    a_in, b_in, x_in, release_ab, release_x = (threading.Event() for _ in range(5))
    a = hold(tmp_path, False, a_in, release_ab)
    b = hold(tmp_path, False, b_in, release_ab)
    assert a_in.wait(WAIT) and b_in.wait(WAIT)  # two shared holders at once
    x = hold(tmp_path, True, x_in, release_x)
    assert not x_in.wait(0.3)  # the exclusive one waits while they hold it
    release_ab.set()
    assert x_in.wait(WAIT)
    release_x.set()
    for thread in (a, b, x):
        thread.join(WAIT)


def test_a_waiting_exclusive_holder_keeps_new_shared_ones_out(tmp_path: Path) -> None:
    a_in, x_in, c_in, release_a, release_x, release_c = (threading.Event() for _ in range(6))
    a = hold(tmp_path, False, a_in, release_a)
    assert a_in.wait(WAIT)
    x = hold(tmp_path, True, x_in, release_x)
    assert not x_in.wait(0.3)  # x now waits, holding the turnstile
    c = hold(tmp_path, False, c_in, release_c)
    assert not c_in.wait(0.3)  # so a newcomer waits behind it: x is not starved
    release_a.set()
    assert x_in.wait(WAIT)
    assert not c_in.is_set()  # x runs alone
    release_x.set()
    assert c_in.wait(WAIT)
    release_c.set()
    for thread in (a, x, c):
        thread.join(WAIT)
