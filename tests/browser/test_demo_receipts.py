"""The demo page's Sent list in a real Chromium: what the page published shows "sent", then
"delivered" once its own stream got it, then "read" once marked read in the inbox, from
``GET /notifications/<id>/status`` polled once a second; polling stops when everything is
read or there is no publisher token to ask with, and errors show beside the list."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.async_api import expect

from ..helpers import ServerProcess, uid
from .support import SESSION_LOOP, ConsoleLog, eventually

pytestmark = SESSION_LOOP


async def open_demo(context: Any, server: ServerProcess, user: str) -> Any:
    page = await context.new_page()
    await page.goto(f"{server.url}/#token={server.token(user)}")
    await expect(page.locator("#status")).to_have_attribute("data-state", "open")
    await page.fill("#pub-token", server.publisher_token("demo"))
    return page


async def send(page: Any, to: str = "", title: str = "Receipts, please") -> int:
    """Send with the page's form; returns the id it says it sent."""
    before = await page.text_content("#send-msg")
    await page.fill("#send-user", to)
    await page.fill("#send-title", title)
    await page.click("#send-form button[type=submit]")
    await page.wait_for_function("(before) => document.querySelector('#send-msg').textContent !== before",
                                 arg=before)
    msg = await page.text_content("#send-msg")
    assert msg.startswith("Sent #"), msg
    return int(msg.removeprefix("Sent #").split(" ")[0])


async def receipt(server: ServerProcess, id: int, user: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
        resp = await client.get(f"/notifications/{id}/status",
                                headers={"Authorization": f"Bearer {server.publisher_token()}"})
    resp.raise_for_status()
    return resp.json()["users"][user]


async def test_a_sent_notification_goes_delivered_then_read_and_polling_stops(
        server: ServerProcess, context: Any, console: ConsoleLog) -> None:
    user = uid()
    page = await open_demo(context, server, user)
    polled: list[int] = []  # ids of the status requests, in order
    page.on("request", lambda r: r.url.endswith("/status") and polled.append(int(r.url.split("/")[-2])))
    assert await page.is_hidden("#sent-box")  # nothing sent yet

    id = await send(page)  # to the page's own user
    entry = page.locator(f"#sent .sent-item[data-id='{id}']")
    await expect(entry).to_have_attribute("data-state", "delivered")  # the page's own stream got it
    assert await entry.locator(".sent-id").text_content() == f"#{id}"
    assert await entry.locator(".sent-to").text_content() == user
    await expect(entry.locator(".sent-state")).to_have_text(re.compile(r"^delivered \S"))
    delivered = (await receipt(server, id, user))["delivered_at"]
    assert await entry.locator(".sent-state time").get_attribute("datetime") == delivered
    await expect(page.locator("#sent")).to_have_attribute("data-polling", "true")  # not read yet

    await page.click(f"#inbox .item[data-id='{id}'] .read-btn")
    await expect(entry).to_have_attribute("data-state", "read")
    state = await entry.locator(".sent-state").text_content()
    assert re.fullmatch(r"delivered \S.*, read \S.*", state), state
    read_at = (await receipt(server, id, user))["read_at"]
    assert await entry.locator(".sent-state time").nth(1).get_attribute("datetime") == read_at
    await expect(page.locator("#sent")).to_have_attribute("data-polling", "false")  # all read

    # One to a user with no stream: it stays "sent", and only it is polled, newest first.
    seen = len(polled)
    offline = uid("offline")
    other = await send(page, to=offline)
    await expect(page.locator("#sent")).to_have_attribute("data-polling", "true")
    await eventually(lambda: _polled_twice(polled, seen, other), what=f"two polls of #{other}")
    assert id not in polled[seen:], "a read entry is polled no more"
    assert await page.eval_on_selector_all("#sent .sent-item", "(els) => els.map((e) => +e.dataset.id)") \
        == [other, id]
    assert await page.get_attribute(f"#sent .sent-item[data-id='{other}']", "data-state") == "sent"
    assert await page.text_content(f"#sent .sent-item[data-id='{other}'] .sent-state") == "sent"

    await page.fill("#pub-token", "")  # no publisher token: nothing to ask with
    await expect(page.locator("#sent")).to_have_attribute("data-polling", "false")
    assert await page.text_content("#sent-msg") == ""
    assert console.errors == []


async def _polled_twice(polled: list[int], since: int, id: int) -> bool:
    return polled[since:].count(id) >= 2


async def test_the_list_keeps_the_newest_five_and_a_refused_token_shows_beside_it(
        server: ServerProcess, context: Any) -> None:
    page = await open_demo(context, server, uid())
    ids = [await send(page, to=uid("offline"), title=f"n{i}") for i in range(6)]
    await expect(page.locator("#sent .sent-item")).to_have_count(5)
    assert await page.eval_on_selector_all("#sent .sent-item", "(els) => els.map((e) => +e.dataset.id)") \
        == ids[:0:-1]  # newest first, the oldest dropped

    await page.fill("#pub-token", "not.a.token")  # polling asks with it, is refused, and stops
    await expect(page.locator("#sent-msg")).to_have_class("msg error")
    assert "#" in await page.text_content("#sent-msg")
    await expect(page.locator("#sent")).to_have_attribute("data-polling", "false")
    gap = (await page.locator("#sent-msg").bounding_box())["y"] - (await _bottom(page, "#sent"))
    assert 0 <= gap < 24, f"#sent-msg is {gap}px from the list"

    await page.fill("#pub-token", server.publisher_token("demo"))  # a good token: polling resumes
    await expect(page.locator("#sent")).to_have_attribute("data-polling", "true")
    await expect(page.locator("#sent-msg")).to_have_text("")


async def _bottom(page: Any, selector: str) -> float:
    box = await page.locator(selector).bounding_box()
    return box["y"] + box["height"]
