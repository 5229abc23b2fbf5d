"""``sse-notify serve --workers N``: N server processes on one port, each one a node.

Deliberate decisions:

* **A listening socket per worker, bound with ``SO_REUSEPORT``.** The kernel then spreads
  new connections evenly over the workers. One socket shared by all of them would leave each
  connection to whichever worker wakes first, and a busy one keeps winning.
* **A worker is a plain ``sse-notify serve`` child**, configured entirely through
  ``SSE_NOTIFY_*`` variables written from the resolved :class:`~sse_notify.config.Settings`
  (which read them back the same way), plus :data:`WORKER_ENV` naming its index. Workers
  share nothing in memory: they are nodes of one deployment, so they need a store and a
  broker that processes share (a PostgreSQL store; a PostgreSQL or Redis broker).
  :class:`~sse_notify.config.Settings` refuses the SQLite store (one writer per process)
  and the ``memory://`` broker (one process) with ``--workers`` above 1.
* **The supervisor** forwards SIGINT/SIGTERM, restarts a worker that dies (a crash drops
  only that worker's streams; their clients reconnect to the others and resume from their
  cursors), and exits when all have stopped. A worker that exits by itself within
  :data:`STARTUP_GRACE` seconds of starting (bad configuration, say: it has printed why)
  stops the whole group with its exit status instead of being restarted in a loop; one
  killed by a signal is restarted whenever it happens.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from .config import ENV_PREFIX, Settings

__all__ = ["WORKER_ENV", "listening_socket", "supervise"]

log = logging.getLogger(__name__)

#: Set in a worker's environment to its index; such a process binds with ``SO_REUSEPORT``.
WORKER_ENV = ENV_PREFIX + "WORKER_INDEX"
STARTUP_GRACE = 10.0
STOP_TIMEOUT = 10.0
RESTART_DELAY = 1.0


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``, for Hypercorn's ``fd://``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _environment(settings: Settings, port: int, index: int) -> dict[str, str]:
    """The environment that makes ``sse-notify serve`` rebuild ``settings`` as worker ``index``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if f.name.startswith("_") or value is None:
            continue
        if isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, tuple):
            text = ",".join(value)
        elif isinstance(value, Path):
            text = str(value.resolve())
        else:
            text = str(value)
        env[ENV_PREFIX + f.name.upper()] = text
    env[ENV_PREFIX + "PORT"] = str(port)
    env[ENV_PREFIX + "WORKERS"] = "1"
    env[WORKER_ENV] = str(index)
    return env


class _Worker:
    def __init__(self, index: int, env: dict[str, str]):
        self.index = index
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "sse_notify", "serve"], env=self.env)
        self.started = time.monotonic()


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers until a signal; returns the exit status.
    (:class:`Settings` has refused a store or broker that processes cannot share.)"""
    # Held for the supervisor's life: it pins the port (also a port 0 picked here) so a
    # restarted worker can always bind it again. It never listens, so it takes no connections.
    reserve = listening_socket(settings.host, settings.port)
    port = reserve.getsockname()[1]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workers = [_Worker(i, _environment(settings, port, i)) for i in range(settings.workers)]
    for worker in workers:
        worker.start()
    log.info("supervising %d workers on port %d", len(workers), port)
    status = 0
    try:
        while not stop.wait(0.2):
            for worker in workers:
                assert worker.proc is not None
                code = worker.proc.poll()
                if code is None:
                    continue
                if code >= 0 and time.monotonic() - worker.started < STARTUP_GRACE:
                    log.error("worker %d exited with status %d while starting; stopping", worker.index, code)
                    status = code or 1
                    stop.set()
                    break
                log.error("worker %d exited with status %d; restarting it", worker.index, code)
                time.sleep(RESTART_DELAY)
                worker.start()
    finally:
        status = _stop_all(workers) or status
        reserve.close()
    return status


def _stop_all(workers: list[_Worker]) -> int:
    """SIGTERM every running worker, wait for them (killing stragglers); 0 if all exited 0."""
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    status = 0
    for proc in running:
        try:
            code = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        status = status or code
    return status
