"""Delivery receipts: which (user, notification) pairs reached a stream, and when, written
to the store in batches off the delivery path.

The delivery path (:class:`~sse_notify.feed.Feed`, once per batch it wrote to a stream)
only calls :meth:`Receipts.delivered`, which puts ``(user, id) -> time`` into a dict; the
first time seen wins, as it does in the store. A task flushes that dict every
:data:`FLUSH_INTERVAL` seconds with one statement (``record_deliveries``: insert, ignoring
pairs already recorded, so the first delivery on any stream of any node stays). A flush
that fails keeps its rows for the next one (older times first), so a store outage delays
receipts but loses none while the process lives; a crash loses at most the last interval.

Broadcasts get no per-user receipt (the contract asks only how many users read one), so
events without a user are skipped. ``Settings.receipts`` (``SSE_NOTIFY_RECEIPTS=0``) turns
recording off; it exists to measure what recording costs (``bench``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .store import ReceiptStore
from .wire import Outbound

__all__ = ["Receipts", "FLUSH_INTERVAL"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds
MAX_PENDING = 1_000_000  # pairs kept while the store does not answer; beyond: dropped, logged


class Receipts:
    def __init__(self, store: ReceiptStore, interval: float = FLUSH_INTERVAL):
        self.store = store
        self.interval = interval
        self.recorded = 0  # pairs written (first or not), for tests and metrics
        self.dropped = 0
        self._pending: dict[tuple[str, int], int] = {}

    def delivered(self, user: str, events: Sequence[Outbound]) -> None:
        """``events`` were just written to a stream of ``user``: note their own
        notifications (not broadcasts, not control events)."""
        at = 0
        pending = self._pending
        for event in events:
            if event.id is not None and event.user is not None:
                if not at:
                    at = time.time_ns() // 1_000_000
                pending.setdefault((user, event.id), at)

    async def run(self) -> None:
        """Flush every :attr:`interval` until cancelled; a last flush when cancelled."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.flush()
        except asyncio.CancelledError:
            await self.flush()
            raise

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        rows = [(user, id, at) for (user, id), at in batch.items()]
        try:
            await self.store.record_deliveries(rows)
        except Exception as exc:
            log.error("recording delivery receipts failed (kept for the next flush): %s", exc)
            for key, at in self._pending.items():  # noted meanwhile: later than the batch's
                batch.setdefault(key, at)
            if len(batch) > MAX_PENDING:
                self.dropped += len(batch)
                log.error("dropped %d delivery receipts: the store has not answered", len(batch))
                batch = {}
            self._pending = batch
            return
        self.recorded += len(rows)
