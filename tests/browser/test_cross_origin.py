"""``--allow-origin`` from real pages on other origins (other loopback ports): an allowed
origin loads the library from the service and streams with credentials (the token in a
cookie); the browser refuses the stream to an origin that is not allowed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..helpers import ServerProcess
from .support import SESSION_LOOP, ConsoleLog, PageServer, open_harness, start_client, statuses, wait_ids, wait_state

pytestmark = SESSION_LOOP


async def test_allowed_origin_streams_with_credentials_and_others_are_refused(
        make_server: Callable[..., ServerProcess], context: Any, console: ConsoleLog) -> None:
    with PageServer() as allowed, PageServer() as other:
        server = make_server("--allow-origin", allowed.origin)
        await context.add_cookies([{"name": "sse_notify_token", "value": server.token("alice"), "url": server.url}])

        # The library straight from the service: its default URL is the service. A
        # SharedWorker cannot start from another origin's script, so the tabs elect a leader.
        page = await open_harness(context, allowed.origin, f"/harness.html?lib={server.url}/static/sse-notify.js")
        await start_client(page, withCredentials=True)
        status = await wait_state(page, "open")
        assert status["user"] == "alice" and status["mode"] == "leader"
        [nid] = await server.publish(user="alice", title="across origins")
        await wait_ids(page, [nid])
        history = await page.evaluate("window.clients[0].client.history()")
        assert [n["id"] for n in history["notifications"]] == [nid]
        assert console.errors == []

        # Another origin (the library from its own origin; one connection in the page, so
        # the browser's refusal shows in its console): the server answers, the browser
        # does not let the page read it.
        refused = await open_harness(context, other.origin, "/harness.html")
        await start_client(refused, url=server.url, withCredentials=True, shared=False,
                           backoff={"initial": 200, "max": 1000})
        await refused.wait_for_function(
            "window.clients[0].log.statuses.filter((s) => s.state === 'reconnecting' && s.retryIn !== null)"
            ".length >= 2")
        assert not any(s["state"] == "open" for s in await statuses(refused))
        assert any("blocked by CORS policy" in e and other.origin in e for e in console.errors)
        assert await refused.evaluate("window.clients[0].log.notifications") == []
