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

This module is the orchestration and the command line: a server per scenario (or one
shared), the peer after sse-notify, the ratios, the JSON and the report. The scenarios are
:mod:`bench.scenarios` (S7: :mod:`bench.storm`); their sizes, metering and the ladder are
:mod:`bench.ladder`; the targets and the report, :mod:`bench.report`.

Results: ``bench/results/<stamp>.json`` (git-ignored) and, for a full run,
``bench/RESULTS.md`` and ``bench/latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ladder import Ctx, Plan, client_cpu_seconds  # noqa: E402
from bench.report import TARGETS  # noqa: E402
from bench.scenarios import SCENARIO_FUNCS  # noqa: E402
from bench.servers import BENCH_DIR, PeerServer, Server, SSENotifyServer, ensure_peer_installed  # noqa: E402
from sse_notify.server import raise_open_files_limit  # noqa: E402

__all__ = ["SCENARIOS", "EXTRA_SCENARIOS", "main", "amain", "parse_args", "ratio_lines"]

SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6")
#: Selectable with --scenario but not part of the default run (it needs 2 x N descriptors).
EXTRA_SCENARIOS = ("S7",)


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
