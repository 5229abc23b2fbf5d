"""S7, the reconnect storm: N SSE streams opened at once, as after a server restart.

Every client connects at the same moment -- no concurrency limit, no retry -- and the
figure is how many got in and how fast: opened/s (streams whose response started, over
the time until the last one started) and refused (a connection refused or reset, a
non-200 answer, or no response start within the timeout). A browser's EventSource would
retry a refused stream after its ``retry:`` delay; here a refusal is counted, because a
server that refuses part of a storm turns one reconnect into several.

Not in the default run (``--scenario S7`` selects it): it needs 2 x N descriptors.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.client import SSEStream, Sink, percentiles
from bench.ladder import Ctx

__all__ = ["s7_storm", "STORM_TIMEOUT"]

STORM_TIMEOUT = 60.0  # seconds for every stream to start or fail


async def storm(port: int, users: list[str], tokens: list[str],
                timeout: float = STORM_TIMEOUT) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sink = Sink()
    streams: list[SSEStream] = []
    started_at: list[float] = []
    refused: dict[str, int] = {}
    samples: list[str] = []
    t0 = time.monotonic()

    async def one(user: str, token: str) -> None:
        path = f"/events?token={token}&user={user}"
        try:
            _, proto = await loop.create_connection(lambda: SSEStream(sink, user, path), "127.0.0.1", port)
        except OSError as exc:
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            return
        streams.append(proto)
        try:
            await asyncio.wait_for(asyncio.shield(proto.started), max(0.0, t0 + timeout - time.monotonic()))
        except (ConnectionError, OSError) as exc:
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
            if len(samples) < 3:
                samples.append(str(exc)[:300])
        except TimeoutError:
            refused["timeout"] = refused.get("timeout", 0) + 1
        else:
            started_at.append(time.monotonic() - t0)

    try:
        await asyncio.gather(*(one(u, t) for u, t in zip(users, tokens)))
    finally:
        for stream in streams:
            stream.close()
    opened = len(started_at)
    last = max(started_at, default=0.0)
    pct = percentiles(started_at)
    return {"streams": len(users), "opened": opened, "refused": sum(refused.values()),
            "refused_by": refused, "refused_samples": samples, "seconds": round(last, 3),
            "opened_per_s": round(opened / last) if last else 0,
            "start_ms": {k: round(v * 1000, 1) for k, v in pct.items()}}


async def s7_storm(ctx: Ctx) -> dict[str, Any]:
    n = ctx.plan.storm_streams
    users = [f"storm{i}" for i in range(n)]
    tokens = ctx.tokens(users)
    warm = await storm(ctx.port, users[:10], tokens[:10])  # the first stream's one-off costs
    await asyncio.sleep(ctx.plan.settle_s)
    cpu0 = ctx.server.cpu_seconds()
    result = await storm(ctx.port, users, tokens)
    cpu = ctx.server.cpu_seconds() - cpu0
    result["server_cpu_s"] = round(cpu, 2)
    result["server_cpu_ms_per_stream"] = round(1000 * cpu / n, 3)
    result["warm_opened"] = warm["opened"]
    p = result["start_ms"]
    ctx.log(f"  S7 {n:,} at once: {result['opened']:,} opened in {result['seconds']:.2f} s, "
            f"refused {result['refused']} {result['refused_by'] or ''} {result['refused_samples'] or ''}; "
            f"response start p50 "
            f"{p.get('p50')} ms p99 {p.get('p99')} ms max {p.get('max')} ms; server CPU "
            f"{result['server_cpu_s']} s ({result['server_cpu_ms_per_stream']} ms per stream, "
            f"opening and closing)")
    result["line"] = (f"S7 storm: {n:,} SSE streams opened at once: {result['opened_per_s']:,} opened/s, "
                      f"{result['refused']} refused (p99 start {p.get('p99')} ms)")
    return result
