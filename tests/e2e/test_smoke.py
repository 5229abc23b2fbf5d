"""The quick start, as a user does it: subscribe, publish, see it arrive."""

from __future__ import annotations

from ..helpers import ServerProcess, open_sse


async def test_published_notification_reaches_open_stream(server: ServerProcess) -> None:
    async with open_sse(server, server.token("alice")) as stream:
        assert stream.retry == 3000
        assert stream.hello.json() == {"user": "alice", "newest_id": 0, "unread": 0, "replay": "live"}
        [nid] = await server.publish(user="alice", title="Hello", data={"k": [1, 2]})
        [event] = await stream.notifications(1)
    assert event["id"] == nid
    assert event["title"] == "Hello" and event["data"] == {"k": [1, 2]} and event["read"] is False
