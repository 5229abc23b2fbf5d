"""The demo page at ``/`` in a real Chromium: it loads and works with no console errors, and
its tabs share one stream, so marking read in one updates the badge of another."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..helpers import ServerProcess
from .screenshot import VIEWPORT, stage_demo
from .support import SESSION_LOOP, ConsoleLog, open_streams

pytestmark = SESSION_LOOP

BADGE = "document.querySelector('#unread').textContent"


async def test_demo_page_works_without_console_errors(
        server: ServerProcess, context: Any, console: ConsoleLog, tmp_path: Path) -> None:
    page = await stage_demo(context, server)
    titles = await page.eval_on_selector_all("#inbox .item .title", "(els) => els.map((e) => e.textContent)")
    assert titles == ["New comment on your post", "Disk almost full", "Build failed on main",
                      "Invoice #1042 paid", "Welcome to sse-notify"]  # newest first
    assert await page.eval_on_selector_all("#inbox .item.read .title", "(els) => els.map((e) => e.textContent)") \
        == ["Welcome to sse-notify"]
    assert (await page.text_content("#status-text")).startswith("live")
    assert await page.title() == "(4) sse-notify demo"
    png = await page.screenshot(path=tmp_path / "demo.png", animations="disabled")
    assert png.startswith(b"\x89PNG") and page.viewport_size == VIEWPORT
    assert console.errors == []


async def test_marking_read_in_one_tab_updates_the_badge_in_another(
        server: ServerProcess, context: Any, console: ConsoleLog) -> None:
    ids = [*await server.publish(user="alice", title="one"), *await server.publish(user="alice", title="two")]
    first = await context.new_page()
    await first.goto(f"{server.url}/#token={server.token('alice')}")  # kept in localStorage
    second = await context.new_page()
    await second.goto(server.url + "/")  # picks up the same token
    for page in (first, second):
        await page.wait_for_function(f"{BADGE} === '2'")
    assert await open_streams(server.url) == (1, 0)  # two tabs, one stream

    await first.click(f"#inbox .item[data-id='{ids[0]}'] .read-btn")
    await second.wait_for_function(f"{BADGE} === '1'")
    assert await second.get_attribute(f"#inbox .item[data-id='{ids[0]}']", "class") == "item read"
    await first.wait_for_function(f"{BADGE} === '1'")
    assert console.errors == []
