"""Key rotation against the real server: ``sse-notify rotate-secret`` then a restart.

Tokens signed with the previous secret keep working on every endpoint during the grace
period and stop working when it ends, while the server keeps running; new tokens are
signed with the new secret.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable

from sse_notify.config import load_secret
from sse_notify.tokens import TokenSigner

from ..helpers import ServerProcess, open_sse

GRACE_SECONDS = 4


def rotate(server: ServerProcess, grace: str) -> None:
    subprocess.run([sys.executable, "-m", "sse_notify", "rotate-secret", "--data-dir",
                    str(server.data_dir), "--grace", grace], check=True, capture_output=True)


async def test_previous_secret_is_accepted_for_the_grace_period_only(
        make_server: Callable[..., ServerProcess]) -> None:
    server = make_server()
    old = TokenSigner(load_secret(server.data_dir))
    old_sub, old_pub = old.subscriber("alice"), old.publisher("backend")
    await asyncio.to_thread(server.stop)
    rotate(server, f"{GRACE_SECONDS}s")
    rotated_at = time.time()
    await asyncio.to_thread(server.start)
    new = TokenSigner(load_secret(server.data_dir))
    assert new.verify_subscriber(server.token("bob")).subject == "bob"  # helpers sign anew

    async with server.client() as c:
        # within the grace period the old tokens work: publish, history, stream
        resp = await c.post("/notifications", json={"user": "alice", "title": "old pub"},
                            headers={"Authorization": f"Bearer {old_pub}"})
        assert resp.status_code == 201, resp.text
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {old_sub}"})
        assert [n["title"] for n in resp.json()["notifications"]] == ["old pub"]
        async with open_sse(server, old_sub, query="last_event_id=0") as stream:
            assert (await stream.next_of("notification")).json()["title"] == "old pub"
        # a token minted now verifies only under the new secret
        resp = await c.post("/tokens", json={"user": "carol"}, headers={"Authorization": f"Bearer {old_pub}"})
        assert new.verify_subscriber(resp.json()["token"]).subject == "carol"

        while time.time() < rotated_at + GRACE_SECONDS + 0.5:  # the grace period runs out
            await asyncio.sleep(0.1)
        for method, path, token in (("GET", "/notifications", old_sub), ("GET", "/events", old_sub),
                                    ("POST", "/tokens", old_pub)):
            resp = await c.request(method, path, headers={"Authorization": f"Bearer {token}"})
            assert resp.status_code == 401, (path, resp.status_code)
            assert resp.json()["error"] == "unauthorized"
        resp = await c.get("/notifications", headers={"Authorization": f"Bearer {server.token('alice')}"})
        assert resp.status_code == 200
