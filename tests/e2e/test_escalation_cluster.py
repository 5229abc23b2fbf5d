"""Escalation on three PostgreSQL nodes: every node polls for due escalations, and each
(notification, user) webhook is sent once by the whole cluster, signed with the secret
the database keeps (``sse-notify webhook-secret --store``); one read on any node keeps it
from being sent by every node."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import orjson
import pytest
from standardwebhooks import Webhook

from ..helpers import ServerProcess, poll, uid
from ..services import create_database, drop_database
from ..webhook_receiver import Receiver
from .wsclient import metrics


def cli(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "sse_notify", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def store_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def nodes(store_url: str, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        for i in range(3):  # all three poll often: they race for every due row
            started.append(ServerProcess(tmp_path_factory.mktemp(f"enode{i}"), "--store", store_url,
                                         "--webhook-url", receiver.url, "--escalation-poll", "0.05").start())
        yield started
    finally:
        for node in started:
            node.stop()


async def pending(node: ServerProcess) -> float:
    return (await metrics(node)).get("sse_notify_escalations_pending", -1)


async def test_each_escalation_fires_once_for_the_cluster(nodes: list[ServerProcess], receiver: Receiver,
                                                          store_url: str) -> None:
    publisher = {"Authorization": f"Bearer {cli('token', '--publisher', 'backend', '--store', store_url)}"}
    users = [uid("race") for _ in range(30)]
    reader = users[0]
    token = cli("token", reader, "--store", store_url)  # now: it must be read well within 5 s
    async with nodes[0].client() as c:
        resp = await c.post("/notifications", headers=publisher, content=orjson.dumps(
            {"users": users, "title": "x", "escalate": {"after": "5s", "unless": "read"}}))
        assert resp.status_code == 201, resp.text
        ids = resp.json()["ids"]
    async with nodes[2].client() as c:
        assert (await c.post(f"/notifications/{ids[0]}/read", headers={"Authorization": f"Bearer {token}"})).status_code == 204
    wanted = set(users[1:])
    await receiver.wait(lambda rs: wanted <= {r.json["user"] for r in rs}, timeout=30)
    for node in nodes:  # every node's next poll finds nothing left: no late second copy can come
        assert await poll(lambda node=node: _none_pending(node), 10)
    requests = [r for r in receiver.requests if r.json["user"] in users]
    assert sorted(r.id for r in requests) == sorted(f"esc_{i}_{u}" for i, u in zip(ids[1:], users[1:]))
    secret = cli("webhook-secret", "--store", store_url)
    for r in requests:
        Webhook(secret).verify(r.body, r.headers)
    sent = [(await metrics(node)).get("sse_notify_webhooks_sent_total", 0) for node in nodes]
    assert sum(sent) == len(users) - 1


async def _none_pending(node: ServerProcess) -> bool:
    return await pending(node) == 0
