"""Browser tests: Playwright (Python, async API) driving Debian's Chromium against the real
server. The whole directory is skipped, with the reason, when either is missing:

    apt-get install -y chromium          # /usr/bin/chromium
    pip install 'playwright>=1.50,<2'    # never `playwright install`: we bring our own browser

Every server of these tests serves a copy of ``static/`` with the test page
(``harness.html``) added, so the page is a real document of the service's origin.
One Chromium serves the whole run, so the test modules run in the session's event loop
(``pytestmark = SESSION_LOOP``); each test gets a fresh context (profile).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from ..helpers import ServerProcess
from .support import CHROMIUM, CHROMIUM_ARGS, HARNESS, STATIC, ConsoleLog
from .screenshot import VIEWPORT

HERE = Path(__file__).parent


def _missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"browser tests need Chromium at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "browser tests need the playwright package (pip install 'playwright>=1.50,<2')"
    return None


MISSING = _missing()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=MISSING)
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``static/`` as it is, plus the harness page."""
    site = tmp_path_factory.mktemp("site") / "static"
    shutil.copytree(STATIC, site)
    shutil.copy(HARNESS, site / HARNESS.name)
    return site


@pytest.fixture
def make_server(make_server: Callable[..., ServerProcess], site_dir: Path) -> Callable[..., ServerProcess]:
    """The common ``make_server``, serving ``site_dir`` as its static files."""
    def make(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> ServerProcess:
        return make_server(*args, env={"SSE_NOTIFY_STATIC_DIR": str(site_dir), **(env or {})}, **kwargs)
    return make


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """One Chromium for the whole run; each test gets its own context (profile)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Any) -> AsyncIterator[Any]:
    """A fresh profile: its own localStorage, cookies and SharedWorkers."""
    async with await browser.new_context(viewport=VIEWPORT) as ctx:  # the README screenshot's
        ctx.set_default_timeout(10_000)
        yield ctx


@pytest_asyncio.fixture(loop_scope="session")
async def console(context: Any) -> ConsoleLog:
    """The console errors of every page of ``context``. Set up in the browser's loop: its
    listeners start tasks there, also when other tests' loops ran since (the parallel run
    puts other test files between the browser's)."""
    return ConsoleLog(context)
