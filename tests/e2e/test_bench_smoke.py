"""The benchmark suite, in its smoke size, so that it cannot rot: ``python -m bench --smoke``
runs every scenario against the real server (and the Node peer, where Node is installed)
with a few streams for a few seconds, and what it measured is checked here -- nothing
lost or duplicated (counted from each stream's response start, as a browser's onopen),
and every figure the report needs present. Speed is not asserted:
that is the full run's job, on a quiet machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.report import render_markdown, verdicts

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    results = tmp_path_factory.mktemp("bench")
    args = [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(results)]
    if shutil.which("node") is None:
        args.append("--no-peer")
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [path] = results.glob("*-smoke.json")
    return json.loads(path.read_text())


def kinds(run: dict[str, Any]) -> list[str]:
    return list(run["results"])


def test_every_scenario_ran_for_each_server(run: dict[str, Any]) -> None:
    assert run["scenarios"] == ["S1", "S2", "S3", "S4", "S5", "S6"]
    assert kinds(run) == (["sse-notify", "peer"] if shutil.which("node") else ["sse-notify"])
    for kind in kinds(run):
        results = run["results"][kind]
        assert sorted(results) == ["S1", "S2", "S3", "S4", "S5", "S6"]
        for name, result in results.items():
            assert "error" not in result, (kind, name, result.get("error"))
            assert result["line"].startswith(name), result["line"]


def test_idle_streams_all_stay_open_and_cost_is_measured(run: dict[str, Any]) -> None:
    for kind in kinds(run):
        [level] = run["results"][kind]["S1"]["levels"]
        assert level["alive"] == level["streams"] == 20
        assert level["rss_kib"] > 0 and level["connects_per_s"] > 0


@pytest.mark.parametrize("name", ["S2", "S5"])
def test_fan_out_loses_and_duplicates_nothing(run: dict[str, Any], name: str) -> None:
    for kind in kinds(run):
        [fan] = run["results"][kind][name]["by_subscribers"]
        assert fan["lost_all"] == 0 and fan["lost_at_open"] == 0 and fan["dup_all"] == 0
        assert fan["best_deliveries_per_s"] > 0
        for step in fan["steps"]:
            assert step["received"] == step["expected"] > 0
            assert {"p50", "p99", "max"} <= set(step["lat_ms"])
            assert step["cpu"]["server_cpu"] >= 0 and step["cpu"]["client_cpu"] > 0


@pytest.mark.parametrize(("name", "figure"), [("S3", "best_publishes_per_s"), ("S6", "best_notifications_per_s")])
def test_targeted_publishes_are_durable_and_all_delivered(run: dict[str, Any], name: str, figure: str) -> None:
    for kind in kinds(run):
        result = run["results"][kind][name]
        assert result["lost_all"] == 0 and result["lost_at_open"] == 0 and result["dup_all"] == 0
        assert result[figure] > 0
        for step in result["steps"]:
            assert step["errors"] == 0 and step["published"] == step["received"] > 0
            assert "p99" in step["ack_ms"]  # every publish was answered 201
    assert run["results"]["sse-notify"]["S6"]["per_post"] == 100


def test_replay_after_a_missed_stretch_is_complete_and_in_order(run: dict[str, Any]) -> None:
    for kind in kinds(run):
        [replay] = run["results"][kind]["S4"]["runs"]
        assert replay["received"] == replay["published"] == replay["missed"] == 200
        assert replay["lost"] == 0 and replay["dup"] == 0 and replay["in_order"]
        assert replay["hello_replay"] == "resumed"
        assert replay["total_ms"] > 0


def test_the_report_renders_from_the_run(run: dict[str, Any]) -> None:
    rows = verdicts(run["results"]["sse-notify"])
    assert {r["scenario"] for r in rows} == {"S1", "S2", "S3", "S4", "S5", "S6"}
    text = render_markdown(run, chart_name=None)
    assert "## Targets" in text and "## Ladders" in text
    if "peer" in run["results"]:
        assert run["ratios"] and all(v is not None for v in run["ratios"].values())
