"""The follower: one task per process that turns the store's log into live delivery.

The broker carries committed notifications between processes quickly, but may lose,
repeat or (across nodes) reorder them. Correctness comes from the ids, which increase
strictly in commit order with no holes across all nodes, and from the store, which has
every one of them:

* ``position`` is the id up to which everything was delivered (to the hub). An id
  ``<= position`` is a duplicate and skipped; ``position + 1`` is delivered at once,
  together with whatever it unblocks; a higher id means a gap: it is held back, and if
  the gap is still open ``gap_wait`` seconds later, the missing range is read from the
  store (``store.since``) and delivered in order before it. (Another node's message is
  often just in flight: waiting a little saves a read per reordering.)
* After the broker reconnects (``RESYNC``), when it sends an id range instead of
  notifications too large for it, and every ``check_interval`` seconds anyway (comparing
  ``position`` with ``store.max_id()``), the follower reads the store up to its end. So a
  lost broker message, a dropped connection or a restarted broker costs latency, never a
  notification, never a duplicate, never disorder.
* The store is the authority: after a complete read, held-back ids the store does not
  have are dropped (logged), never delivered out of thin air; a pruned range is skipped.
* ``start()`` must be called after the broker is open (subscribed): the position it takes
  then is where the broker's stream is known to be complete from.
* Read changes are not in the log: they are delivered as they come, in broker order.
* Nothing stops it but ``close``/cancellation: a failing store read is retried with
  backoff while broker traffic that needs no read keeps flowing; a failing ``deliver`` is
  logged and the next batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .broker import RESYNC, Broker, IdRange, Message, Resync
from .models import Notification, ReadChange
from .store import Store

__all__ = ["Follower", "CHECK_INTERVAL", "GAP_WAIT"]

log = logging.getLogger(__name__)

#: Seconds between comparisons of ``position`` with the store's newest id.
CHECK_INTERVAL = 2.0
#: Seconds a gap may stay open before the missing ids are read from the store. Measured
#: with two nodes publishing in turn (``python -m bench.broker_gaps``, 2 shared cores at
#: load 8): about 1 commit batch in 100 arrives before its predecessor on PostgreSQL
#: (fewer on Redis), and the predecessor follows within 6 ms at the median, 25-55 ms at
#: the 90th percentile. Waiting 10 ms lets the broker fill most gaps; the rest cost a
#: small store read, and a held-back notification never waits much more than this.
GAP_WAIT = 0.01
#: Notifications read from the store per query while catching up.
PAGE = 1000
#: Notifications held back behind a gap; beyond this the newest are left to the store.
MAX_PENDING = 10_000
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0

Deliver = Callable[[Sequence[Notification | ReadChange]], None]
_END = object()  # the broker's listen() ended: the broker was closed


class Follower:
    def __init__(self, store: Store, broker: Broker, deliver: Deliver, *,
                 check_interval: float = CHECK_INTERVAL, gap_wait: float = GAP_WAIT):
        self.store = store
        self.broker = broker
        self.deliver = deliver
        self.check_interval = check_interval
        self.gap_wait = gap_wait
        self.position = 0
        #: The store's newest id minus ``position``, as of the last check.
        self.lag = 0
        #: Store reads made to fill gaps or catch up, and the notifications they delivered.
        self.catchup_reads = 0
        self.caught_up = 0
        #: Times the broker reconnected (and messages may have been lost).
        self.resyncs = 0
        self._inbox: deque[object] = deque()
        self._wake = asyncio.Event()
        self._pending: dict[int, Notification] = {}  # held back behind a gap
        self._known = 0  # the highest id known to be committed
        self._read_at: float | None = None  # when to read the store, if a read is due
        self._reading = False  # the loop is awaiting the store: the pump queues
        self._resync = False  # a read to the store's end is due whatever the broker brings
        self._check_at = 0.0
        self._read_failures = 0
        self._check_failures = 0

    async def start(self) -> None:
        """Take the starting position: call once the broker is subscribed."""
        self.position = self._known = await self.store.max_id()

    async def run(self) -> None:
        """Follow until the broker is closed (or the task is cancelled).

        Two tasks share the work: the pump takes the broker's messages and, while the
        store is not being read, handles them itself, so a message is dispatched in the
        step that received it (no extra hop on the way to the hub); this loop keeps the
        deadlines (gap reads, periodic checks) and handles what arrived while it read.
        Handling is synchronous, so the two never interleave inside it.
        """
        loop = asyncio.get_running_loop()
        self._check_at = loop.time() + self.check_interval
        pump = asyncio.create_task(self._pump(), name="follower-pump")
        try:
            while self._drain():
                self._wake.clear()
                deadline = self._check_at if self._read_at is None else min(self._check_at, self._read_at)
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                if not self._drain():
                    return
                if self._read_at is not None and loop.time() >= self._read_at:
                    await self._busy(self._read())
                elif loop.time() >= self._check_at:
                    await self._busy(self._check())
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _busy(self, work: Awaitable[None]) -> None:
        """Await ``work`` with the pump queueing what arrives meanwhile."""
        self._reading = True
        try:
            await work
        finally:
            self._reading = False

    def _drain(self) -> bool:
        """Handle what the pump queued; False once the broker was closed."""
        inbox = self._inbox
        while inbox:
            item = inbox.popleft()
            if item is _END:
                return False
            self._handle(item)
        return True

    def _handle(self, item: object) -> None:
        if isinstance(item, Resync):
            self.resyncs += 1
            self._resync = True
            self._read_soon(0.0)
        else:
            self._take(item)  # type: ignore[arg-type]

    async def _pump(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                async for item in self.broker.listen():
                    backoff = BACKOFF_MIN
                    if self._reading or self._inbox:
                        self._inbox.append(item)  # the loop handles it, in order, when done
                    else:
                        read_at = self._read_at
                        self._handle(item)
                        if self._read_at == read_at:
                            continue
                    self._wake.set()
            except Exception:  # a broker bug: listen afresh, and catch up from the store
                log.exception("broker listen failed; listening again in %.2f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                self._inbox.append(RESYNC)
                self._wake.set()
                continue
            self._inbox.append(_END)
            self._wake.set()
            return

    # -- the broker's messages --------------------------------------------------------

    def _take(self, batch: Sequence[Message]) -> None:
        out: list[Notification | ReadChange] = []
        pending = self._pending
        for message in batch:
            if isinstance(message, Notification):
                id = message.id
                if id <= self.position:
                    continue  # a duplicate
                if id == self.position + 1:
                    out.append(message)
                    self.position = id
                    while pending and self.position + 1 in pending:
                        out.append(pending.pop(self.position + 1))
                        self.position += 1
                else:
                    if len(pending) < MAX_PENDING:
                        pending[id] = message
                    self._known = max(self._known, id)
                    self._read_soon(self.gap_wait)
            elif isinstance(message, ReadChange):
                out.append(message)
            elif isinstance(message, IdRange) and message.last > self.position:
                self._known = max(self._known, message.last)
                self._read_soon(0.0)  # what it names is in the store already
        if out:
            self._deliver(out)
        if not pending and self._known <= self.position and not self._resync:
            self._read_at = None  # the broker filled the gap in time

    def _read_soon(self, delay: float) -> None:
        at = asyncio.get_running_loop().time() + delay
        if self._read_at is None or at < self._read_at:
            self._read_at = at

    def _deliver(self, messages: Sequence[Notification | ReadChange]) -> None:
        try:
            self.deliver(messages)
        except Exception:  # one bad message must not stop all fan-out
            log.exception("delivery failed")

    # -- the store --------------------------------------------------------------------

    async def _read(self) -> None:
        """Deliver everything the store has after ``position``, in order."""
        try:
            while True:
                rows = await self.store.since(self.position, PAGE)
                self.catchup_reads += 1
                fresh = [n for n in rows if n.id > self.position]
                if fresh:
                    self.position = fresh[-1].id
                    self.caught_up += len(fresh)
                    self._deliver(fresh)
                if len(rows) < PAGE:
                    break
        except Exception as exc:
            self._read_failures += 1
            delay = min(BACKOFF_MIN * 2 ** (self._read_failures - 1), BACKOFF_MAX)
            if self._read_failures == 1:
                log.error("follower cannot read the store (retrying every %.2f-%.0f s): %s",
                          BACKOFF_MIN, BACKOFF_MAX, exc)
            self._read_at = asyncio.get_running_loop().time() + delay
            return
        if self._read_failures:
            log.info("follower reads the store again after %d failed attempts", self._read_failures)
            self._read_failures = 0
        unconfirmed = [id for id in self._pending if id > self.position]
        if unconfirmed:
            log.warning("the broker carried ids the store does not have (%d..%d); dropped",
                        min(unconfirmed), max(unconfirmed))
        self._pending.clear()
        self._known = self.position
        self._read_at = None
        self._resync = False

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        self._check_at = loop.time() + self.check_interval
        try:
            newest = await self.store.max_id()
        except Exception as exc:
            self._check_failures += 1
            if self._check_failures == 1:
                log.error("follower cannot check the store: %s", exc)
            return
        self._check_failures = 0
        self.lag = max(0, newest - self.position)
        if newest > self.position:
            self._known = max(self._known, newest)
            self._read_soon(self.gap_wait)  # unless the broker brings them meanwhile
