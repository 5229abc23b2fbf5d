"""The benchmark's measuring machinery, shared by every scenario: the sizes of a run
(:class:`Plan`: full, quick, smoke), the context a scenario runs in (:class:`Ctx`: the
server, its tokens, opening streams), CPU metering of client and server (:class:`Meter`),
and the ladder -- one :class:`Step` per offered rate, judged by :func:`verdict`, climbed
by :func:`run_ladder` until a step fails, then bisected.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.client import Sink, _Stream, open_streams
from bench.servers import Server, proc_run_wait_seconds

__all__ = ["P99_LIMIT", "Plan", "Meter", "Ctx", "Step", "client_cpu_seconds", "ms", "close_streams", "drain",
           "verdict", "run_ladder", "best_step"]

P99_LIMIT = 1.0  # seconds

# -- sizes --------------------------------------------------------------------------------

@dataclass
class Plan:
    s1_levels: list[int]
    fanout_subs: list[int]
    fanout_ladder: list[int]  # offered deliveries/s
    targeted_users: int
    targeted_ladder: list[int]  # offered publishes/s
    bulk_ladder: list[int]  # offered notifications/s, in POSTs of BULK
    replay: list[tuple[int, int]]  # (missed events, repetitions)
    step_s: float
    drain_s: float
    refine: int  # bisection steps after the first failing ladder step
    settle_s: float
    scenario_budget_s: float
    warmup_s: float = 1.0
    storm_streams: int = 10000  # S7

    @classmethod
    def full(cls) -> Plan:
        return cls(s1_levels=[1000, 5000, 10000], fanout_subs=[1000, 10000],
                   fanout_ladder=[5000, 10000, 20000, 30000, 40000, 60000, 80000, 100000, 150000, 200000,
                                  250000],
                   targeted_users=1000,
                   targeted_ladder=[500, 1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000],
                   bulk_ladder=[5000, 10000, 20000, 30000, 40000, 50000, 60000, 80000, 100000],
                   replay=[(1000, 5), (10000, 3)], step_s=5.0, drain_s=5.0, refine=2,
                   settle_s=2.0, scenario_budget_s=900.0)

    @classmethod
    def quick(cls) -> Plan:
        return cls(s1_levels=[500, 2000], fanout_subs=[500, 2000],
                   fanout_ladder=[5000, 20000, 40000, 60000, 80000, 100000], targeted_users=200,
                   targeted_ladder=[250, 1000, 2000, 3000, 4000, 5000],
                   bulk_ladder=[5000, 20000, 40000, 60000], replay=[(1000, 3)],
                   step_s=2.0, drain_s=3.0, refine=0, settle_s=1.0, scenario_budget_s=240.0)

    @classmethod
    def smoke(cls) -> Plan:
        return cls(s1_levels=[20], fanout_subs=[20], fanout_ladder=[200, 1000],
                   targeted_users=20, targeted_ladder=[50, 200], bulk_ladder=[200, 1000],
                   replay=[(200, 1)],
                   step_s=0.6, drain_s=3.0, refine=0, settle_s=0.2, scenario_budget_s=30.0,
                   warmup_s=0.3, storm_streams=50)


# -- measuring ------------------------------------------------------------------------------

def client_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Meter:
    """CPU use of the client (this process) and of the server over a window, in % of a
    core, and the time each was runnable but waited for its core (other tenants)."""

    def __init__(self, server: Server):
        self.server = server
        self.t0 = time.monotonic()
        self.c0 = client_cpu_seconds()
        self.s0 = server.cpu_seconds()
        self.cw0 = proc_run_wait_seconds("self")[1]
        self.sw0 = proc_run_wait_seconds(server.pid)[1]

    def read(self) -> dict[str, float]:
        wall = max(1e-9, time.monotonic() - self.t0)
        return {"client_cpu": round(100 * (client_cpu_seconds() - self.c0) / wall, 1),
                "server_cpu": round(100 * (self.server.cpu_seconds() - self.s0) / wall, 1),
                "client_wait": round(100 * (proc_run_wait_seconds("self")[1] - self.cw0) / wall, 1),
                "server_wait": round(100 * (proc_run_wait_seconds(self.server.pid)[1] - self.sw0) / wall, 1)}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


@dataclass
class Ctx:
    server: Server
    plan: Plan
    secret: str
    log: Callable[[str], None]
    _signer: Any = None
    _tokens: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def signer(self) -> Any:
        if self._signer is None:
            from sse_notify.tokens import TokenSigner

            self._signer = TokenSigner(self.secret)
        return self._signer

    def tokens(self, users: Sequence[str]) -> list[str]:
        out = []
        for user in users:
            token = self._tokens.get(user)
            if token is None:
                token = self._tokens[user] = self.signer.subscriber(user, ttl=6 * 3600)
            out.append(token)
        return out

    def publisher_token(self) -> str:
        return self.signer.publisher("bench")

    async def streams(self, kind: str, users: Sequence[str], sink: Sink, cursor: int | None = None,
                      until: str = "start") -> list[_Stream]:
        """Open streams; they count as open once their response started (see open_streams)."""
        return await open_streams(kind, self.port, users, self.tokens(users), sink, cursor=cursor, until=until)


def close_streams(streams: Sequence[_Stream]) -> None:
    for stream in streams:
        stream.close()


async def drain(sink: Sink, want: int, timeout: float) -> bool:
    """Wait (bounded) until ``sink.delivered`` reaches ``want``."""
    deadline = time.monotonic() + timeout
    while sink.delivered < want:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# -- ladders (S2, S3, S5, S6) -----------------------------------------------------------------

@dataclass
class Step:
    offered: float  # deliveries/s (fan-out) or publishes/s (targeted)
    publish_rate: float
    published: int
    expected: int
    received: int
    lost: int
    dup: int
    closed: int
    errors: int
    overloaded: bool
    drained: bool
    achieved: float  # deliveries/s (fan-out) or durable publishes/s (targeted)
    lat_ms: dict[str, float]
    ack_ms: dict[str, float]
    cpu: dict[str, float]
    ok: bool = False
    note: str = ""
    error_samples: list[str] = field(default_factory=list)


def verdict(step: Step) -> Step:
    p99 = step.lat_ms.get("p99")
    problems = []
    if p99 is None or p99 >= P99_LIMIT * 1000:
        problems.append(f"p99 {p99} ms")
    if step.lost or step.dup:
        problems.append(f"lost {step.lost} dup {step.dup}")
    if step.closed:
        problems.append(f"{step.closed} streams closed")
    if step.errors:
        problems.append(f"{step.errors} publish errors" + (f" ({step.error_samples[0]})" if step.error_samples else ""))
    if step.overloaded:
        problems.append("publisher backlog")
    if not step.drained:
        problems.append("not drained")
    step.ok = not problems
    step.note = "; ".join(problems)
    return step


async def run_ladder(ctx: Ctx, ladder: Sequence[float], run_step: Callable[[float], Any],
                     label: str) -> list[Step]:
    """Climb the ladder until a step fails, then bisect ``plan.refine`` times between the
    best passing and the first failing rate."""
    steps: list[Step] = []

    async def passes(offered: float) -> bool:
        step = await run_step(offered)
        steps.append(step)
        log_step(ctx, label, step)
        return step.ok

    best, worst = None, None
    for offered in ladder:
        if not await passes(offered):
            worst = offered
            break
        best = offered
    if best is not None and worst is not None:
        for _ in range(ctx.plan.refine):
            await asyncio.sleep(ctx.plan.settle_s)
            mid = round((best + worst) / 2, -2 if worst - best > 1000 else -1)
            if mid in (best, worst):
                break
            if await passes(mid):
                best = mid
            else:
                worst = mid
    return steps


def log_step(ctx: Ctx, label: str, s: Step) -> None:
    lat = s.lat_ms
    ctx.log(f"  {label} offered {s.offered:>9,.0f}/s: achieved {s.achieved:>9,.0f}/s  "
            f"p50 {lat.get('p50', float('nan')):8.1f} ms  p99 {lat.get('p99', float('nan')):8.1f} ms  "
            f"max {lat.get('max', float('nan')):8.1f} ms  lost {s.lost} dup {s.dup}  "
            f"server {s.cpu['server_cpu']:.0f}% (+{s.cpu['server_wait']:.0f}% wait) "
            f"client {s.cpu['client_cpu']:.0f}% (+{s.cpu['client_wait']:.0f}% wait)  "
            f"{'ok' if s.ok else 'FAIL: ' + s.note}")


def best_step(steps: Sequence[Step]) -> Step | None:
    passing = [s for s in steps if s.ok]
    return max(passing, key=lambda s: s.offered) if passing else None

