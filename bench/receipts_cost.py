"""What recording delivery receipts costs, in instructions (callgrind), with and without.

    .venv/bin/python -m bench.receipts_cost                 # both workloads, on and off
    .venv/bin/python -m bench.receipts_cost --publishes 300 --broadcasts 60 --streams 50

For each setting of ``SSE_NOTIFY_RECEIPTS`` (1, 0) the server runs under
``valgrind --tool=callgrind --instr-atstart=no``; collection is switched on
(``callgrind_control -i on``) only around a fixed workload, which includes the receipts'
flushes (the window ends after two flush intervals of quiet):

* **targeted** (the S3 shape): ``--streams`` users with one SSE stream each, then
  ``--publishes`` POSTs, each to one of them (each delivered and, with receipts, recorded);
  the figure is instructions per publish, delivery included.
* **fan-out** (the S2 shape): the same streams, then ``--broadcasts`` broadcasts; the
  figure is instructions per delivery (broadcasts get no per-user receipt: what is left is
  the hook's call per written batch).

Instruction counts repeat within a few per cent on a shared machine, where CPU time and
throughput swing by half (see PROFILE.md). SQLite store, one node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from sse_notify.tokens import TokenSigner

SECRET = "receipts-cost-benchmark-secret"
_RUNNING = re.compile(r"Running on http://[^\s]*:(\d+)")


def _start(data_dir: Path, receipts: bool, out: Path) -> tuple[subprocess.Popen[str], int, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_NOTIFY_")}
    env.update(SSE_NOTIFY_SECRET=SECRET, SSE_NOTIFY_RECEIPTS="1" if receipts else "0", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
         sys.executable, "-m", "sse_notify", "serve", "--port", "0", "--data-dir", str(data_dir),
         "--no-access-log"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    port = threading.Event()
    found: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = _RUNNING.search(line)
            if match and not found:
                found.append(int(match.group(1)))
                port.set()
        port.set()
    threading.Thread(target=read, daemon=True).start()
    if not port.wait(300) or not found:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines[-20:]))
    return proc, found[0], lines


async def _stream(client: httpx.AsyncClient, token: str, counts: dict[str, int], ready: asyncio.Event,
                  user: str) -> None:
    async with client.stream("GET", f"/events?token={token}", timeout=httpx.Timeout(30, read=None)) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("event: hello"):
                ready.set()
            elif line.startswith("event: notification"):
                counts[user] = counts.get(user, 0) + 1


async def _workload(port: int, pid: int, kind: str, streams: int, publishes: int, broadcasts: int) -> tuple[int, int]:
    signer = TokenSigner(SECRET)
    users = [f"u{i}" for i in range(streams)]
    counts: dict[str, int] = {}
    publisher = {"Authorization": f"Bearer {signer.publisher('bench')}"}
    limits = httpx.Limits(max_connections=streams + 20)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as client:
        readies = [asyncio.Event() for _ in users]
        tasks = [asyncio.create_task(_stream(client, signer.subscriber(u, ttl=3600), counts, r, u))
                 for u, r in zip(users, readies)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 300)
        await client.post("/notifications", headers=publisher, json={"broadcast": True, "title": "warm-up"})
        await _until(lambda: sum(counts.values()) >= streams)
        counts.clear()
        subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
        if kind == "targeted":
            for start in range(0, publishes, 10):
                await asyncio.gather(*(client.post("/notifications", headers=publisher,
                                                   json={"user": users[i % streams], "title": f"n{i}"})
                                       for i in range(start, min(start + 10, publishes))))
            expected, operations = publishes, publishes
        else:
            for i in range(broadcasts):
                await client.post("/notifications", headers=publisher, json={"broadcast": True, "title": f"b{i}"})
            expected, operations = broadcasts * streams, broadcasts * streams
        await _until(lambda: sum(counts.values()) >= expected)
        await asyncio.sleep(1.5)  # the receipts' flushes (every 0.5 s) fall inside the window
        subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return operations, sum(counts.values())


async def _until(check: object, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the workload did not complete")
        await asyncio.sleep(0.05)


def _instructions(out: Path) -> int:
    total = 0
    for part in out.parent.glob(out.name + "*"):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):  # ("summary:" is 0 in a dump taken by callgrind_control)
                total += int(line.split()[1])
                break
    return total


def measure(kind: str, receipts: bool, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory(prefix="receipts-cost-") as tmp:
        out = Path(tmp) / "callgrind.out"
        proc, port, _ = _start(Path(tmp) / "data", receipts, out)
        try:
            operations, _ = asyncio.run(_workload(port, proc.pid, kind, args.streams, args.publishes, args.broadcasts))
        finally:
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
        return _instructions(out) / operations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--publishes", type=int, default=300)
    parser.add_argument("--broadcasts", type=int, default=60)
    parser.add_argument("--workload", choices=["targeted", "fan-out", "both"], default="both")
    args = parser.parse_args()
    kinds = ["targeted", "fan-out"] if args.workload == "both" else [args.workload]
    for kind in kinds:
        on, off = measure(kind, True, args), measure(kind, False, args)
        unit = "publish (delivery included)" if kind == "targeted" else "delivery"
        print(f"{kind}: {on:,.0f} instructions per {unit} with receipts, {off:,.0f} without: "
              f"{(on - off) / off:+.1%}", flush=True)


if __name__ == "__main__":
    main()
