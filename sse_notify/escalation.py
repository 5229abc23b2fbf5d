"""Escalation: when a notification sent with ``"escalate": {"after", "unless"}`` is still
not read (or not delivered) once ``after`` has passed, POST a signed webhook about it.

Deliberate decisions:

* **Durable, and once for the cluster.** The pending rows are written in the same commit
  as their notification, and claimed when due by one node at a time (the store's
  :class:`~sse_notify.store.EscalationStore`: a claim moves the row a lease ahead). Every
  node runs an :class:`Escalator`; whichever claims a row sends it. A node that dies
  between claim and answer leaves the row to be claimed again when the lease ends, so a
  webhook is delivered at least once, always with the same ``webhook-id``
  (``esc_<id>_<user>``): receivers drop repeats by it.
* **Checked at send time.** The claim reads whether the user has read the notification
  (or had it delivered) in the same transaction; a met condition deletes the row unsent.
  Reading implies delivery: ``unless: delivered`` is met by a read too (a user can read
  from history without a stream). Deliveries are recorded in batches: before claiming,
  this node flushes its own receipts; another node's reach the store within its flush
  interval (about 0.5 s), which is how late a delivery can be and still count.
* **Retries** on any failure (not 2xx, timeout, connection refused) after 1, 2, 4 ... s,
  capped at :data:`MAX_BACKOFF`, until the message is 24 h past due: then it is given up
  (logged, counted) and deleted. Attempts run as tasks, at most :data:`IN_FLIGHT` at
  once, so a receiver that hangs holds up no more than that.
* The poll interval (``--escalation-poll``, default 1 s) bounds how late a webhook fires
  after its time; ``--webhook-timeout`` (default 10 s) how long one attempt may take.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .models import now_ms
from .receipts import Receipts
from .store import DueEscalation, EscalationStore
from .webhooks import WebhookFailed, WebhookSender

__all__ = ["Escalator", "MAX_AGE_MS", "MAX_BACKOFF", "backoff"]

log = logging.getLogger(__name__)

MAX_AGE_MS = 24 * 3600 * 1000  # past due, then given up
MAX_BACKOFF = 600.0  # seconds between attempts, at most
IN_FLIGHT = 32


def backoff(attempts: int) -> float:
    """Seconds before the next attempt, after ``attempts`` failed ones."""
    return min(2.0 ** max(attempts - 1, 0), MAX_BACKOFF)


class Escalator:
    def __init__(self, store: EscalationStore, sender: WebhookSender, *, poll: float,
                 receipts: Receipts | None = None):
        self.store = store
        self.sender = sender
        self.poll = poll
        self.receipts = receipts
        # A claim holds a row this long: well beyond one attempt, so it is not claimed
        # twice while a node is still waiting for the receiver.
        self.lease_ms = int(max(60.0, 3 * sender.timeout) * 1000)
        self.sent = 0
        self.failed = 0  # failed attempts
        self.given_up = 0
        self.moot = 0  # deleted unsent: the condition held in time
        self.pending = 0  # rows in the store (the cluster's), as of the last poll
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:
                    log.error("escalation poll failed: %s", exc)
                await asyncio.sleep(self.poll)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.sender.close()

    async def tick(self) -> None:
        """Claim what came due (as many as there is room for) and start sending it."""
        if self.receipts is not None:
            await self.receipts.flush()
        room = IN_FLIGHT - len(self._tasks)
        if room > 0:
            for due in await self.store.claim_escalations(now_ms(), self.lease_ms, room):
                task = asyncio.create_task(self._handle(due), name="escalation")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.pending = await self.store.pending_escalations()

    async def _handle(self, due: DueEscalation) -> None:
        try:
            if due.notification is None or due.read or (due.unless == "delivered" and due.delivered):
                self.moot += 1
                await self.store.finish_escalation(due.id, due.user)
                return
            kind = "notification.unread" if due.unless == "read" else "notification.undelivered"
            payload: dict[str, Any] = {"type": kind, "user": due.user,
                                       "notification": due.notification.to_dict(read=due.read)}
            try:
                await self.sender.send(f"esc_{due.id}_{due.user}", payload)
            except WebhookFailed as exc:
                self.failed += 1
                await self._failed(due, str(exc))
                return
            self.sent += 1
            await self.store.finish_escalation(due.id, due.user)
        except Exception as exc:  # the store failed: the lease ends, and it is claimed again
            log.error("escalation of notification %d for %s: %s", due.id, due.user, exc)

    async def _failed(self, due: DueEscalation, reason: str) -> None:
        now = now_ms()
        if now - due.due_at >= MAX_AGE_MS:
            self.given_up += 1
            log.error("webhook for notification %d (user %s) given up after %d attempts: %s",
                      due.id, due.user, due.attempts, reason)
            await self.store.finish_escalation(due.id, due.user)
            return
        delay = backoff(due.attempts)
        log.warning("webhook for notification %d (user %s) failed (%s); retry in %g s",
                    due.id, due.user, reason, delay)
        await self.store.retry_escalation(due.id, due.user, now + int(delay * 1000))

