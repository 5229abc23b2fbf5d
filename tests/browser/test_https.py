"""``serve --certfile --keyfile``: HTTPS with HTTP/2 through Hypercorn, so many streams of
one page multiplex over one connection, even without sharing them between tabs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from ..helpers import ServerProcess
from .support import (
    SESSION_LOOP, ConsoleLog, open_harness, open_streams, self_signed_certificate, start_client, wait_ids,
    wait_state,
)

pytestmark = SESSION_LOOP

STREAMS = 20


async def test_twenty_streams_from_one_page_over_http2(
        make_server: Callable[..., ServerProcess], browser: Any, tmp_path: Path) -> None:
    certfile, keyfile = self_signed_certificate(tmp_path)
    server = make_server("--certfile", str(certfile), "--keyfile", str(keyfile))
    origin = server.url.replace("http://", "https://")
    async with await browser.new_context(ignore_https_errors=True) as context:  # a self-signed certificate
        console = ConsoleLog(context)
        page = await open_harness(context, origin)
        assert await page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol") == "h2"

        # One connection per client: over HTTP/1.1 the browser would open at most six to the
        # server and the seventh stream would wait forever; over HTTP/2 all share one.
        token = server.token("alice")
        for _ in range(STREAMS):
            await start_client(page, token, shared=False)
        for index in range(STREAMS):
            assert (await wait_state(page, "open", index))["mode"] == "direct"
        assert await open_streams(origin) == (STREAMS, 0)

        async with httpx.AsyncClient(base_url=origin, verify=False, timeout=10.0) as http:
            ids = await server.publish(http, user="alice", title="over HTTP/2")
            ids += await server.publish(http, user="alice", title="and again")
        for index in range(STREAMS):
            await wait_ids(page, ids, index)
        assert console.errors == []
