"""The benchmark suite, one command: ``python -m bench`` (see bench/README.md).

Starts the real ``sse-notify serve`` (and the Node peer) pinned to one core with taskset,
pins this process -- the load client, one uvloop event loop -- to the other core, and runs
the scenarios; each scenario is bounded in time and prints one line of figures:

* S1 idle capacity: thousands of idle SSE streams; server RSS per stream.
* S2 broadcast fan-out over SSE: a ladder of broadcast rates at 1,000 and 10,000
  subscribers; the highest rate whose p99 publish->receive latency stays under 1 s, as
  deliveries/s, with lost and duplicated events.
* S3 targeted: 1,000 users with one stream each; a ladder of single-user publish rates
  (each answered 201 only after the durable commit); the highest with p99 < 1 s.
* S4 replay: a subscriber misses 1,000 (10,000) events and reconnects with its cursor;
  time until all are received, none lost or duplicated.
* S5 WebSocket fan-out: S2 over /ws.
* S6 bulk: S3 with POSTs of 100 notifications (a JSON array), each to another user; the
  highest rate of durable notifications/s with p99 < 1 s.

A stream counts as open once its response has started (not only once its hello arrived),
as a browser's does: from then on every notification must reach it, the warm-up's
included, or it is counted lost.

Results: ``bench/results/<stamp>.json`` (git-ignored) and, for a full run,
``bench/RESULTS.md`` and ``bench/latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import resource
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.storm import s7_storm  # noqa: E402
from bench.client import Publisher, Sink, _Stream, drive, open_streams, percentiles  # noqa: E402
from sse_notify.server import raise_open_files_limit  # noqa: E402
from bench.servers import (  # noqa: E402
    BENCH_DIR, PeerServer, Server, SSENotifyServer, ensure_peer_installed, proc_run_wait_seconds,
)

SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6")
#: Selectable with --scenario but not part of the default run (it needs 2 x N descriptors).
EXTRA_SCENARIOS = ("S7",)
P99_LIMIT = 1.0  # seconds

TARGETS = {
    "S1": "<= 20 KiB per idle SSE stream at 10,000 streams",
    "S2": ">= 60,000 deliveries/s at 1,000 subscribers, >= 40,000 at 10,000 (p99 < 1 s), 0 lost/dup",
    "S3": ">= 5,000 durable targeted publishes/s (p99 < 1 s)",
    "S4": "1,000 missed events replayed in < 50 ms, 0 lost/dup",
    "S5": ">= 0.8x S2 (same subscriber counts)",
    "S6": ">= 50,000 durable notifications/s in bulk POSTs of 100 (p99 < 1 s)",
    "S7": "10,000 SSE streams opened at once: 0 refused, >= 3,000 opened/s",
}


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
                   fanout_ladder=[5000, 10000, 20000, 30000, 40000, 60000, 80000, 100000, 150000, 200000],
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


# -- S1 idle capacity -------------------------------------------------------------------------

async def s1_idle(ctx: Ctx) -> dict[str, Any]:
    plan = ctx.plan
    sink = Sink()
    warm = await ctx.streams("sse", [f"warm{i}" for i in range(10)], sink, until="hello")
    close_streams(warm)
    await asyncio.sleep(plan.settle_s)
    rss0 = ctx.server.rss_kib()
    levels = []
    streams: list[_Stream] = []
    users = [f"idle{i}" for i in range(max(plan.s1_levels))]
    ctx.tokens(users)
    try:
        for level in plan.s1_levels:
            t0 = time.monotonic()
            streams += await ctx.streams("sse", users[len(streams):level], sink, until="hello")
            opened = level - (len(levels) and levels[-1]["streams"] or 0)
            connect_rate = opened / (time.monotonic() - t0)
            await asyncio.sleep(plan.settle_s)
            rss = ctx.server.rss_kib()
            alive = sum(1 for s in streams if not s.closed)
            levels.append({"streams": level, "alive": alive, "rss_kib": rss, "rss_base_kib": rss0,
                           "kib_per_stream": round((rss - rss0) / level, 2),
                           "connects_per_s": round(connect_rate)})
            ctx.log(f"  S1 {level} streams open: RSS {rss / 1024:.1f} MiB, "
                    f"{(rss - rss0) / level:.1f} KiB/stream, {connect_rate:.0f} connects/s")
    finally:
        close_streams(streams)
    top = levels[-1]
    line = ("S1 idle: " + ", ".join(f"{lv['streams']:,} streams {lv['kib_per_stream']:.1f} KiB/stream"
                                     for lv in levels)
            + f" (RSS base {rss0 / 1024:.1f} MiB, top {top['rss_kib'] / 1024:.1f} MiB; "
              f"open rate {top['connects_per_s']:,}/s; alive {top['alive']:,}/{top['streams']:,})")
    return {"levels": levels, "kib_per_stream": top["kib_per_stream"], "streams": top["streams"], "line": line}


# -- ladders (S2, S3, S5) -----------------------------------------------------------------------

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


def _verdict(step: Step) -> Step:
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
        _log_step(ctx, label, step)
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


def _log_step(ctx: Ctx, label: str, s: Step) -> None:
    lat = s.lat_ms
    ctx.log(f"  {label} offered {s.offered:>9,.0f}/s: achieved {s.achieved:>9,.0f}/s  "
            f"p50 {lat.get('p50', float('nan')):8.1f} ms  p99 {lat.get('p99', float('nan')):8.1f} ms  "
            f"max {lat.get('max', float('nan')):8.1f} ms  lost {s.lost} dup {s.dup}  "
            f"server {s.cpu['server_cpu']:.0f}% (+{s.cpu['server_wait']:.0f}% wait) "
            f"client {s.cpu['client_cpu']:.0f}% (+{s.cpu['client_wait']:.0f}% wait)  "
            f"{'ok' if s.ok else 'FAIL: ' + s.note}")


def _best(steps: Sequence[Step]) -> Step | None:
    passing = [s for s in steps if s.ok]
    return max(passing, key=lambda s: s.offered) if passing else None


async def fanout(ctx: Ctx, kind: str, subscribers: int) -> dict[str, Any]:
    """Broadcast fan-out (S2 over SSE, S5 over WebSocket) at one subscriber count."""
    plan = ctx.plan
    sink = Sink()
    users = [f"fan{i}" for i in range(subscribers)]
    t0 = time.monotonic()
    streams = await ctx.streams(kind, users, sink)
    open_s = time.monotonic() - t0
    pub = await Publisher(ctx.port, ctx.publisher_token(), connections=16).open()
    label = f"{'S2' if kind == 'sse' else 'S5'}/{subscribers}"
    ctx.log(f"  {label}: {subscribers:,} {kind} streams open in {open_s:.1f} s")
    gc.collect()
    gc.freeze()

    def body(i: int, ts: float) -> bytes:
        return b'{"broadcast":true,"title":"bench","data":{"ts":%.6f}}' % ts

    async def step(offered: float) -> Step:
        rate = offered / subscribers
        duration = max(plan.step_s, 3 / rate)  # at least three broadcasts
        sink.take()
        delivered0 = sink.delivered
        closed0 = sink.closed
        counts0 = [s.count for s in streams]
        dups0 = sum(s.dups for s in streams)
        meter = Meter(ctx.server)
        res = await drive(pub, rate, duration, body)
        alive = sum(1 for s in streams if not s.closed)
        drained = await drain(sink, delivered0 + res.ok * alive, plan.drain_s)
        cpu = meter.read()
        lat = sink.take()
        dup = sum(s.dups for s in streams) - dups0
        lost = 0
        for s, c0 in zip(streams, counts0):
            lost += max(0, res.ok - (s.count - c0))
        lost -= 0  # duplicates are counted apart; a stream with a dup and a loss shows both
        received = sink.delivered - delivered0
        window = res.issued / rate if res.issued else duration
        return _verdict(Step(
            offered=offered, publish_rate=rate, published=res.ok, expected=res.ok * subscribers,
            received=received, lost=lost, dup=dup, closed=sink.closed - closed0, errors=res.errors, error_samples=res.error_samples[:3],
            overloaded=res.overloaded, drained=drained, achieved=round(received / window),
            lat_ms={k: ms(v) for k, v in percentiles(lat).items()},
            ack_ms={k: ms(v) for k, v in percentiles(res.ack).items()}, cpu=cpu))

    try:
        # The warm-up's broadcasts start as soon as the last stream's response started:
        # its latencies are not recorded, but a stream that misses one of them is a loss.
        delivered0 = sink.delivered
        warm = await drive(pub, min(20.0, 5000 / subscribers), plan.warmup_s, body)
        await drain(sink, delivered0 + warm.ok * subscribers, plan.drain_s)
        lost_at_open = sum(max(0, warm.ok - s.count) for s in streams)
        if lost_at_open:
            ctx.log(f"  {label}: {lost_at_open} deliveries lost right after the streams opened")
        steps = await run_ladder(ctx, plan.fanout_ladder, step, label)
    finally:
        gc.unfreeze()
        await pub.close()
        close_streams(streams)
    best = _best(steps)
    lost = lost_at_open + sum(s.lost for s in steps)
    dup = sum(s.dup for s in steps)
    return {"subscribers": subscribers, "transport": kind, "steps": [asdict(s) for s in steps],
            "best_deliveries_per_s": best.achieved if best else 0,
            "best_offered": best.offered if best else 0,
            "best_p99_ms": best.lat_ms.get("p99") if best else None,
            "best_p50_ms": best.lat_ms.get("p50") if best else None,
            "lost_passing": sum(s.lost for s in steps if s.ok), "dup_passing": sum(s.dup for s in steps if s.ok),
            "lost_all": lost, "lost_at_open": lost_at_open, "dup_all": dup, "open_s": round(open_s, 2),
            "server_cpu": best.cpu["server_cpu"] if best else None,
            "client_cpu": best.cpu["client_cpu"] if best else None,
            "client_cpu_max": max((s.cpu["client_cpu"] for s in steps), default=None)}


def _fanout_line(name: str, results: list[dict[str, Any]]) -> str:
    parts = []
    for r in results:
        parts.append(f"{r['subscribers']:,} subs: {r['best_deliveries_per_s']:,} deliveries/s "
                     f"(p50 {r['best_p50_ms']} ms, p99 {r['best_p99_ms']} ms; lost {r['lost_passing']} "
                     f"dup {r['dup_passing']}; over all steps and the warm-up lost {r['lost_all']} "
                     f"dup {r['dup_all']}; "
                     f"server CPU {r['server_cpu']}%, client CPU {r['client_cpu']}% "
                     f"(max {r['client_cpu_max']}%))")
    return f"{name}: " + " | ".join(parts)


async def s2_broadcast(ctx: Ctx, kind: str = "sse") -> dict[str, Any]:
    results = []
    for n in ctx.plan.fanout_subs:
        results.append(await fanout(ctx, kind, n))
        await asyncio.sleep(ctx.plan.settle_s)
    name = "S2 broadcast/SSE" if kind == "sse" else "S5 broadcast/WS"
    return {"by_subscribers": results, "line": _fanout_line(name, results)}


async def s5_websocket(ctx: Ctx) -> dict[str, Any]:
    return await s2_broadcast(ctx, "ws")


BULK = 100  # notifications per POST in S6


async def s3_targeted(ctx: Ctx) -> dict[str, Any]:
    return await _targeted(ctx, "S3", 1, ctx.plan.targeted_ladder)


async def s6_bulk(ctx: Ctx) -> dict[str, Any]:
    return await _targeted(ctx, "S6", BULK, ctx.plan.bulk_ladder)


async def _targeted(ctx: Ctx, name: str, per_post: int, ladder: Sequence[int]) -> dict[str, Any]:
    """Targeted publishes to users with one SSE stream each: one notification per POST
    (S3), or a bulk array of ``per_post`` notifications per POST, each to another user
    (S6). The ladder is in durable notifications/s (each answered 201 after its commit)."""
    plan = ctx.plan
    sink = Sink()
    n = plan.targeted_users
    users = [f"user{i}" for i in range(n)]
    streams = await ctx.streams("sse", users, sink)
    pub = await Publisher(ctx.port, ctx.publisher_token(), connections=64).open()
    heads = [b'{"user":"%s","title":"bench","data":{"ts":' % u.encode() for u in users]
    gc.collect()
    gc.freeze()

    def targets(i: int) -> range:
        return range(i * per_post, (i + 1) * per_post)  # user indexes, modulo n

    def body(i: int, ts: float) -> bytes:
        tail = b"%.6f}}" % ts
        if per_post == 1:
            return heads[i % n] + tail
        return b"[" + b",".join(heads[k % n] + tail for k in targets(i)) + b"]"

    def counter(expected: list[int]) -> Callable[[int, bytes], None]:
        def on_ok(i: int, payload: bytes) -> None:
            for k in targets(i):
                expected[k % n] += 1
        return on_ok

    async def step(offered: float) -> Step:
        expected = [0] * n
        rate = offered / per_post  # POSTs/s
        sink.take()
        delivered0, closed0 = sink.delivered, sink.closed
        counts0 = [s.count for s in streams]
        dups0 = sum(s.dups for s in streams)
        meter = Meter(ctx.server)
        res = await drive(pub, rate, plan.step_s, body, counter(expected))
        published = res.ok * per_post
        drained = await drain(sink, delivered0 + published, plan.drain_s)
        cpu = meter.read()
        lat = sink.take()
        lost = sum(max(0, e - (s.count - c0)) for s, c0, e in zip(streams, counts0, expected))
        window = res.issued / rate if res.issued else plan.step_s
        return _verdict(Step(
            offered=offered, publish_rate=rate, published=published, expected=published,
            received=sink.delivered - delivered0, lost=lost, dup=sum(s.dups for s in streams) - dups0,
            closed=sink.closed - closed0, errors=res.errors, error_samples=res.error_samples[:3], overloaded=res.overloaded, drained=drained,
            achieved=round(published / window), lat_ms={k: ms(v) for k, v in percentiles(lat).items()},
            ack_ms={k: ms(v) for k, v in percentiles(res.ack).items()}, cpu=cpu))

    try:
        # Not recorded, but it starts as soon as the streams' responses started: a stream
        # that misses one of its notifications is a loss.
        expected_warm = [0] * n
        warm = await drive(pub, max(1.0, 100 / per_post), plan.warmup_s, body, counter(expected_warm))
        await drain(sink, warm.ok * per_post, plan.drain_s)
        lost_at_open = sum(max(0, e - s.count) for s, e in zip(streams, expected_warm))
        if lost_at_open:
            ctx.log(f"  {name}: {lost_at_open} deliveries lost right after the streams opened")
        steps = await run_ladder(ctx, ladder, step, name)
    finally:
        gc.unfreeze()
        await pub.close()
        close_streams(streams)
    best = _best(steps)
    figure = "publishes" if per_post == 1 else "notifications"
    result = {"users": n, "per_post": per_post, "steps": [asdict(s) for s in steps],
              f"best_{figure}_per_s": best.achieved if best else 0,
              "best_offered": best.offered if best else 0,
              "best_p99_ms": best.lat_ms.get("p99") if best else None,
              "best_p50_ms": best.lat_ms.get("p50") if best else None,
              "best_ack_p99_ms": best.ack_ms.get("p99") if best else None,
              "lost_passing": sum(s.lost for s in steps if s.ok), "dup_passing": sum(s.dup for s in steps if s.ok),
              "lost_all": lost_at_open + sum(s.lost for s in steps), "lost_at_open": lost_at_open,
              "dup_all": sum(s.dup for s in steps),
              "server_cpu": best.cpu["server_cpu"] if best else None,
              "client_cpu": best.cpu["client_cpu"] if best else None,
              "client_cpu_max": max((s.cpu["client_cpu"] for s in steps), default=None)}
    what = (f"S3 targeted ({n:,} users): {result['best_publishes_per_s']:,} durable publishes/s" if per_post == 1
            else f"S6 bulk ({n:,} users, POSTs of {per_post}): {result['best_notifications_per_s']:,} "
                 f"durable notifications/s")
    result["line"] = (f"{what} (p50 {result['best_p50_ms']} ms, p99 {result['best_p99_ms']} ms, 201 p99 "
                      f"{result['best_ack_p99_ms']} ms; lost {result['lost_passing']} dup {result['dup_passing']}; "
                      f"over all steps and the warm-up lost {result['lost_all']} dup {result['dup_all']}; "
                      f"server CPU {result['server_cpu']}%, client CPU {result['client_cpu']}% "
                      f"(max {result['client_cpu_max']}%))")
    return result


# -- S4 replay ---------------------------------------------------------------------------------

async def s4_replay(ctx: Ctx) -> dict[str, Any]:
    sink = Sink()
    sink.record_ids = True
    user = "replayer"
    pub = await Publisher(ctx.port, ctx.publisher_token(), connections=64).open()
    body = b'{"user":"%s","title":"missed","data":{"seq":1}}' % user.encode()
    runs = []
    try:
        for missed, reps in ctx.plan.replay:
            for rep in range(reps):
                [live] = await ctx.streams("sse", [user], sink, until="hello")  # for its newest_id
                cursor = json.loads(live.hello)["newest_id"]
                live.close()
                answers = await asyncio.gather(*(pub.post(body) for _ in range(missed)))
                published = []
                for status, payload in answers:
                    if status == 201:
                        published.extend(json.loads(payload)["ids"])
                loop = asyncio.get_running_loop()
                t0 = time.time()
                [again] = await ctx.streams("sse", [user], sink, cursor=cursor, until="hello")
                t_hello = time.time()
                deadline = loop.time() + 30
                while again.count < len(published) and loop.time() < deadline and not again.closed:
                    await asyncio.sleep(0.001)
                t_done = again.last_rx if again.count else time.time()
                got = list(again.ids or [])
                again.close()
                replay_mode = json.loads(again.hello).get("replay")
                lost = len(set(published) - set(got))
                dup = len(got) - len(set(got))
                in_order = all(a < b for a, b in zip(got, got[1:]))
                run = {"missed": missed, "published": len(published), "received": len(got), "lost": lost,
                       "dup": dup, "in_order": in_order, "hello_replay": replay_mode,
                       "total_ms": round((t_done - t0) * 1000, 2),
                       "after_hello_ms": round(max(0.0, t_done - t_hello) * 1000, 2)}
                runs.append(run)
                ctx.log(f"  S4 missed {missed:,}: all received in {run['total_ms']:.1f} ms "
                        f"(connect+hello {1000 * (t_hello - t0):.1f} ms), lost {lost} dup {dup} "
                        f"in order {in_order}, hello.replay={replay_mode}")
    finally:
        await pub.close()
    by_size = []
    for missed, _ in ctx.plan.replay:
        rs = [r for r in runs if r["missed"] == missed]
        times = sorted(r["total_ms"] for r in rs)
        by_size.append({"missed": missed, "runs": len(rs), "median_ms": times[len(times) // 2],
                        "max_ms": times[-1], "lost": sum(r["lost"] for r in rs), "dup": sum(r["dup"] for r in rs),
                        "in_order": all(r["in_order"] for r in rs)})
    line = "S4 replay: " + " | ".join(
        f"{b['missed']:,} missed -> all received in {b['median_ms']:.1f} ms median "
        f"({b['max_ms']:.1f} max of {b['runs']}), lost {b['lost']} dup {b['dup']}, in order {b['in_order']}"
        for b in by_size)
    return {"runs": runs, "by_size": by_size, "line": line}


SCENARIO_FUNCS = {"S1": s1_idle, "S2": s2_broadcast, "S3": s3_targeted, "S4": s4_replay, "S5": s5_websocket,
                  "S6": s6_bulk, "S7": s7_storm}


# -- the run -------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "?"

    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_kib / 1024 / 1024, 1),
            "kernel": platform.release(), "os": platform.platform(), "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(), "sse_notify": v("sse-notify"), "hypercorn": v("hypercorn"),
            "quart": v("quart"), "uvloop": v("uvloop"), "aiosqlite": v("aiosqlite"), "sqlite": sqlite3.sqlite_version, "h11": v("h11"),
            "wsproto": v("wsproto")}


async def run_server_scenarios(kind: str, scenarios: Sequence[str], plan: Plan, secret: str,
                               data_root: Path, server_core: int | None, shared: bool,
                               log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    server: Server | None = None

    def make(name: str) -> Server:
        d = data_root / f"{kind}-{name}"
        if kind == "sse-notify":
            return SSENotifyServer(d, secret, server_core)
        return PeerServer(d, secret, server_core)

    try:
        for name in scenarios:
            if server is None or not shared:
                server = make("shared" if shared else name)
                server.start()
                log(f"[{kind}] {name}: server pid {server.pid} on port {server.port}"
                    + (f", pinned to core {server_core}" if server_core is not None else ""))
            ctx = Ctx(server, plan, secret, log)
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(plan.scenario_budget_s):
                    result = await SCENARIO_FUNCS[name](ctx)
            except Exception as exc:  # one failing scenario must not hide the others
                result = {"error": f"{type(exc).__name__}: {exc}", "line": f"{name}: FAILED {type(exc).__name__}: {exc}"}
            result["seconds"] = round(time.monotonic() - t0, 1)
            result["server_peak_rss_kib"] = _peak_rss(server)
            results[name] = result
            print(f"[{kind}] {result['line']}", flush=True)
            if not shared:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
    return results


def _peak_rss(server: Server) -> int | None:
    try:
        with open(f"/proc/{server.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, AssertionError):
        return None
    return None


def ratio_lines(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """sse-notify / peer, per figure (> 1 is better for sse-notify except where noted)."""
    out: dict[str, Any] = {}

    def r(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    if "S1" in ours and "S1" in peer and "error" not in ours["S1"] and "error" not in peer["S1"]:
        out["S1 KiB/stream (lower is better)"] = r(ours["S1"]["kib_per_stream"], peer["S1"]["kib_per_stream"])
    for name in ("S2", "S5"):
        if name in ours and name in peer and "error" not in ours[name] and "error" not in peer[name]:
            for a, b in zip(ours[name]["by_subscribers"], peer[name]["by_subscribers"]):
                out[f"{name} deliveries/s at {a['subscribers']:,}"] = r(a["best_deliveries_per_s"], b["best_deliveries_per_s"])
    if "S3" in ours and "S3" in peer and "error" not in ours["S3"] and "error" not in peer["S3"]:
        out["S3 publishes/s"] = r(ours["S3"]["best_publishes_per_s"], peer["S3"]["best_publishes_per_s"])
    if "S6" in ours and "S6" in peer and "error" not in ours["S6"] and "error" not in peer["S6"]:
        out["S6 notifications/s in bulk"] = r(ours["S6"]["best_notifications_per_s"],
                                              peer["S6"]["best_notifications_per_s"])
    if "S4" in ours and "S4" in peer and "error" not in ours["S4"] and "error" not in peer["S4"]:
        for a, b in zip(ours["S4"]["by_size"], peer["S4"]["by_size"]):
            out[f"S4 replay time {a['missed']:,} (lower is better)"] = r(a["median_ms"], b["median_ms"])
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, short steps (~3 min with the peer)")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; for the test suite")
    p.add_argument("--scenario", default="all",
                   help="comma-separated subset of S1,...,S6, or S7 (the reconnect storm, not in the default "
                        "run); default: all of S1-S6")
    p.add_argument("--no-peer", dest="peer", action="store_false", help="skip the Node peer server")
    p.add_argument("--peer-only", action="store_true", help="run only the peer (client sanity check)")
    p.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin server and client to cores")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--shared-server", action="store_true",
                   help="one server for all scenarios (default: a fresh server and data dir per scenario)")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results",
                   help="where the JSON results and data dirs go (default: bench/results, git-ignored)")
    p.add_argument("--write-report", choices=("auto", "yes", "no"), default="auto",
                   help="write bench/RESULTS.md and bench/latency.png (auto: only for a full run of everything)")
    p.add_argument("--report-dir", type=Path, default=BENCH_DIR)
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    plan = Plan.smoke() if args.smoke else Plan.quick() if args.quick else Plan.full()
    scenarios = SCENARIOS if args.scenario == "all" else tuple(
        s.strip().upper() for s in args.scenario.split(",") if s.strip())
    unknown = [s for s in scenarios if s not in SCENARIOS + EXTRA_SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    nofile = raise_open_files_limit()
    need = max(plan.s1_levels + plan.fanout_subs
               + ([plan.storm_streams] if "S7" in scenarios else [])) + 200
    if nofile < need:
        raise SystemExit(f"open-files limit {nofile} is below the {need} sockets this run needs")

    server_core: int | None = None
    pinned = ""
    if args.pin and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity"):
        server_core = args.server_core
        os.sched_setaffinity(0, {args.client_core})
        pinned = f"server on core {server_core} ({'taskset' if shutil.which('taskset') else 'unpinned: no taskset'}), client on core {args.client_core}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir: Path = args.results_dir
    data_root = results_dir / f"data-{stamp}"
    secret = secrets.token_urlsafe(32)

    def log(msg: str) -> None:
        print(msg, flush=True)

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    log(f"sse-notify bench ({mode}): scenarios {','.join(scenarios)}; {pinned or 'no pinning'}; "
        f"open-files limit {nofile}")
    out: dict[str, Any] = {"mode": mode, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "scenarios": list(scenarios),
                           "pinning": pinned or None, "machine": machine_info(), "plan": asdict(plan),
                           "targets": TARGETS, "results": {}}
    started = time.monotonic()
    kinds = [] if args.peer_only else ["sse-notify"]
    if args.peer or args.peer_only:
        try:
            ensure_peer_installed()
            kinds.append("peer")
        except Exception as exc:
            log(f"peer unavailable, skipped: {exc}")
            out["peer_error"] = str(exc)
    try:
        for kind in kinds:
            out["results"][kind] = await run_server_scenarios(
                kind, scenarios, plan, secret, data_root, server_core, args.shared_server, log)
            if kind == "peer":
                out["machine"]["peer"] = PeerServer(data_root, secret, None).version()
    finally:
        shutil.rmtree(data_root, ignore_errors=True)
    out["client_cpu_total_s"] = round(client_cpu_seconds(), 1)
    out["seconds"] = round(time.monotonic() - started, 1)
    if "sse-notify" in out["results"] and "peer" in out["results"]:
        out["ratios"] = ratio_lines(out["results"]["sse-notify"], out["results"]["peer"])
        for name, value in out["ratios"].items():
            log(f"ratio sse-notify/peer {name}: {value}")
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{stamp}-{mode}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    log(f"results: {path} ({out['seconds']:.0f} s)")
    write = args.write_report == "yes" or (args.write_report == "auto" and mode == "full" and args.scenario == "all")
    if write:
        from bench.report import write_report

        written = write_report(out, args.report_dir)
        log("report: " + ", ".join(str(p) for p in written))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(amain(args))
    else:
        result = uvloop.run(amain(args))
    failed = [f"{kind}/{name}" for kind, rs in result["results"].items() for name, r in rs.items() if "error" in r]
    if failed:
        print("scenarios that failed to run: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
