"""The demo page with a realistic inbox, shared by its test and the README's screenshot.

    .venv/bin/python -m tests.browser.screenshot     # writes static/screenshot.png

starts a server on a loopback port with a temporary data directory, stages the demo in
Debian's Chromium (see ``stage_demo``) and saves the screenshot.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from ..helpers import ServerProcess
from .support import CHROMIUM, CHROMIUM_ARGS, STATIC

SCREENSHOT = STATIC / "screenshot.png"
VIEWPORT = {"width": 1280, "height": 900}  # tall enough for the Sent list under Publisher

INBOX = [
    {"title": "Welcome to sse-notify", "body": "Notifications arrive live, and a reconnect replays what you missed.",
     "priority": "low"},
    {"title": "Invoice #1042 paid", "body": "EUR 129.00 received from ACME Corp.", "topic": "billing"},
    {"title": "Build failed on main", "body": "3 tests failed in test_replay.py", "priority": "high", "topic": "ci"},
    {"title": "Disk almost full", "body": "db-1: 95% used", "priority": "urgent", "topic": "ops"},
]


async def stage_demo(context: Any, server: ServerProcess) -> Any:
    """Open the demo for alice with four notifications, mark the oldest read with its
    button, then send a fifth with the page's own form. Returns the page, showing five
    items, four of them unread."""
    for notification in INBOX:
        await server.publish(user="alice", **notification)
    page = await context.new_page()
    await page.goto(f"{server.url}/#token={server.token('alice')}")
    await page.wait_for_function("document.querySelector('#status').dataset.state === 'open'")
    await page.wait_for_function("document.querySelectorAll('#inbox .item').length === 4")
    await page.click("#inbox .item:last-child .read-btn")  # the oldest: the welcome note
    await page.wait_for_function("document.querySelector('#unread').textContent === '3'")

    await page.fill("#pub-token", server.publisher_token("demo"))
    await page.fill("#send-title", "New comment on your post")
    await page.fill("#send-body", "Bob: looks great, ship it!")
    await page.click("#send-form button[type=submit]")
    await page.wait_for_function("document.querySelectorAll('#inbox .item').length === 5")
    await page.wait_for_function("document.querySelector('#unread').textContent === '4'")
    return page


async def main() -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp)).start()
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = await browser.new_context(viewport=VIEWPORT)
                page = await stage_demo(context, server)
                # The Sent list shows its receipt (flushed within a second, polled each second).
                await page.locator("#sent").get_by_text("delivered").first.wait_for(timeout=10_000)
                await page.screenshot(path=SCREENSHOT, animations="disabled")
                await browser.close()
        finally:
            server.stop()
    print(f"wrote {SCREENSHOT}")


if __name__ == "__main__":
    asyncio.run(main())
