"""The demo page at phone width (390x844, as a phone: mobile viewport, touch) and on a
desktop: nothing wider than the screen, every control on screen and not covered, words
that do not depend on where the panels sit, and each message beside the control it is
about: a refused token says so beside Connect, and the inbox says "not connected"."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from ..helpers import ServerProcess, uid
from .screenshot import stage_demo
from .support import SESSION_LOOP, ConsoleLog

pytestmark = SESSION_LOOP

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 3}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
LAYOUTS = [pytest.param(PHONE, id="phone"), pytest.param(DESKTOP, id="desktop")]

#: Every control a visitor can see, and what is wrong with it: off the sides of the
#: viewport, no size, or covered by something else once scrolled to. Skips controls
#: hidden on purpose (``hidden``, or the "Mark read" of an item already read).
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  for (const el of document.querySelectorAll("button, input, select, textarea")) {
    if (el.closest("[hidden], template") || getComputedStyle(el).visibility === "hidden") continue;
    const name = el.id || el.textContent.trim() || el.getAttribute("aria-label");
    el.scrollIntoView({ block: "center", inline: "center" });
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 1) { problems.push(`${name}: no size`); continue; }
    if (r.left < 0 || r.right > innerWidth) problems.push(`${name}: ${r.left}..${r.right} of ${innerWidth}`);
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    if (!(hit === el || el.contains(hit))) problems.push(`${name}: covered by ${hit?.outerHTML.slice(0, 60)}`);
  }
  scrollTo(0, 0);
  return problems;
}"""

WIDTHS = "[document.documentElement.scrollWidth, innerWidth]"
#: Words that only hold in one arrangement of the panels.
POSITIONAL = re.compile(r"\b(on the (right|left)|to the (right|left)|above|below)\b", re.I)


@pytest_asyncio.fixture(loop_scope="session")
async def make_context(browser: Any) -> AsyncIterator[Any]:
    contexts: list[Any] = []

    async def make(options: dict[str, Any]) -> Any:
        ctx = await browser.new_context(**options)
        ctx.set_default_timeout(10_000)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        await ctx.close()


async def assert_fits(page: Any, width: int) -> None:
    scroll_width, inner_width = await page.evaluate(WIDTHS)
    assert inner_width == width and scroll_width <= inner_width, (scroll_width, inner_width)
    assert await page.evaluate(LAYOUT_PROBLEMS) == []
    for button in await page.query_selector_all("button:not([hidden])"):
        if await button.evaluate("(b) => getComputedStyle(b).visibility === 'hidden' || !!b.closest('[hidden]')"):
            continue
        assert await button.is_visible(), await button.text_content()
        box = await button.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width, await button.text_content()
    assert not POSITIONAL.search(await page.inner_text("body"))


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_every_control_fits_and_shows(server: ServerProcess, make_context: Any, layout: dict[str, Any]) -> None:
    context = await make_context(layout)
    console = ConsoleLog(context)
    width = layout["viewport"]["width"]

    page = await context.new_page()  # a first visit: no token yet
    await page.goto(server.url + "/")
    await page.wait_for_function("document.querySelector('#inbox-empty').textContent !== ''")
    assert (await page.text_content("#inbox-empty")).lower().startswith("not connected")
    await assert_fits(page, width)
    hint = await page.text_content("#pub-token-hint")  # how to get a publisher token
    assert "sse-notify token --publisher NAME" in " ".join(hint.split())
    assert await page.is_visible("#pub-token-hint")
    await page.close()

    page = await stage_demo(context, server)  # a full inbox, a token in each field, a message
    await assert_fits(page, width)
    assert console.errors == []


async def bottom_of(page: Any, selector: str) -> float:
    box = await page.locator(selector).bounding_box()
    return box["y"] + box["height"]


async def assert_beside(page: Any, message: str, control: str) -> None:
    """``message`` shows, in red, within a line or two below ``control``."""
    assert await page.is_visible(message)
    assert "error" in (await page.get_attribute(message, "class")).split()
    gap = (await page.locator(message).bounding_box())["y"] - await bottom_of(page, control)
    assert 0 <= gap < 24, f"{message} is {gap}px from {control}"


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_a_refused_token_says_so_beside_connect_and_the_inbox_is_not_connected(
        server: ServerProcess, make_context: Any, layout: dict[str, Any]) -> None:
    context = await make_context(layout)
    page = await context.new_page()
    await page.goto(server.url + "/")
    await page.fill("#token", "not.a.token")
    await page.click("#connect-form button[type=submit]")
    await page.wait_for_function("document.querySelector('#connect-msg').textContent !== ''")
    await page.wait_for_function("document.querySelector('#status').dataset.state === 'unauthorized'")

    await assert_beside(page, "#connect-msg", "#connect-form .row")
    assert "refused" in (await page.text_content("#connect-msg")).lower()
    empty = await page.text_content("#inbox-empty")
    assert empty.lower().startswith("not connected") and "no notifications" not in empty.lower()
    for other in ("#inbox-msg", "#mint-msg", "#send-msg"):  # said once, in its place
        assert await page.text_content(other) == ""
    await assert_fits(page, layout["viewport"]["width"])

    # a publisher action's error shows in its own form, not under Connect
    await page.click("#mint-form button[type=submit]")  # no publisher token yet
    await page.wait_for_function("document.querySelector('#mint-msg').textContent !== ''")
    await assert_beside(page, "#mint-msg", "#mint-form .row")
    await page.click("#send-form button[type=submit]")  # no recipient: not connected
    await page.wait_for_function("document.querySelector('#send-msg').textContent !== ''")
    await assert_beside(page, "#send-msg", "#send-form .row:last-of-type")

    # a good token clears the refusal
    await page.fill("#token", server.token(uid()))
    await page.click("#connect-form button[type=submit]")
    await page.wait_for_function("document.querySelector('#status').dataset.state === 'open'")
    await page.wait_for_function("document.querySelector('#inbox-empty').textContent === 'No notifications yet.'")
    assert await page.text_content("#connect-msg") == ""
