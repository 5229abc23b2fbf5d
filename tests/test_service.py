"""sse_notify.service: wiring of store, broker pump and hub; publish, mark read, retention."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sse_notify import service as service_module
from sse_notify.store import sqlite as sqlite_module
from sse_notify.config import Settings, load_secret
from sse_notify.tokens import TokenSigner
from sse_notify.hub import Stream
from sse_notify.models import NotificationDraft, ReadChange, now_ms
from sse_notify.service import Service
from sse_notify.store import StoreUnavailable


def drafts(*users: str | None) -> list[NotificationDraft]:
    return [NotificationDraft(user, f"for {user}") for user in users]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({}, data_dir=tmp_path / "data")


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    svc = Service(settings)
    await svc.start()
    yield svc
    await svc.stop()


async def collect(stream: Stream, count: int, timeout: float = 5.0) -> list:
    events: list = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            await stream.wait()
            events += stream.take()
    return events


async def test_start_and_stop(settings: Settings) -> None:
    svc = Service(settings)
    assert svc.keyring.secret == load_secret(settings.data_dir)  # created on first use
    await svc.start()
    try:
        assert (settings.data_dir / "notifications.db").exists()
        await svc.store.ping()
        assert all(not t.done() for t in svc._tasks)
    finally:
        await svc.stop()
    assert svc._tasks == []
    with pytest.raises(StoreUnavailable):
        await svc.store.ping()


async def test_stop_ends_open_streams(service: Service) -> None:
    async with service.hub.subscribe("alice") as stream:
        await service.stop()
        assert stream.close_reason == "shutdown"


async def test_signer_uses_the_configured_secret(tmp_path: Path) -> None:
    svc = Service(Settings.from_env({"SSE_NOTIFY_SECRET": "given"}, data_dir=tmp_path))
    assert not (tmp_path / "secret.key").exists()
    assert TokenSigner("given").verify_subscriber(svc.signer.subscriber("alice")).subject == "alice"


async def test_publish_reaches_the_hub_through_the_pump_in_id_order(service: Service) -> None:
    assert service.store.on_commit == service.broker.publish  # commit -> broker -> pump -> hub
    async with service.hub.subscribe("alice") as alice, service.hub.subscribe("bob") as bob:
        results = await asyncio.gather(*(service.publish(drafts("alice", None, "bob"), "pub")
                                         for _ in range(20)))
        assert all(r.created for r in results)
        got = [e.id for e in await collect(alice, 40)]
        assert got == sorted(got) and len(set(got)) == 40
        expected = sorted(i for r in results for i in r.ids[:2])
        assert got == expected
        assert [e.id for e in await collect(bob, 40)] == sorted(i for r in results for i in r.ids[1:])
    assert service.published == 60


async def test_idempotent_repeat_is_not_counted_or_dispatched_again(service: Service) -> None:
    async with service.hub.subscribe("alice") as stream:
        first = await service.publish(drafts("alice"), "pub", "k")
        again = await service.publish(drafts("alice"), "pub", "k")
        assert again.created is False and again.ids == first.ids
        marker = await service.publish(drafts("alice"), "pub")
        events = await collect(stream, 2)
    assert [e.id for e in events] == first.ids + marker.ids
    assert service.published == 2


async def test_mark_read_publishes_a_read_change_only_when_something_changed(service: Service) -> None:
    published: list = []
    real_publish = service.broker.publish

    def spy(messages: list) -> None:
        published.append(list(messages))
        real_publish(messages)

    service.broker.publish = spy  # type: ignore[method-assign]
    ids = (await service.publish(drafts("alice", "alice", "bob"), "pub")).ids
    published.clear()
    async with service.hub.subscribe("alice") as stream:
        assert await service.mark_read("alice", [ids[0], ids[2]]) == [ids[0]]  # bob's is ignored
        assert published == [[ReadChange("alice", (ids[0],))]]
        [event] = await collect(stream, 1)
        assert event.id is None and event.user == "alice"
        assert await service.mark_read("alice", [ids[0]]) == []
        assert await service.mark_read("alice", [ids[2]]) == []
        assert published == [[ReadChange("alice", (ids[0],))]]  # nothing more was sent
        assert await service.mark_read("alice", None) == [ids[1]]  # None: all
        assert published[-1] == [ReadChange("alice", (ids[1],))]
        assert await service.mark_read("alice", None) == []
        assert len(published) == 2


async def test_prune_at_start_removes_expired_notifications(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_env({}, data_dir=settings.data_dir, retention="1h")
    svc = Service(settings)
    await svc.start()
    try:
        old = (await svc.publish(drafts("alice", None), "pub")).ids
    finally:
        await svc.stop()
    later = now_ms() + 2 * 3600 * 1000
    monkeypatch.setattr(service_module, "now_ms", lambda: later)  # two hours on
    svc = Service(settings)
    await svc.start()
    try:
        assert await svc.store.state("alice") == (0, 0, old[-1])  # gone before any request
        assert (await svc.store.history("alice", 10, None, None)).items == []
        new = (await svc.publish(drafts("alice"), "pub")).ids
        assert new[0] > old[-1]
    finally:
        await svc.stop()


async def test_pruning_goes_in_chunks_and_publishes_commit_in_between(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "PRUNE_CHUNK", 10)
    svc = Service(Settings.from_env({}, data_dir=settings.data_dir, retention="1h"))
    await svc.start()
    try:
        old = [i for _ in range(10) for i in (await svc.publish(drafts(*["alice"] * 5), "pub")).ids]
        later = now_ms() + 2 * 3600 * 1000  # two hours on, for the service and the store
        monkeypatch.setattr(service_module, "now_ms", lambda: later)
        monkeypatch.setattr(sqlite_module, "now_ms", lambda: later)
        chunks: list[int] = []
        prune = svc.store.prune

        async def recording(older_than_ms: int, limit: int) -> int:
            chunks.append(await prune(older_than_ms, limit))
            return chunks[-1]

        monkeypatch.setattr(svc.store, "prune", recording)
        pruning = asyncio.create_task(svc.prune())
        new = (await svc.publish(drafts("alice"), "pub")).ids
        assert not pruning.done()  # the publish did not wait for the whole pruning
        assert await pruning == len(old)
        assert chunks == [10, 10, 10, 10, 10, 0]
        assert [n.id for n in await svc.store.replay("alice", 0, None, 100)] == new
    finally:
        await svc.stop()


async def test_prune_keeps_notifications_within_retention(settings: Settings) -> None:
    svc = Service(Settings.from_env({}, data_dir=settings.data_dir, retention="1h"))
    await svc.start()
    try:
        ids = (await svc.publish(drafts("alice"), "pub")).ids
        assert await svc.prune() == 0
        assert await svc.store.state("alice") == (ids[0], 1, 0)
    finally:
        await svc.stop()


async def test_service_can_restart(settings: Settings) -> None:
    svc = Service(settings)
    await svc.start()
    await svc.stop()
    await svc.start()
    try:
        async with svc.hub.subscribe("alice") as stream:
            await svc.publish(drafts("alice"), "pub")
            assert len(await collect(stream, 1, timeout=0.3)) == 1
    finally:
        await svc.stop()
