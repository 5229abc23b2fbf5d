"""How long does a cross-node reordering keep a follower's gap open? (The figure behind
``sse_notify.follower.GAP_WAIT``.)

Two publishing "nodes" (brokers A1 and A2 taking the commit batches of one SQLite log in
turn, as two nodes committing one after the other would) and a follower B whose gap wait
is so long that the broker fills every gap. Prints how many gaps opened and how long each
stayed open, and checks that B delivered every id once, in order::

    python -m bench.broker_gaps postgresql://postgres@127.0.0.1:5432/DB 10 8
    python -m bench.broker_gaps 'redis://127.0.0.1:6379/0?channel=gaps' 10 8

(arguments: broker URL, seconds, concurrent writers).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sse_notify.broker import Message, open_broker
from sse_notify.follower import Follower
from sse_notify.models import NotificationDraft
from sse_notify.store.sqlite import SQLiteStore


class TimedFollower(Follower):
    """Records how long each gap stayed open (held-back notifications waiting)."""

    opened: float | None = None

    def __init__(self, *args: object, **kwargs: float) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fills: list[float] = []

    def _take(self, batch: Sequence[Message]) -> None:
        super()._take(batch)
        now = time.monotonic()
        if self._pending and self.opened is None:
            self.opened = now
        elif not self._pending and self.opened is not None:
            self.fills.append(now - self.opened)
            self.opened = None


async def measure(url: str, seconds: float, writers: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "log.db")
        await store.open()
        a1, a2, b = open_broker(url), open_broker(url), open_broker(url)
        for broker in (a1, a2, b):
            await broker.open()
        batches = 0

        def on_commit(batch: list) -> None:
            nonlocal batches
            batches += 1
            (a1 if batches % 2 else a2).publish(batch)

        store.on_commit = on_commit
        delivered: list = []
        follower = TimedFollower(store, b, delivered.extend, gap_wait=5.0, check_interval=60.0)
        await follower.start()
        task = asyncio.create_task(follower.run())
        stop = time.monotonic() + seconds

        async def write() -> int:
            count = 0
            while time.monotonic() < stop:
                await store.add([NotificationDraft("u", "x")], "p")
                count += 1
            return count

        committed = sum(await asyncio.gather(*(write() for _ in range(writers))))
        async with asyncio.timeout(10):
            while follower.position < committed:
                await asyncio.sleep(0.05)
        for broker in (a1, a2, b):
            await broker.close()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
    fills = sorted(f * 1000 for f in follower.fills)

    def q(p: float) -> float:
        return fills[min(len(fills) - 1, int(p * len(fills)))] if fills else 0.0

    in_order = [n.id for n in delivered] == list(range(1, committed + 1))
    return (f"{url.split(':', 1)[0]}: committed={committed} batches={batches} gaps={len(fills)} "
            f"open_ms p50={q(0.5):.2f} p90={q(0.9):.2f} max={q(1.0):.2f} "
            f"store_reads={follower.catchup_reads} in_order={in_order}")


if __name__ == "__main__":
    print(asyncio.run(measure(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))))
