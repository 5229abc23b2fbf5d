"""sse_notify.transports, in process: what a stream answers when storage fails before its
response started (the response starts only once the stream is subscribed and its user's
state read, so the failure can still be answered as an error)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sse_notify.config import Settings
from sse_notify.service import Service
from sse_notify.store import StoreUnavailable
from sse_notify.transports import SSEEndpoint, WebSocketEndpoint


@pytest.fixture
async def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    svc = Service(Settings.from_env({}, data_dir=tmp_path / "data"))
    await svc.start()

    async def state(user: str) -> tuple[int, int, int]:
        raise StoreUnavailable("disk I/O error")

    monkeypatch.setattr(svc.store, "state", state)
    yield svc
    await svc.stop()


def scope(service: Service, kind: str, path: str) -> dict[str, Any]:
    token = service.signer.subscriber("alice", ttl=60)
    return {"type": kind, "method": "GET", "path": path, "headers": [],
            "query_string": f"token={token}".encode()}


async def test_sse_answers_503_json_when_state_cannot_be_read(service: Service) -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await SSEEndpoint(service)(scope(service, "http", "/events"), _never, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert orjson.loads(sent[1]["body"])["error"] == "unavailable"
    assert service.hub.count() == 0 and service.slots._open == 0


async def test_ws_accepts_then_closes_1011_when_state_cannot_be_read(service: Service) -> None:
    sent: list[dict[str, Any]] = []
    messages = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else await _never()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await WebSocketEndpoint(service)(scope(service, "websocket", "/ws"), receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert sent[1]["code"] == 1011
    assert service.hub.count() == 0 and service.slots._open == 0


async def _never() -> dict[str, Any]:
    """A client that neither sends nor leaves."""
    await asyncio.Event().wait()
    raise AssertionError("unreachable")
