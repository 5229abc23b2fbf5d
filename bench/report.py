"""Turn one run's results (the JSON that ``bench/run.py`` writes) into ``RESULTS.md`` and
``latency.png``. Also usable alone: ``python -m bench.report bench/results/<run>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "write_report", "render_markdown", "render_chart", "verdicts"]

# Issue 9's targets (same client, one server core); the figures below are what verdicts() checks.
S1_KIB_PER_STREAM = 12  # at 10,000 idle SSE streams
S2_DELIVERIES_PER_S = {1000: 200_000, 10_000: 100_000}  # by subscribers, p99 < 1 s, 0 lost
S3_PUBLISHES_PER_S = 5000
S4_REPLAY_MS = 10  # 1,000 missed events
S5_OF_S2 = 0.8  # at each subscriber count
S6_NOTIFICATIONS_PER_S = 50_000  # in POSTs of 100
S7_OPENED_PER_S = 3000  # 10,000 streams at once, 0 refused

TARGETS = {
    "S1": f"<= {S1_KIB_PER_STREAM} KiB per idle SSE stream at 10,000 streams",
    "S2": (f">= {S2_DELIVERIES_PER_S[1000]:,} deliveries/s at 1,000 subscribers, "
           f">= {S2_DELIVERIES_PER_S[10_000]:,} at 10,000 (p99 < 1 s), 0 lost/dup"),
    "S3": f">= {S3_PUBLISHES_PER_S:,} durable targeted publishes/s (p99 < 1 s)",
    "S4": f"1,000 missed events replayed in <= {S4_REPLAY_MS} ms, 0 lost/dup",
    "S5": f">= {S5_OF_S2}x S2 at both subscriber counts",
    "S6": f">= {S6_NOTIFICATIONS_PER_S:,} durable notifications/s in bulk POSTs of 100 (p99 < 1 s)",
    "S7": f"10,000 SSE streams opened at once: 0 refused, >= {S7_OPENED_PER_S:,} opened/s",
}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and not value.is_integer():
        text = f"{value:,.1f}"
    else:
        text = f"{int(value):,}"
    return text + unit


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("met" if flag else "**missed**")


def verdicts(ours: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was asked, what sse-notify did, met or not."""
    rows: list[dict[str, Any]] = []
    s1 = ours.get("S1")
    if s1 and "error" not in s1:
        lv = s1["levels"][-1]
        rows.append({"scenario": "S1", "figure": f"KiB per idle SSE stream at {lv['streams']:,}",
                     "target": f"≤ {S1_KIB_PER_STREAM}", "value": lv["kib_per_stream"],
                     "met": lv["kib_per_stream"] <= S1_KIB_PER_STREAM if lv["streams"] >= 10000 else None})
    s2_by = {}
    s2 = ours.get("S2")
    if s2 and "error" not in s2:
        for r in s2["by_subscribers"]:
            s2_by[r["subscribers"]] = r["best_deliveries_per_s"]
            need = S2_DELIVERIES_PER_S.get(r["subscribers"])
            clean = r["lost_all"] == 0 and r["dup_all"] == 0
            rows.append({"scenario": "S2", "figure": f"deliveries/s at {r['subscribers']:,} subscribers, p99 < 1 s",
                         "target": f"≥ {need:,}" if need else "–", "value": r["best_deliveries_per_s"],
                         "met": (r["best_deliveries_per_s"] >= need and clean) if need else None})
            rows.append({"scenario": "S2", "figure": f"lost / duplicated at {r['subscribers']:,} (all steps)",
                         "target": "0 / 0", "value": f"{r['lost_all']} / {r['dup_all']}", "met": clean})
    s3 = ours.get("S3")
    if s3 and "error" not in s3:
        rows.append({"scenario": "S3", "figure": f"durable targeted publishes/s ({s3['users']:,} users), p99 < 1 s",
                     "target": f"≥ {S3_PUBLISHES_PER_S:,}", "value": s3["best_publishes_per_s"],
                     "met": s3["best_publishes_per_s"] >= S3_PUBLISHES_PER_S and s3["lost_all"] == 0 and s3["dup_all"] == 0})
    s6 = ours.get("S6")
    if s6 and "error" not in s6:
        rows.append({"scenario": "S6", "figure": f"durable notifications/s in bulk POSTs of {s6['per_post']} "
                                                 f"({s6['users']:,} users), p99 < 1 s",
                     "target": f"≥ {S6_NOTIFICATIONS_PER_S:,}", "value": s6["best_notifications_per_s"],
                     "met": s6["best_notifications_per_s"] >= S6_NOTIFICATIONS_PER_S and s6["lost_all"] == 0 and s6["dup_all"] == 0})
    s4 = ours.get("S4")
    if s4 and "error" not in s4:
        for b in s4["by_size"]:
            clean = b["lost"] == 0 and b["dup"] == 0 and b["in_order"]
            rows.append({"scenario": "S4", "figure": f"{b['missed']:,} missed events replayed (median ms), lost/dup",
                         "target": f"≤ {S4_REPLAY_MS} ms, 0/0" if b["missed"] == 1000 else "0/0",
                         "value": f"{b['median_ms']:.1f} ms, {b['lost']}/{b['dup']}",
                         "met": (b["median_ms"] <= S4_REPLAY_MS and clean) if b["missed"] == 1000 else clean})
    s5 = ours.get("S5")
    if s5 and "error" not in s5:
        for r in s5["by_subscribers"]:
            base = s2_by.get(r["subscribers"])
            ratio = r["best_deliveries_per_s"] / base if base else None
            rows.append({"scenario": "S5", "figure": f"WS deliveries/s at {r['subscribers']:,} (÷ S2)",
                         "target": f"≥ {S5_OF_S2}× S2",
                         "value": f"{r['best_deliveries_per_s']:,}" + (f" ({ratio:.2f}×)" if ratio else ""),
                         "met": (ratio >= S5_OF_S2 and r["lost_all"] == 0 and r["dup_all"] == 0) if ratio else None})
    s7 = ours.get("S7")
    if s7 and "error" not in s7:
        rows.append({"scenario": "S7", "figure": f"{s7['streams']:,} SSE streams opened at once: opened/s, refused",
                     "target": f"≥ {S7_OPENED_PER_S:,}/s, 0 refused",
                     "value": f"{s7['opened_per_s']:,}/s, {s7['refused']} refused",
                     "met": (s7["opened_per_s"] >= S7_OPENED_PER_S and s7["refused"] == 0)
                     if s7["streams"] >= 10000 else None})
    return rows


def _ladder_table(steps: list[dict[str, Any]], unit: str) -> list[str]:
    lines = [f"| offered {unit} | achieved | p50 ms | p90 ms | p99 ms | max ms | 201 p99 ms | lost | dup | "
             f"server CPU % (+wait) | client CPU % (+wait) | verdict |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in sorted(steps, key=lambda s: s["offered"]):
        lat, ack, cpu = s["lat_ms"], s["ack_ms"], s["cpu"]
        lines.append(
            f"| {_fmt(s['offered'])} | {_fmt(s['achieved'])} | {_fmt(lat.get('p50'))} | {_fmt(lat.get('p90'))} | "
            f"{_fmt(lat.get('p99'))} | {_fmt(lat.get('max'))} | {_fmt(ack.get('p99'))} | {s['lost']} | {s['dup']} | "
            f"{cpu['server_cpu']:.0f} (+{cpu.get('server_wait', 0):.0f}) | "
            f"{cpu['client_cpu']:.0f} (+{cpu.get('client_wait', 0):.0f}) | "
            f"{'pass' if s['ok'] else 'fail: ' + s['note']} |")
    return lines


def render_markdown(run: dict[str, Any], chart_name: str | None = "latency.png") -> str:
    m = run["machine"]
    ours = run["results"].get("sse-notify", {})
    rows = verdicts(ours)
    missed = [r for r in rows if r["met"] is False]
    out = ["# sse-notify benchmark results", ""]
    if missed:
        out += ["> Targets missed in this run: "
                + "; ".join(f"{r['scenario']} {r['figure']} ({r['value']}, target {r['target']})" for r in missed)
                + ". Where the time goes, and what meeting them would take: [PROFILE.md](PROFILE.md).", ""]
    out += [
        f"- Date: {run['date']}; mode: {run['mode']}; duration {run['seconds']:.0f} s.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB, Linux {m['kernel']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])} "
        "(the machine is shared: see the *wait* columns, time the pinned process was runnable but "
        "its core was taken by another tenant).",
        f"- Versions: Python {m['python']}, sse-notify {m['sse_notify']}, Hypercorn {m['hypercorn']}, "
        f"Quart {m['quart']}, uvloop {m['uvloop']}, aiosqlite {m.get('aiosqlite', '?')}, "
        f"SQLite {m.get('sqlite', '?')}, h11 {m['h11']}, "
        f"wsproto {m['wsproto']}; peer: {m.get('peer', 'not run')}.",
        f"- Pinning: {run['pinning'] or 'none'}. Server flags: `--no-access-log`, otherwise defaults "
        "(`--heartbeat 15`, `--stream-buffer 1024`, SQLite WAL with `synchronous=FULL`).",
        "- Client: one Python process, uvloop, raw asyncio protocols (HTTP/1.1 chunked SSE and RFC 6455 "
        "parsed incrementally), open-loop publisher over keep-alive connections; the latency is from the "
        "publish's *scheduled* send time (in `data.ts`) to the frame's arrival.",
        "- Peer: `bench/peer/server.js`, Node + `ws` from npm: same wire surface and token check, "
        "publish durable by group-committed append + `fdatasync` before the 201, fan-out and replay "
        "from memory.",
        "- Command: `python -m bench` (see `bench/README.md`).",
        "",
        "## Targets",
        "",
        "| scenario | figure | target | sse-notify | verdict |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        value = r["value"] if isinstance(r["value"], str) else _fmt(r["value"])
        out.append(f"| {r['scenario']} | {r['figure']} | {r['target']} | {value} | {_ok(r['met'])} |")
    out += ["", "## Scenario lines", "", "```"]
    for kind, results in run["results"].items():
        for name in sorted(results):
            out.append(f"[{kind}] {results[name]['line']}")
    out += ["```", ""]
    if run.get("ratios"):
        out += ["## sse-notify / peer", "", "| figure | ratio |", "|---|---:|"]
        for name, value in run["ratios"].items():
            out.append(f"| {name} | {'–' if value is None else f'{value:.2f}'} |")
        out.append("")
    if chart_name:
        out += ["## Latency against offered rate", "", f"![latency percentiles against offered rate]({chart_name})", ""]
    out += ["## Ladders", ""]
    for kind, results in run["results"].items():
        for name in ("S2", "S5"):
            r = results.get(name)
            if not r or "error" in r:
                continue
            for sub in r["by_subscribers"]:
                out += [f"### {kind} {name} ({sub['transport']}), {sub['subscribers']:,} subscribers", ""]
                out += _ladder_table(sub["steps"], "deliveries/s") + [""]
        r = results.get("S3")
        if r and "error" not in r:
            out += [f"### {kind} S3 targeted, {r['users']:,} users", ""]
            out += _ladder_table(r["steps"], "publishes/s") + [""]
        r = results.get("S6")
        if r and "error" not in r:
            out += [f"### {kind} S6 bulk, POSTs of {r['per_post']}, {r['users']:,} users", ""]
            out += _ladder_table(r["steps"], "notifications/s") + [""]
        r = results.get("S1")
        if r and "error" not in r:
            out += [f"### {kind} S1 idle streams", "", "| streams | alive | RSS MiB | KiB/stream | opens/s |",
                    "|---:|---:|---:|---:|---:|"]
            for lv in r["levels"]:
                out.append(f"| {lv['streams']:,} | {lv['alive']:,} | {lv['rss_kib'] / 1024:.1f} | "
                           f"{lv['kib_per_stream']:.1f} | {lv['connects_per_s']:,} |")
            out.append("")
        r = results.get("S4")
        if r and "error" not in r:
            out += [f"### {kind} S4 replay", "", "| missed | total ms | after hello ms | lost | dup | in order | hello.replay |",
                    "|---:|---:|---:|---:|---:|---|---|"]
            for run_ in r["runs"]:
                out.append(f"| {run_['missed']:,} | {run_['total_ms']:.1f} | {run_['after_hello_ms']:.1f} | "
                           f"{run_['lost']} | {run_['dup']} | {run_['in_order']} | {run_['hello_replay']} |")
            out.append("")
    out += ["Raw figures: the JSON in `bench/results/` (not committed) that this page was made from.", ""]
    return "\n".join(out)


def _si(x: float, _: object = None) -> str:
    return f"{x / 1000:g}k" if x >= 1000 else f"{x:g}"


def render_chart(run: dict[str, Any], path: Path) -> bool:
    """Latency percentiles (p50, p99) against offered rate, one panel per ladder; False when
    matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    panels: list[tuple[str, str, dict[str, list[dict[str, Any]]]]] = []
    kinds = list(run["results"])
    first = run["results"].get("sse-notify") or next(iter(run["results"].values()), {})
    for name, transport in (("S2", "SSE"), ("S5", "WebSocket")):
        r = first.get(name)
        if r and "error" not in r:
            for i, sub in enumerate(r["by_subscribers"]):
                series = {}
                for kind in kinds:
                    other = run["results"][kind].get(name)
                    if other and "error" not in other and i < len(other["by_subscribers"]):
                        series[kind] = other["by_subscribers"][i]["steps"]
                panels.append((f"{name} broadcast over {transport}, {sub['subscribers']:,} subscribers",
                               "offered deliveries/s", series))
    if first.get("S3") and "error" not in first["S3"]:
        series = {k: run["results"][k]["S3"]["steps"] for k in kinds
                  if run["results"][k].get("S3") and "error" not in run["results"][k]["S3"]}
        panels.append((f"S3 targeted publishes, {first['S3']['users']:,} users", "offered publishes/s", series))
    if first.get("S6") and "error" not in first["S6"]:
        series = {k: run["results"][k]["S6"]["steps"] for k in kinds
                  if run["results"][k].get("S6") and "error" not in run["results"][k]["S6"]}
        panels.append((f"S6 bulk POSTs of {first['S6']['per_post']}, {first['S6']['users']:,} users",
                       "offered notifications/s", series))
    if not panels:
        return False
    cols = 3 if len(panels) > 4 else 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.9 * rows), squeeze=False)
    colours = {"sse-notify": "tab:blue", "peer": "tab:orange"}
    for ax, (title, xlabel, series) in zip(axes.flat, panels):
        for kind, steps in series.items():
            steps = sorted(steps, key=lambda s: s["offered"])
            xs = [s["offered"] for s in steps]
            for q, style in (("p50", ":"), ("p99", "-")):
                ys = [max(0.01, s["lat_ms"].get(q) or 0) for s in steps]
                ax.plot(xs, ys, style, marker="o", ms=3, color=colours.get(kind), label=f"{kind} {q}")
            fails = [(s["offered"], max(0.01, s["lat_ms"].get("p99") or 0)) for s in steps if not s["ok"]]
            if fails:
                ax.scatter(*zip(*fails), marker="x", s=60, color="red", zorder=5)
        ax.axhline(1000, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda x, _: ""))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("publish→receive latency (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", lw=0.3, alpha=0.5)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"sse-notify benchmark, {run['date']} (x: failed step; dashed: the 1 s p99 limit)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(run: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    chart = out_dir / "latency.png"
    has_chart = render_chart(run, chart)
    if has_chart:
        written.append(chart)
    md = out_dir / "RESULTS.md"
    md.write_text(render_markdown(run, chart.name if has_chart else None))
    written.append(md)
    return written


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m bench.report RESULTS.json [OUT_DIR]")
    data = json.loads(Path(sys.argv[1]).read_text())
    for p in write_report(data, Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent):
        print(p)
