"""The scenarios S1-S6, each ``async (ctx) -> dict`` returning its figures and its one
summary ``line`` (S7, the reconnect storm, is :mod:`bench.storm`):

* S1 idle capacity: server RSS per idle SSE stream.
* S2/S5 broadcast fan-out over SSE/WebSocket: a ladder of broadcast rates per subscriber count.
* S3/S6 targeted: durable single-user publishes, or bulk POSTs of 100, a ladder of rates.
* S4 replay: a subscriber misses events and reconnects with its cursor.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from bench.client import Publisher, Sink, _Stream, drive, percentiles
from bench.ladder import Ctx, Meter, Step, best_step, close_streams, drain, ms, run_ladder, verdict
from bench.storm import s7_storm

__all__ = ["SCENARIO_FUNCS", "BULK", "s1_idle", "s2_broadcast", "s3_targeted", "s4_replay", "s5_websocket",
           "s6_bulk"]

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


# -- broadcast fan-out (S2, S5) -------------------------------------------------------------

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
        return verdict(Step(
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
    best = best_step(steps)
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
        return verdict(Step(
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
    best = best_step(steps)
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

