"""One contract test body run against every Broker: memory, PostgreSQL (LISTEN/NOTIFY) and
Redis (pub/sub), on the real servers. A network broker's messages go from one instance to
another, as between two nodes; the in-process one is its own peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from sse_notify.broker import RESYNC, Broker, BrokerUnavailable, IdRange, open_broker
from sse_notify.broker.codec import decode, encode
from sse_notify.broker.postgres import PAYLOAD_LIMIT
from sse_notify.models import Notification, ReadChange

pytestmark = pytest.mark.timeout(30)


def note(id: int, title: str = "hello", **fields: object) -> Notification:
    values: dict = {"user": "alice", "topic": None, "body": None, "priority": "medium",
                    "data": None, "created_at": 1764064800123}
    values.update(fields)
    return Notification(id, values["user"], values["topic"], title, values["body"],
                        values["priority"], values["data"], values["created_at"])


@pytest.fixture(params=["memory", "postgres", "redis"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
async def pair(broker_url: str) -> AsyncIterator[tuple[Broker, Broker]]:
    """(publisher, subscriber): two nodes' brokers on one channel, both open."""
    publisher = open_broker(broker_url)
    subscriber = publisher if broker_url == "memory://" else open_broker(broker_url)
    await subscriber.open()
    if subscriber is not publisher:
        await publisher.open()
    yield publisher, subscriber
    await publisher.close()
    await subscriber.close()


async def receive(broker: Broker, count: int, timeout: float = 10.0) -> list:
    """The next ``count`` messages ``listen`` yields (batches flattened)."""
    got: list = []
    listening = broker.listen()
    async with asyncio.timeout(timeout):
        async for batch in listening:
            assert batch is not RESYNC, "no reconnection happened"
            got += list(batch)
            if len(got) >= count:
                break
    await listening.aclose()
    return got


async def test_publish_order_is_kept(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    sent = [note(i, data={"n": i}, topic="t" if i % 2 else None) for i in range(1, 301)]
    for start in range(0, 300, 3):  # as the store's commit listener calls it: batches in id order
        publisher.publish(sent[start:start + 3])
    assert await receive(subscriber, 300) == sent


async def test_read_changes_are_carried_in_order(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    publisher.publish([note(1), ReadChange("alice", (1,))])
    publisher.publish([ReadChange("bob", (1, 2, 3)), note(2, user=None)])
    assert await receive(subscriber, 4) == [
        note(1), ReadChange("alice", (1,)), ReadChange("bob", (1, 2, 3)), note(2, user=None)]


async def test_ping_answers_while_open(pair: tuple[Broker, Broker]) -> None:
    for broker in pair:
        await broker.ping()


async def test_close_ends_listen_and_reopen_works(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    listening = asyncio.create_task(receive(subscriber, 1_000_000))
    await asyncio.sleep(0)  # listening
    await subscriber.close()
    async with asyncio.timeout(5):
        assert await listening == []
    await subscriber.open()
    publisher.publish([note(7)])
    assert await receive(subscriber, 1) == [note(7)]


async def test_publish_never_blocks(pair: tuple[Broker, Broker]) -> None:
    publisher, subscriber = pair
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(1, 2001):
        publisher.publish([note(i)])
    assert loop.time() - started < 0.5  # queued, not sent in the caller's step
    got = await receive(subscriber, 2000)
    assert [n.id for n in got] == list(range(1, 2001))


# -- the network brokers ------------------------------------------------------------------

@pytest.mark.parametrize("url", ["postgresql://127.0.0.1:1/nothing", "redis://127.0.0.1:1/0"])
async def test_an_unreachable_broker_refuses_to_open(url: str) -> None:
    broker = open_broker(url)
    with pytest.raises(BrokerUnavailable, match="cannot reach"):
        await broker.open()
    await broker.close()  # harmless after a failed open


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported broker URL scheme: 'foo'"):
        open_broker("foo://x")


async def test_postgres_sends_large_notifications_as_ids(postgres_url: str) -> None:
    publisher, subscriber = open_broker(postgres_url), open_broker(postgres_url)
    await subscriber.open()
    await publisher.open()
    try:
        big = "x" * 10_000  # over NOTIFY's 8,000 bytes
        many = ReadChange("alice", tuple(range(3000)))
        pieces = sum(len(decode(p)) for p in encode([many], PAYLOAD_LIMIT))
        assert pieces > 1
        publisher.publish([note(1), note(2, big), note(3, big), note(4), many])
        got = await receive(subscriber, 3 + pieces)
    finally:
        await publisher.close()
        await subscriber.close()
    assert got[:3] == [note(1), IdRange(2, 3), note(4)]
    assert all(isinstance(r, ReadChange) and r.user == "alice" for r in got[3:])
    assert [i for r in got[3:] for i in r.ids] == list(many.ids)


@pytest.mark.parametrize("limit", [PAYLOAD_LIMIT, 300])
def test_codec_splits_to_fit_and_round_trips(limit: int) -> None:
    sent = [note(i, "é" * (i * 7), data={"k": [i, None, "ü"]}) for i in range(1, 80)]
    sent.insert(10, ReadChange("bob", tuple(range(1, 2000))))
    payloads = encode(sent, limit)
    assert all(len(p) <= limit for p in payloads)
    got = [m for p in payloads for m in decode(p)]
    notes = [m for m in got if isinstance(m, Notification)]
    ranges = [m for m in got if isinstance(m, IdRange)]
    carried = {n.id for n in notes} | {i for r in ranges for i in range(r.first, r.last + 1)}
    assert carried == set(range(1, 80))
    assert notes == [n for n in sent if isinstance(n, Notification) and n.id in {m.id for m in notes}]
    reads = [i for m in got if isinstance(m, ReadChange) for i in m.ids]
    assert reads == list(range(1, 2000))
    assert encode(sent) == [encode(sent)[0]] and decode(encode(sent)[0]) == sent


@pytest.mark.parametrize("payload", [b"", b"{}", b"[1]", b'[{"id": 1}]', b"\xff"])
def test_codec_refuses_foreign_payloads(payload: bytes) -> None:
    with pytest.raises(ValueError):
        decode(payload)
