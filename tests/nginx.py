"""Debian's nginx in front of several nodes, configured by ``docs/nginx.conf`` itself (the
file the README shows) with its ``upstream`` servers and ``listen`` port replaced.

nginx runs in the foreground as a child process with every path under a temporary
directory, so a test leaves nothing behind; it is ready when its port accepts connections.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Nginx", "nginx_binary"]

CONF = Path(__file__).resolve().parent.parent / "docs" / "nginx.conf"
START_TIMEOUT = 10.0


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_config(ports: Sequence[int], listen: int) -> str:
    """``docs/nginx.conf`` with the nodes at ``ports`` and nginx listening on ``listen``."""
    text = CONF.read_text()
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in ports)
    text, count = re.subn(r"(upstream sse_notify \{\n)(?:    server [^\n]*\n)+", rf"\g<1>{servers}", text)
    assert count == 1, "docs/nginx.conf no longer has the upstream block this test rewrites"
    text, count = re.subn(r"listen \d+;", f"listen 127.0.0.1:{listen};", text)
    assert count == 1, "docs/nginx.conf no longer has one listen line"
    return text


class Nginx:
    def __init__(self, workdir: Path, ports: Sequence[int]):
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (bash .ci/run installs it)")
        self.binary = binary
        self.dir = workdir
        self.port = _free_port()
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "site.conf").write_text(site_config(ports, self.port))
        temp = "".join(f"{kind}_temp_path {self.dir / kind};\n    "
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.dir / "nginx.conf").write_text(f"""
daemon off;
master_process off;
user root;
pid {self.dir / 'nginx.pid'};
error_log {self.dir / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {temp}
    include {self.dir / 'site.conf'};
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        self.proc = subprocess.Popen([self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: " + self.proc.stderr.read().decode() if self.proc.stderr else "")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)  # polling a port nginx opens: it signals readiness no other way
        self.stop()
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
