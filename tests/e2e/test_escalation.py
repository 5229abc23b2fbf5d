"""Escalation webhooks end to end, on one SQLite node: a real HTTP receiver started by
the test gets a Standard Webhooks request (verified with ``standardwebhooks`` and the
secret ``sse-notify webhook-secret`` prints) when a notification is still unread (or
undelivered) ``after`` its time; never when the condition was met in time; again after
the receiver answered 500 or hung (same ``webhook-id``); and after the node that
scheduled it was SIGKILLed. Bad input gets the contract's 422.

The server polls for due escalations every 0.2 s (``--escalation-poll``) and gives a
receiver 1 s (``--webhook-timeout``); ``after`` is the minimum, 5 s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from sse_notify.cli import main

from ..helpers import ServerProcess, assert_error, open_sse, poll, uid
from ..webhook_receiver import Receiver
from .wsclient import metrics

FAST = ("--escalation-poll", "0.2", "--webhook-timeout", "1")


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def server(receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = ServerProcess(tmp_path_factory.mktemp("esc"), "--webhook-url", receiver.url, *FAST).start()
    yield s
    s.stop()


def webhook_secret(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "sse_notify", "webhook-secret", *args],
                         check=True, capture_output=True, text=True).stdout
    return out.strip()


def verify(secret: str, request: Any) -> dict[str, Any]:
    return Webhook(secret).verify(request.body, request.headers)


async def publish(server: ServerProcess, body: Any, expect: int = 201) -> Any:
    async with server.client() as c:
        resp = await c.post("/notifications", content=orjson.dumps(body),
                            headers={"Authorization": f"Bearer {server.publisher_token()}"})
    assert resp.status_code == expect, resp.text
    return resp


async def moot(server: ServerProcess) -> float:
    return (await metrics(server)).get("sse_notify_escalations_moot_total", 0)


async def test_fires_signed_when_unread_and_not_when_read_in_time(server: ServerProcess, receiver: Receiver) -> None:
    secret = webhook_secret("--data-dir", str(server.data_dir))
    assert secret.startswith("whsec_")
    user = uid("esc")
    escalate = {"after": "5s", "unless": "read"}
    moot_before = await moot(server)
    read_in_time = (await publish(server, {"user": user, "title": "read me", "escalate": escalate})).json()["ids"][0]
    started = time.time()
    [unread] = (await publish(server, {"user": user, "title": "ignored", "topic": "t", "escalate": escalate})).json()["ids"]
    async with server.client() as c:
        resp = await c.post(f"/notifications/{read_in_time}/read",
                            headers={"Authorization": f"Bearer {server.token(user)}"})
        assert resp.status_code == 204
    await receiver.wait(lambda rs: any(r.json.get("user") == user for r in rs))
    assert time.time() - started >= 4.9
    [request] = receiver.for_user(user)
    payload = verify(secret, request)  # raises on a bad signature
    assert request.id == f"esc_{unread}_{user}"
    assert payload["type"] == "notification.unread" and payload["user"] == user
    assert payload["notification"]["id"] == unread and payload["notification"]["title"] == "ignored"
    assert payload["notification"]["topic"] == "t" and payload["notification"]["read"] is False
    with pytest.raises(WebhookVerificationError):  # another secret: refused
        Webhook("whsec_" + "A" * 43 + "=").verify(request.body, request.headers)
    # The one read in time was looked at (it came due first) and dropped, never sent.
    assert await poll(lambda: _more(server, moot_before), 5)
    assert [r.id for r in receiver.for_user(user)] == [f"esc_{unread}_{user}"]
    values = await metrics(server)
    assert values["sse_notify_webhooks_sent_total"] >= 1


async def _more(server: ServerProcess, before: float) -> bool:
    return await moot(server) > before


async def test_unless_delivered_with_and_without_a_stream(server: ServerProcess, receiver: Receiver) -> None:
    online, offline = uid("on"), uid("off")
    moot_before = await moot(server)
    async with open_sse(server, server.token(online)) as stream:
        ids = (await publish(server, {"users": [online, offline], "title": "x",
                                      "escalate": {"after": "5s", "unless": "delivered"}})).json()["ids"]
        await stream.notifications(1)
        await receiver.wait(lambda rs: any(r.json.get("user") == offline for r in rs))
        [request] = receiver.for_user(offline)
    assert request.json["type"] == "notification.undelivered" and request.json["notification"]["id"] == ids[1]
    assert await poll(lambda: _more(server, moot_before), 5)
    assert receiver.for_user(online) == []


async def test_retried_after_500_and_a_hang_with_the_same_webhook_id(server: ServerProcess, receiver: Receiver) -> None:
    user = uid("retry")
    receiver.plans[user] = ["500", "hang"]
    [nid] = (await publish(server, {"user": user, "title": "x", "escalate": {"after": "5s", "unless": "read"}})).json()["ids"]
    await receiver.wait(lambda rs: sum(r.json.get("user") == user for r in rs) >= 3, timeout=30)
    requests = receiver.for_user(user)
    assert [r.id for r in requests] == [f"esc_{nid}_{user}"] * 3
    secret = webhook_secret("--data-dir", str(server.data_dir))
    for r in requests:
        verify(secret, r)
    values = await metrics(server)
    assert values["sse_notify_webhook_failures_total"] >= 2


async def test_bad_escalations_are_422(server: ServerProcess, tmp_path: Path) -> None:
    base = {"user": "alice", "title": "x"}
    for escalate, words in [({"after": "4s", "unless": "read"}, "between 5s and 7d"),
                            ({"after": "8d", "unless": "read"}, "between 5s and 7d"),
                            ({"after": "soon", "unless": "read"}, "duration"),
                            ({"after": "10m", "unless": "opened"}, "unless"),
                            ({"after": 600, "unless": "read"}, "after"),
                            ({"after": "10m", "unless": "read", "to": "x"}, "escalate.to")]:
        resp = await publish(server, {**base, "escalate": escalate}, expect=422)
        assert words in assert_error(resp, 422)["message"], (escalate, resp.text)
    resp = await publish(server, {"broadcast": True, "title": "x", "escalate": {"after": "10m"}}, expect=422)
    assert "broadcast" in assert_error(resp, 422)["message"]
    resp = await publish(server, [base, {**base, "escalate": {"after": "1s"}}], expect=422)
    assert assert_error(resp, 422)["message"].startswith("[1].escalate")
    plain = ServerProcess(tmp_path / "plain").start()  # no --webhook-url
    try:
        resp = await publish(plain, {**base, "escalate": {"after": "10m", "unless": "read"}}, expect=422)
        assert "webhook" in assert_error(resp, 422)["message"]
        resp = await publish(plain, [base, {**base, "escalate": {"after": "10m"}}], expect=422)
        assert assert_error(resp, 422)["message"].startswith("[1].escalate")
        await publish(plain, base)  # without escalate: as ever
    finally:
        plain.stop()


def test_a_webhook_url_that_is_not_http_is_a_one_line_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for url in ("ftp://example.com/hook", "example.com/hook", "http://"):
        assert main(["serve", "--data-dir", str(tmp_path), "--webhook-url", url]) == 2
        err = capsys.readouterr().err
        assert "webhook_url must be an http:// or https:// URL" in err and "Traceback" not in err


def test_webhook_secret_is_never_invented(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webhook-secret", "--data-dir", str(tmp_path)]) == 1
    assert "only `sse-notify serve` creates one" in capsys.readouterr().err
    assert not (tmp_path / "webhook.key").exists()


async def test_survives_a_sigkill_of_the_node_that_scheduled_it(receiver: Receiver, tmp_path: Path) -> None:
    node = ServerProcess(tmp_path / "killed", "--webhook-url", receiver.url, *FAST).start()
    try:
        user = uid("kill")
        [nid] = (await publish(node, {"user": user, "title": "x", "escalate": {"after": "5s"}})).json()["ids"]
        node.kill()  # right after the 201: only the database knows
        node.start()
        await receiver.wait(lambda rs: any(r.json.get("user") == user for r in rs))
        [request] = receiver.for_user(user)
        assert request.id == f"esc_{nid}_{user}"
        verify(webhook_secret("--data-dir", str(node.data_dir)), request)
    finally:
        node.stop()
