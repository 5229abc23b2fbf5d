"""The README's Flask example (``docs/examples/flask_app.py``, included there verbatim) run
as written: its app, through Flask's test client, publishes with the SDK to a real server,
and the notification arrives on the customer's open stream."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from ..helpers import ServerProcess, open_sse, uid

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "flask_app.py"


def load_example(monkeypatch: pytest.MonkeyPatch, server: ServerProcess) -> ModuleType:
    monkeypatch.setenv("NOTIFY_URL", server.url)
    monkeypatch.setenv("NOTIFY_TOKEN", server.publisher_token("shop"))
    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_flask_example_publishes_to_the_customers_stream(shared: ServerProcess,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    example = load_example(monkeypatch, shared)
    customer = uid("customer")
    async with open_sse(shared, shared.token(customer)) as stream:
        browser = example.app.test_client()  # a request in a thread, as a WSGI server runs it
        answer = await asyncio.to_thread(browser.post, "/orders/17/ship", json={"customer": customer})
        assert answer.status_code == 200, answer.text
        [got] = await stream.notifications(1)
    example.notify.close()
    assert answer.json == {"notification": got["id"]}
    assert (got["user"], got["title"], got["priority"], got["data"]) == (
        customer, "Your order has shipped", "high", {"order": 17})


def test_the_example_is_short_enough_for_the_readme() -> None:
    code = [line for line in EXAMPLE.read_text().splitlines() if line.strip()]
    assert len(code) <= 12, "the README promises a ten-line example"


def test_the_readme_shows_the_flask_example_verbatim() -> None:
    assert EXAMPLE.read_text().strip() in (EXAMPLE.parents[2] / "README.md").read_text()
