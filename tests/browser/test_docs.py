"""``/docs`` in a real Chromium: Swagger UI, served by the service itself, renders every
operation of ``/openapi.json`` with its summary, description and examples, without a
single request leaving the machine and without console errors."""

from __future__ import annotations

from typing import Any

import httpx

from ..helpers import ServerProcess
from .support import SESSION_LOOP, ConsoleLog

pytestmark = SESSION_LOOP


async def test_docs_renders_the_reference_with_nothing_from_outside(
        server: ServerProcess, context: Any, console: ConsoleLog) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    summaries = sorted(op["summary"] for item in doc["paths"].values() for op in item.values())
    local, outside = [], []

    async def only_local(route: Any) -> None:
        url = route.request.url
        if url.startswith(server.url + "/"):
            local.append(url)
            await route.continue_()
        else:  # refused here, so the page cannot depend on it even where a network exists
            outside.append(url)
            await route.abort()

    await context.route("**/*", only_local)
    page = await context.new_page()
    await page.goto(f"{server.url}/docs")
    publish = page.locator(".opblock-post", has=page.locator(
        ".opblock-summary-path[data-path='/notifications']")).filter(has_text="Publish a notification")
    await publish.wait_for()
    shown = await page.eval_on_selector_all(
        ".opblock-summary-description", "(els) => els.map((e) => e.textContent.trim())")
    assert sorted(shown) == summaries  # every operation, each with its summary

    await publish.locator(".opblock-summary").click()  # open it: description and examples
    body = publish.locator(".opblock-body")
    await body.get_by_text("Idempotency-Key", exact=False).first.wait_for()
    text = await body.inner_text()
    assert "durably committed" in text and "Invoice #1042 paid" in text
    assert "Quart" not in await page.inner_text("body")

    assert outside == []
    assert {url.removeprefix(server.url) for url in local} >= {
        "/docs", "/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/static/vendor/swagger-ui/swagger-ui.css", "/static/docs.js", "/openapi.json"}
    assert console.errors == []
