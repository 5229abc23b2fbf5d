"""The servers under test, as subprocesses pinned to one core, and what /proc says of them.

* :class:`SSENotifyServer` runs the real ``sse-notify serve`` (the console script of the
  virtualenv the benchmark runs in) on a loopback port with a fresh data directory.
* :class:`PeerServer` runs ``bench/peer/server.js`` (Node, the ``ws`` package from npm):
  the same wire surface, the same token check, durable publish by group-committed
  append + fdatasync, in-memory fan-out and replay.

Both are started under ``taskset -c CORE`` where taskset exists, with the same secret in
``SSE_NOTIFY_SECRET`` so one set of tokens serves both. The port is chosen by the OS
(``--port 0``) and read from the server's own "listening" line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["Server", "SSENotifyServer", "PeerServer", "proc_rss_kib", "proc_cpu_seconds", "proc_run_wait_seconds",
           "ensure_peer_installed", "PEER_DIR"]

BENCH_DIR = Path(__file__).resolve().parent
PEER_DIR = BENCH_DIR / "peer"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (its threads included)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_run_wait_seconds(pid: int | str) -> tuple[float, float]:
    """(time on a CPU, time runnable but waiting for one), summed over the threads of
    ``pid`` (``"self"`` for this process), from /proc/PID/task/*/schedstat. The waiting
    time shows how much the other tenants of the machine took from a pinned process."""
    run = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                fields = fh.read().split()
        except OSError:
            continue
        run += int(fields[0])
        wait += int(fields[1])
    return run / 1e9, wait / 1e9


def _pin_prefix(core: int | None) -> list[str]:
    if core is None:
        return []
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core)] if taskset else []


class Server:
    name = "?"
    ready_re: re.Pattern[str]

    def __init__(self, data_dir: Path, secret: str, core: int | None):
        self.data_dir = Path(data_dir)
        self.secret = secret
        self.core = core
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._ready = threading.Event()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> Server:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSE_NOTIFY_")}
        if "SSE_NOTIFY_RECEIPTS" in os.environ:  # to measure what recording receipts costs
            env["SSE_NOTIFY_RECEIPTS"] = os.environ["SSE_NOTIFY_RECEIPTS"]
        env.update(SSE_NOTIFY_SECRET=self.secret, PYTHONUNBUFFERED="1")
        cmd = _pin_prefix(self.core) + self.command()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n" + "".join(self.output[-30:]))
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if len(self.output) < 2000:
                self.output.append(line)
            if not self._ready.is_set():
                match = self.ready_re.search(line)
                if match:
                    self.port = int(match.group(1))
                    self._ready.set()
        self._ready.set()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.pid)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def version(self) -> str:
        return "?"


class SSENotifyServer(Server):
    name = "sse-notify"
    ready_re = re.compile(r"Running on https?://[^\s]*:(\d+)")

    def __init__(self, data_dir: Path, secret: str, core: int | None, extra_args: list[str] | None = None):
        super().__init__(data_dir, secret, core)
        self.extra_args = extra_args or []

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("sse-notify")
        base = [str(script)] if script.exists() else [sys.executable, "-m", "sse_notify"]
        return [*base, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(self.data_dir),
                "--no-access-log", *self.extra_args]

    def version(self) -> str:
        from importlib.metadata import version

        return version("sse-notify")


class PeerServer(Server):
    name = "peer"
    ready_re = re.compile(r"listening on 127\.0\.0\.1:(\d+)")

    def command(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed")
        return [node, str(PEER_DIR / "server.js"), "--port", "0", "--data-dir", str(self.data_dir)]

    def version(self) -> str:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
        ws = "?"
        pkg = PEER_DIR / "node_modules" / "ws" / "package.json"
        if pkg.exists():
            import json

            ws = json.loads(pkg.read_text())["version"]
        return f"node {node}, ws {ws}"


def ensure_peer_installed() -> None:
    """``npm ci`` in bench/peer when its node_modules is missing (registry: npm)."""
    if (PEER_DIR / "node_modules" / "ws").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed: cannot install the peer's packages")
    lock = PEER_DIR / "package-lock.json"
    cmd = [npm, "ci" if lock.exists() else "install", "--no-audit", "--no-fund", "--loglevel=error"]
    subprocess.run(cmd, cwd=PEER_DIR, check=True, timeout=300)


def wait_port_closed(port: int, timeout: float = 5.0) -> None:  # pragma: no cover - helper
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.05)
