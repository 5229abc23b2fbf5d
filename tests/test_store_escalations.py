"""The stores' pending escalations (``EscalationStore``), on SQLite and PostgreSQL alike:
written with their notification, claimed when due, held by a lease, retried, finished,
and removed by retention; and the escalator's backoff."""

from __future__ import annotations

import asyncio

from sse_notify.escalation import MAX_BACKOFF, backoff
from sse_notify.models import Escalate, NotificationDraft
from sse_notify.store import EscalationStore, Store

from .test_store import Clock, clock, db_path, store, store_factory  # noqa: F401 (fixtures)


def escalated(user: str | None, after: int = 5, unless: str = "read") -> NotificationDraft:
    return NotificationDraft(user, "t", escalate=Escalate(after, unless))  # type: ignore[arg-type]


async def test_rows_come_with_their_notification_and_are_claimed_once_when_due(store: Store, clock: Clock) -> None:
    assert isinstance(store, EscalationStore)
    [a, b] = (await store.add([escalated("alice"), escalated("bob", 10, "delivered")], "pub")).ids
    [c] = (await store.add([NotificationDraft("carol", "plain")], "pub")).ids
    assert await store.pending_escalations() == 2
    now = clock.now
    assert await store.claim_escalations(now + 4_999, 60_000, 10) == []
    [due] = await store.claim_escalations(now + 5_000, 60_000, 10)
    assert (due.id, due.user, due.unless, due.due_at, due.attempts) == (a, "alice", "read", now + 5_000, 1)
    assert due.notification is not None and due.notification.id == a and not due.read and not due.delivered
    # a is leased: not claimed again until the lease ends; b (due at +10 s) is
    claimed = await store.claim_escalations(now + 20_000, 60_000, 10)
    assert [(d.id, d.unless) for d in claimed] == [(b, "delivered")]
    assert await store.claim_escalations(now + 64_999, 60_000, 10) == []
    [again] = await store.claim_escalations(now + 65_000, 60_000, 10)
    assert again.id == a and again.attempts == 2
    await store.retry_escalation(a, "alice", now + 70_000)
    await store.mark_read("alice", [a])
    await store.record_deliveries([("bob", b, now)])  # type: ignore[attr-defined]
    [read] = await store.claim_escalations(now + 70_000, 60_000, 10)
    assert read.read and read.attempts == 3
    await store.finish_escalation(a, "alice")
    [delivered] = await store.claim_escalations(now + 80_000, 60_000, 10)
    assert delivered.id == b and delivered.delivered and not delivered.read
    assert await store.pending_escalations() == 1
    assert c  # no row of its own


async def test_a_broadcast_never_gets_a_row_and_retention_removes_them(store: Store, clock: Clock) -> None:
    await store.add([escalated(None)], "pub")  # (the API refuses it; the store ignores it)
    assert await store.pending_escalations() == 0
    await store.add([escalated("alice")], "pub")
    clock.now += 10_000
    assert await store.prune(clock.now - 5_000, 1000) == 2
    assert await store.pending_escalations() == 0


async def test_concurrent_claims_never_share_a_row(store: Store, clock: Clock) -> None:
    await store.add([escalated(f"u{i}") for i in range(40)], "pub")
    claims = await asyncio.gather(*(store.claim_escalations(clock.now + 5_000, 60_000, 7) for _ in range(8)))
    taken = [(d.id, d.user) for claim in claims for d in claim]
    assert len(taken) == len(set(taken)) == 40


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(40) == MAX_BACKOFF
