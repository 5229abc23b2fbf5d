"""The benchmark's PostgreSQL mode: ``python -m bench.cluster`` (see bench/README.md).

The same figures for the embedded SQLite store and for a PostgreSQL store (a fresh database
on 127.0.0.1:5432, dropped afterwards), printed side by side:

* P1 durable targeted publishes/s: a ladder of rates, one notification per POST to 1,000
  users in turn, each answered 201 only after its commit; the highest rate whose p99
  answer time stays under 1 s with no errors. (No streams: S3 of ``python -m bench``
  measures delivery as well.)
* P2 replay: a subscriber misses 1,000 notifications and reconnects with its cursor;
  milliseconds until all of them arrived (median of 5).
* P3 publish -> receive latency at a moderate rate: 1,000 users with one SSE stream each,
  publishes to them at ``--rate``/s. On one node (SQLite, and PostgreSQL), and across
  nodes: the streams on node B, the publisher on node A, both on the PostgreSQL store and
  its LISTEN/NOTIFY broker (and with ``--redis``, a Redis broker).

Servers run pinned to core 0 (two nodes share it), this client to core 1; PostgreSQL and
Redis are not pinned. Results: ``bench/results/cluster-<stamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg  # noqa: E402

from bench.client import Publisher, Sink, drive, open_streams, percentiles  # noqa: E402
from bench.servers import BENCH_DIR, SSENotifyServer  # noqa: E402
from sse_notify.server import raise_open_files_limit  # noqa: E402
from sse_notify.tokens import TokenSigner  # noqa: E402

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
USERS = 1000
LADDER = (500, 1000, 2000, 3000, 4000, 5000, 6000, 8000)
STEP_S = 4.0
P99_LIMIT = 1.0


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


class Bench:
    def __init__(self, workdir: Path, core_server: int | None, core_client: int | None):
        self.workdir = workdir
        self.secret = secrets.token_urlsafe(32)
        self.signer = TokenSigner(self.secret)
        self.core = core_server
        self.users = [f"user{i}" for i in range(USERS)]
        self.tokens = [self.signer.subscriber(u, ttl=3600) for u in self.users]
        if core_client is not None:
            os.sched_setaffinity(0, {core_client})

    def node(self, name: str, *args: str) -> SSENotifyServer:
        return SSENotifyServer(self.workdir / name, self.secret, self.core, list(args)).start()

    async def publishes(self, server: SSENotifyServer, ladder: Sequence[int]) -> dict[str, Any]:
        """P1: the highest rate answered within the p99 limit, with every step's figures."""
        pub = await Publisher(server.port, self.signer.publisher("bench"), connections=64).open()
        heads = [b'{"user":"%s","title":"bench"}' % u.encode() for u in self.users]
        steps, best = [], 0
        try:
            for rate in ladder:
                res = await drive(pub, rate, STEP_S, lambda i, ts: heads[i % USERS])
                p99 = percentiles(res.ack).get("p99", 0.0)
                steps.append({"rate": rate, "ok": res.ok, "errors": res.errors, "p99_ms": ms(p99),
                              "achieved": round(res.achieved)})
                print(f"    {rate:>6,}/s offered: {round(res.achieved):>6,}/s done, p99 {ms(p99):,} ms, "
                      f"errors {res.errors}", flush=True)
                if res.errors or res.overloaded or p99 >= P99_LIMIT:
                    break
                best = rate
        finally:
            await pub.close()
        return {"best_per_s": best, "steps": steps}

    async def replay(self, server: SSENotifyServer, missed: int = 1000, reps: int = 5) -> dict[str, Any]:
        """P2: a stream with a cursor ``missed`` notifications behind: time to all of them."""
        pub = await Publisher(server.port, self.signer.publisher("bench"), connections=64).open()
        token = self.signer.subscriber("replayer", ttl=3600)
        body = b'{"user":"replayer","title":"missed"}'
        times, lost = [], 0
        try:
            for _ in range(reps):
                sink = Sink()
                [probe] = await open_streams("sse", server.port, ["replayer"], [token], sink, until="hello")
                cursor = json.loads(probe.hello)["newest_id"]
                probe.close()
                answers = await asyncio.gather(*(pub.post(body) for _ in range(missed)))
                published = sum(1 for status, _ in answers if status == 201)
                t0 = time.monotonic()
                [stream] = await open_streams("sse", server.port, ["replayer"], [token], sink,
                                              cursor=cursor, until="hello")
                deadline = t0 + 30
                while stream.count < published and time.monotonic() < deadline:
                    await asyncio.sleep(0.001)
                times.append(time.monotonic() - t0)
                lost += published - stream.count
                stream.close()
        finally:
            await pub.close()
        return {"median_ms": ms(sorted(times)[len(times) // 2]), "lost": lost}

    async def latency(self, publish_to: SSENotifyServer, streams_on: SSENotifyServer,
                      rate: float, seconds: float) -> dict[str, Any]:
        """P3: publish -> receive latency, publisher on one node, the streams on another
        (or the same)."""
        sink = Sink()
        streams = await open_streams("sse", streams_on.port, self.users, self.tokens, sink)
        pub = await Publisher(publish_to.port, self.signer.publisher("bench"), connections=32).open()
        heads = [b'{"user":"%s","title":"bench","data":{"ts":' % u.encode() for u in self.users]
        try:
            await drive(pub, 50, 1.0, lambda i, ts: heads[i % USERS] + b"%.6f}}" % ts)  # warm-up
            deadline = time.monotonic() + 10
            while sink.delivered < 50 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            sink.take()
            before = sink.delivered
            res = await drive(pub, rate, seconds, lambda i, ts: heads[i % USERS] + b"%.6f}}" % ts)
            deadline = time.monotonic() + 10
            while sink.delivered - before < res.ok and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            lat = percentiles(sink.take())
            return {"rate": rate, "published": res.ok, "received": sink.delivered - before,
                    "dup": sum(s.dups for s in streams), **{k: ms(v) for k, v in lat.items()}}
        finally:
            await pub.close()
            for stream in streams:
                stream.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_files_limit()
    database = f"sse_notify_bench_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{database}"')
    store = PG_ADMIN.rsplit("/", 1)[0] + "/" + database
    ladder = LADDER[:3] if args.quick else LADDER
    results: dict[str, Any] = {"store_url": store.rsplit("/", 1)[0] + "/<fresh>", "rate": args.rate}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args.server_core, args.client_core)
        try:
            for name, flags in (("sqlite", ()), ("postgresql", ("--store", store))):
                print(f"{name}:", flush=True)
                node = bench.node(f"{name}-a", *flags)
                try:
                    results[f"{name}_publishes"] = await bench.publishes(node, ladder)
                    results[f"{name}_replay"] = await bench.replay(node)
                    print(f"    replay of 1,000: {results[f'{name}_replay']['median_ms']} ms", flush=True)
                    results[f"{name}_one_node"] = await bench.latency(node, node, args.rate, args.seconds)
                    print(f"    one node: {results[f'{name}_one_node']}", flush=True)
                    if name == "postgresql":
                        brokers = [("postgresql", ())] + ([("redis", ("--broker", args.redis))] if args.redis else [])
                        for broker, extra in brokers:
                            a = bench.node(f"cross-{broker}-a", *flags, *extra)
                            b = bench.node(f"cross-{broker}-b", *flags, *extra)
                            try:
                                results[f"cross_node_{broker}"] = await bench.latency(a, b, args.rate, args.seconds)
                                print(f"    across nodes ({broker} broker): {results[f'cross_node_{broker}']}", flush=True)
                            finally:
                                a.stop()
                                b.stop()
                finally:
                    node.stop()
        finally:
            await _admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return results


def report(r: dict[str, Any]) -> str:
    def lat(key: str, q: str) -> str:
        return f"{r[key][q]:,}" if key in r and q in r[key] else "-"
    rows = [
        ("P1 durable targeted publishes/s (p99 < 1 s)",
         f"{r['sqlite_publishes']['best_per_s']:,}", f"{r['postgresql_publishes']['best_per_s']:,}"),
        ("P2 1,000 missed events replayed (ms)",
         f"{r['sqlite_replay']['median_ms']}", f"{r['postgresql_replay']['median_ms']}"),
        (f"P3 p50 / p99 ms at {r['rate']:g}/s, one node",
         f"{lat('sqlite_one_node', 'p50')} / {lat('sqlite_one_node', 'p99')}",
         f"{lat('postgresql_one_node', 'p50')} / {lat('postgresql_one_node', 'p99')}"),
        (f"P3 p50 / p99 ms at {r['rate']:g}/s, across two nodes (LISTEN/NOTIFY)", "-",
         f"{lat('cross_node_postgresql', 'p50')} / {lat('cross_node_postgresql', 'p99')}"),
    ]
    if "cross_node_redis" in r:
        rows.append((f"P3 p50 / p99 ms at {r['rate']:g}/s, across two nodes (Redis)", "-",
                     f"{lat('cross_node_redis', 'p50')} / {lat('cross_node_redis', 'p99')}"))
    lines = ["| figure | SQLite | PostgreSQL |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short ladder (~1 min)")
    p.add_argument("--rate", type=float, default=100.0, help="P3 publishes/s [100]")
    p.add_argument("--seconds", type=float, default=8.0, help="P3 duration [8]")
    p.add_argument("--redis", metavar="URL", help="also P3 across nodes with this Redis broker URL")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--client-core", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    args = p.parse_args(argv)
    if args.no_pin:
        args.server_core = args.client_core = None
    results = asyncio.run(run(args))
    out = BENCH_DIR / "results" / f"cluster-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print("\n" + report(results))
    print(f"\n(figures: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
