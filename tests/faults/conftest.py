"""Switches and fixtures of the fault suite: short or long form, time limits, figure lines.

* ``--long`` (off by default) runs every scenario's long form. It is registered here, so it
  is accepted when pytest is pointed at this directory:
  ``pytest tests/faults --long``. The normal test command runs the short forms only, in
  parallel with the rest; the long forms run one at a time (``-n 0``).
* ``@pytest.mark.fault(short=S, long=L)`` gives a scenario its time limit in each form
  (seconds); ``short=None`` means "long form only": skipped, with the command to run it,
  in the normal test command.
* ``long_mode``: whether this run is the long form.
* ``figures``: ``figures("crash", kills=5, lost=0, ...)`` prints the scenario's one
  ``FIGURES`` line, repeats it in pytest's closing summary (``tests/conftest.py`` prints
  it there, from whichever worker ran the test), and in the long form appends it
  to ``results/figures.jsonl`` (git-ignored; ``python -m tests.faults.report`` builds the
  README table from it). Scenarios report their figures before asserting on them, so a
  failing run still shows what it measured.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sse_notify.server import raise_open_files_limit

from ..conftest import FIGURES
from .support import format_figures

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "figures.jsonl"
LONG_COMMAND = "pytest -p no:cacheprovider tests/faults --long"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="fault suite: run the long forms and record their figures "
                          "in tests/faults/results/figures.jsonl")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault(short, long): a fault scenario's time limit in its "
                                       "short and long form (seconds; short=None: long form only)")
    raise_open_files_limit()


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """The long forms run one at a time (``-n 0``): their figures are load figures, and two
    at once on one machine would measure each other."""
    if _is_long(config) and getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0


def _is_long(config: pytest.Config) -> bool:
    return bool(config.getoption("--long", default=False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long = _is_long(config)
    for item in items:
        marker = item.get_closest_marker("fault")
        if marker is None:
            continue
        limit = marker.kwargs["long"] if long else marker.kwargs.get("short")
        if limit is None:
            item.add_marker(pytest.mark.skip(reason=f"long form only: {LONG_COMMAND}"))
        else:
            item.add_marker(pytest.mark.timeout(limit))


@pytest.fixture
def long_mode(request: pytest.FixtureRequest) -> bool:
    return _is_long(request.config)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                              capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@pytest.fixture
def figures(request: pytest.FixtureRequest, long_mode: bool) -> Callable[..., str]:
    started = time.monotonic()

    def report(scenario: str, **values: Any) -> str:
        line = format_figures(scenario, values)
        print("\n" + line, flush=True)
        request.node.user_properties.append((FIGURES, line))
        if long_mode:
            RESULTS.parent.mkdir(exist_ok=True)
            record = {
                "scenario": scenario,
                "test": request.node.nodeid,
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "commit": _commit(),
                "seconds": round(time.monotonic() - started, 1),
                "figures": values,
            }
            with RESULTS.open("ab") as fh:
                fh.write(orjson.dumps(record) + b"\n")
        return line

    return report
