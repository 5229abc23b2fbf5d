"""``python -m tests.faults.report [results.jsonl]``: the README's "Reliability figures"
table, from the latest long-form result of each scenario in
``tests/faults/results/figures.jsonl`` (written by ``pytest tests/faults --long``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).parent / "results" / "figures.jsonl"

#: scenario -> (row title, [(figure, label)]): the figures the README shows, in order.
ROWS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "crash": ("1. Crash: SIGKILL under 20 publishers, restart, replay from 0", [
        ("kills", "kills"), ("answers_201", "201 answers"), ("acked_ids", "acknowledged ids"),
        ("replayable_ids", "replayable ids"), ("lost", "lost"),
        ("unacked_replayable", "replayable but never acknowledged"), ("corrupted", "corrupted")]),
    "replay-race": ("2. Replay race: subscribers drop and resume while publishing", [
        ("subscribers", "subscribers"), ("seconds", "seconds"), ("published", "published"),
        ("sessions", "reconnects"), ("received", "delivered"), ("missing", "missing"),
        ("duplicated", "duplicated"), ("out_of_order", "out of order")]),
    "slow-consumers": ("3. Slow consumers: 100 stop reading, 1,000 normal", [
        ("p99_ms_without", "p99 ms without"), ("p99_ms_with_slow", "p99 ms with slow"),
        ("p99_ms_after_cut", "p99 ms after the cut"), ("rss_mb_without", "RSS MB without"),
        ("rss_mb_with_slow", "RSS MB with slow"), ("slow_disconnects", "slow cut off"),
        ("seconds_to_cut", "s to cut"), ("normal_missing", "normal clients' missing")]),
    "churn": ("4. Churn: SSE and WebSocket connect/disconnect cycles", [
        ("cycles", "cycles"), ("cycles_per_s", "cycles/s"), ("failures", "failures"),
        ("rss_mb_before", "RSS MB before"), ("rss_mb_after", "RSS MB after"),
        ("rss_bytes_per_cycle_second_half", "RSS bytes/cycle, 2nd half"),
        ("fds_before", "fds before"), ("fds_after", "fds after"),
        ("open_streams_after", "streams left")]),
    "soak": ("5. Soak: 10 min publish, subscribe, reconnect, history", [
        ("published", "published"), ("received", "delivered"), ("history_reads", "history reads"),
        ("errors", "errors"), ("rss_growth_mb_per_min", "RSS MB/min after warm-up")]),
    "hostile-input": ("6. Hostile input: fuzzing and the classics", [
        ("tried", "requests tried"), ("server_errors_5xx", "5xx"), ("crashes", "crashes"),
        ("log_errors", "errors logged"), ("not_json", "non-JSON errors")]),
    "isolation": ("7. Isolation: A against B, forged tokens", [
        ("attempts", "attempts"), ("breaches", "breaches"), ("forged", "forged-token attempts"),
        ("mutations", "mutated tokens")]),
    "cluster-race": ("8. Several nodes: three on one PostgreSQL, publishing everywhere, reconnecting anywhere", [
        ("subscribers", "subscribers"), ("seconds", "seconds"), ("published", "published"),
        ("sessions", "reconnects"), ("received", "delivered"), ("missing", "missing"),
        ("duplicated", "duplicated"), ("out_of_order", "out of order")]),
    "cluster-redis": ("9. The same with the Redis broker", [
        ("published", "published"), ("sessions", "reconnects"), ("received", "delivered"),
        ("missing", "missing"), ("duplicated", "duplicated"), ("out_of_order", "out of order")]),
    "cluster-kill": ("10. The same while a node is SIGKILLed", [
        ("published", "published"), ("received", "delivered"), ("dropped", "streams cut by the kill"),
        ("missing", "missing"), ("duplicated", "duplicated"), ("out_of_order", "out of order")]),
    "postgresql-restart": ("11. PostgreSQL restarted under load (two nodes)", [
        ("published", "acknowledged"), ("refused_503", "503 answers"), ("slowest_publish_s", "slowest answer s"),
        ("missing", "missing"), ("duplicated", "duplicated"), ("out_of_order", "out of order")]),
    "pg-listen-killed": ("12. LISTEN connections killed (pg_terminate_backend)", [
        ("faults", "kills"), ("committed", "committed"), ("missing", "missing"), ("duplicated", "duplicated"),
        ("out_of_order", "out of order"), ("longest_stall_ms", "longest stall ms")]),
    "redis-restarted": ("13. Redis restarted", [
        ("faults", "restarts"), ("committed", "committed"), ("missing", "missing"), ("duplicated", "duplicated"),
        ("out_of_order", "out of order"), ("longest_stall_ms", "longest stall ms")]),
    "redis-client-kill": ("14. Redis subscribers kicked (CLIENT KILL)", [
        ("faults", "kicks"), ("committed", "committed"), ("missing", "missing"), ("duplicated", "duplicated"),
        ("out_of_order", "out of order"), ("longest_stall_ms", "longest stall ms")]),
}


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(path: Path = RESULTS) -> str:
    latest: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_bytes().splitlines():
            if line.strip():
                record = orjson.loads(line)
                latest[record["scenario"]] = record
    lines = ["| scenario | figures (latest long run) | run |", "| --- | --- | --- |"]
    for scenario, (title, figures) in ROWS.items():
        record = latest.get(scenario)
        if record is None:
            lines.append(f"| {title} | not run yet | |")
            continue
        values = record["figures"]
        shown = ", ".join(f"{label} **{_show(values[key])}**" for key, label in figures if key in values)
        lines.append(f"| {title} | {shown} | {record['at'][:10]}, {record['commit']}, {record['seconds']} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(table(Path(args[0]) if args else RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
