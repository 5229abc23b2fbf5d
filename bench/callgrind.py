"""Instructions per broadcast delivery, counted by callgrind: steadier than CPU time on a
shared machine (``bench/PROFILE.md``).

    .venv/bin/python -m bench.callgrind [--transport sse|ws] [--streams 200] [--broadcasts 20]
    .venv/bin/python -m bench.callgrind --workload open [--streams 200]
    .venv/bin/python -m bench.callgrind --workload replay [--missed 1000] [--reconnects 5]
    .venv/bin/python -m bench.callgrind --workload publish|bulk [--streams 200] [--posts N]

Starts ``sse-notify serve`` under ``valgrind --tool=callgrind --instr-atstart=no``, opens
the streams (each waits for its ``hello``), switches collection on, publishes the
broadcasts one after another (each waits until every stream has it), switches it off and
prints the instructions per delivery (publishing included, spread over the deliveries)
and the callgrind output file for ``callgrind_annotate``. With ``--workload open`` it
counts the opening of the streams instead (16 at a time, each up to its ``hello``). With
``--workload replay`` it counts S4's reconnect: one user's stream closes, ``--missed``
notifications are published to that user (not counted), and the reconnect with the
cursor is counted from its connect to the last replayed event received, ``--reconnects``
times; the figure is per replayed event, the reconnect's opening included. With
``--workload publish`` (S3's shape) or ``bulk`` (S6's: arrays of 100) it counts durable
targeted publishes: one stream per user, ``--posts`` POSTs one after another (each waits
for its 201, so each is its own commit), every notification to the next user in turn, and
prints the instructions per notification, its delivery to its one stream included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.client import Publisher, Sink, open_streams  # noqa: E402
from bench.servers import SSENotifyServer  # noqa: E402
from sse_notify.tokens import TokenSigner  # noqa: E402


class CallgrindServer(SSENotifyServer):
    def __init__(self, data_dir: Path, secret: str, out: Path):
        super().__init__(data_dir, secret, None)
        self.out = out

    def command(self) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={self.out}", *super().command()]


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _instructions(out: Path) -> int:
    for line in out.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


async def measure(transport: str, streams: int, broadcasts: int, out: Path,
                  workload: str = "broadcast", missed: int = 1000, reconnects: int = 5) -> dict[str, float]:
    secret = secrets.token_urlsafe(32)
    signer = TokenSigner(secret)
    with tempfile.TemporaryDirectory(prefix="sse-notify-callgrind-") as data:
        server = CallgrindServer(Path(data), secret, out).start(timeout=300)
        try:
            if workload == "replay":
                await _replay(server, signer, transport, Sink(), missed, reconnects)
            else:
                await _streams(server, signer, transport, streams, broadcasts, workload)
        finally:
            server.stop(timeout=60)
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    total = sum(_instructions(p) for p in dumps if re.search(r"\.\d+$", p.name)) or _instructions(dumps[-1])
    count = {"broadcast": streams * broadcasts, "open": streams,
             "replay": missed * reconnects, "publish": broadcasts, "bulk": broadcasts * BULK}[workload]
    return {"instructions": total, "count": count, "per_op": total / count}


async def _streams(server: CallgrindServer, signer: TokenSigner, transport: str, streams: int,
                   broadcasts: int, workload: str) -> None:
    """Open ``streams`` streams (counted with ``workload="open"``), then publish the
    broadcasts (counted with ``workload="broadcast"``)."""
    users = [f"cg{i}" for i in range(streams)]
    sink = Sink()
    tokens = [signer.subscriber(u, ttl=3600) for u in users]
    warm = await open_streams(transport, server.port, ["warm"], tokens[:1], sink, until="hello")
    if workload == "open":
        _control(server.pid, "-z")
        _control(server.pid, "-i", "on")
    opened = await open_streams(transport, server.port, users, tokens, sink,
                                concurrency=16, timeout=600, until="hello")
    if workload == "open":
        _control(server.pid, "-i", "off")
        _control(server.pid, "-d")
    opened += warm
    pub = await Publisher(server.port, signer.publisher("cg"), connections=1).open()
    if workload in ("publish", "bulk"):
        per_post = 1 if workload == "publish" else BULK
        await _publish(server.pid, pub, sink, users, per_post, broadcasts)
    body = b'{"broadcast":true,"title":"bench","data":{"ts":%.6f}}'
    if workload == "broadcast":
        n = streams + 1
        await pub.post(body % time.time())  # warm: first-use costs are not counted
        await _wait(sink, n, 120)
        _control(server.pid, "-z")
        _control(server.pid, "-i", "on")
        for i in range(broadcasts):
            status, _ = await pub.post(body % time.time())
            assert status == 201, status
            await _wait(sink, n * (i + 2), 120)
        _control(server.pid, "-i", "off")
        _control(server.pid, "-d")
    await pub.close()
    for s in opened:
        s.close()


async def _replay(server: CallgrindServer, signer: TokenSigner, transport: str, sink: Sink,
                  missed: int, reconnects: int) -> None:
    """S4 under the counter: ``reconnects`` times, ``missed`` notifications published while
    the user has no stream, then its reconnect with the cursor counted up to the last one."""
    user, token = "replayer", signer.subscriber("replayer", ttl=3600)
    pub = await Publisher(server.port, signer.publisher("cg"), connections=16).open()
    body = b'{"user":"%s","title":"missed","data":{"seq":1}}' % user.encode()
    try:
        for round_ in range(reconnects + 1):  # the first round warms up and is not counted
            [live] = await open_streams(transport, server.port, [user], [token], sink, until="hello")
            cursor = json.loads(live.hello)["newest_id"]
            live.close()
            answers = await asyncio.gather(*(pub.post(body) for _ in range(missed)))
            assert all(status == 201 for status, _ in answers), answers[:3]
            if round_ == 1:
                _control(server.pid, "-z")
            if round_ > 0:
                _control(server.pid, "-i", "on")
            [again] = await open_streams(transport, server.port, [user], [token], sink,
                                         cursor=cursor, until="hello")
            deadline = time.monotonic() + 120
            while again.count < missed:
                if time.monotonic() > deadline or again.closed:
                    raise TimeoutError(f"{again.count} of {missed} replayed")
                await asyncio.sleep(0.005)
            if round_ > 0:
                _control(server.pid, "-i", "off")
            assert again.count == missed and again.dups == 0, (again.count, again.dups)
            again.close()
        _control(server.pid, "-d")
    finally:
        await pub.close()


BULK = 100  # notifications per POST in --workload bulk, as in S6


async def _publish(pid: int, pub: Publisher, sink: Sink, users: list[str], per_post: int, posts: int) -> None:
    """``posts`` POSTs of ``per_post`` targeted notifications, the next user each, one
    POST at a time; collection covers them and their deliveries."""
    heads = [b'{"user":"%s","title":"bench","data":{"ts":' % u.encode() for u in users]
    turn = 0

    def body() -> bytes:
        nonlocal turn
        parts = []
        for _ in range(per_post):
            parts.append(heads[turn % len(heads)] + b"%.6f}}" % time.time())
            turn += 1
        return parts[0] if per_post == 1 else b"[" + b",".join(parts) + b"]"

    base = sink.delivered
    status, _ = await pub.post(body())  # warm: first-use costs are not counted
    assert status == 201, status
    await _wait(sink, base + per_post, 120)
    _control(pid, "-z")
    _control(pid, "-i", "on")
    for _ in range(posts):
        status, _ = await pub.post(body())
        assert status == 201, status
    await _wait(sink, base + per_post * (posts + 1), 300)
    _control(pid, "-i", "off")
    _control(pid, "-d")


async def _wait(sink: Sink, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while sink.delivered < want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{sink.delivered} of {want} deliveries")
        await asyncio.sleep(0.01)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__.split("\n\n")[0])
    p.add_argument("--transport", choices=("sse", "ws"), default="sse")
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--broadcasts", type=int, default=20)
    p.add_argument("--posts", type=int, default=None,
                   help="POSTs for --workload publish|bulk (default 400 and 20)")
    p.add_argument("--workload", choices=("broadcast", "open", "replay", "publish", "bulk"),
                   default="broadcast",
                   help="count the broadcasts' deliveries, the opening of the streams (up to hello), "
                        "reconnects replaying what their user missed, or targeted publishes one "
                        "(publish) or 100 (bulk) per POST, their delivery included")
    p.add_argument("--missed", type=int, default=1000, help="replay: notifications missed per reconnect")
    p.add_argument("--reconnects", type=int, default=5, help="replay: reconnects counted")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "sse-notify.callgrind")
    args = p.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (callgrind, callgrind_control)")
    for old in args.out.parent.glob(args.out.name + "*"):
        old.unlink()
    repeat = args.broadcasts
    if args.workload in ("publish", "bulk"):
        repeat = args.posts or (400 if args.workload == "publish" else 20)
    r = asyncio.run(measure(args.transport, args.streams, repeat, args.out, args.workload,
                            args.missed, args.reconnects))
    what, unit = {
        "broadcast": (f"{args.streams} streams x {repeat} broadcasts = {r['count']:,} deliveries",
                      "delivery"),
        "open": (f"{r['count']:,} streams opened (to hello)", "stream opened"),
        "replay": (f"{args.reconnects} reconnects x {args.missed:,} missed = {r['count']:,} replayed",
                   "replayed event"),
    }.get(args.workload, (f"{repeat} POSTs of {1 if args.workload == 'publish' else BULK} to "
                          f"{args.streams} users = {r['count']:,} notifications", "notification"))
    print(f"{args.transport}: {what}: {r['instructions']:,} instructions, {r['per_op'] / 1000:,.1f} k per "
          f"{unit} (callgrind output: {args.out}*)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
