"""The one place that reaches into Hypercorn's internals, and the version gate for it.

* :mod:`.direct`: body chunks and WebSocket frames written straight to an HTTP/1.1
  connection's transport (the hub's push), and ``permessage-deflate`` declined.
* :mod:`.lean`: smaller per-connection objects for the asyncio worker (a deque-free ASGI
  app queue and event, no ``wait_for`` per read) and the disconnect hook that lets an
  SSE stream do without a task waiting for ``http.disconnect``.
* :mod:`.conn` (installed by :mod:`.lean`): ``TCPServer``'s connection loop with a timer
  handle for the keep-alive timeout, writes without the send lock when nobody waits for
  it, reads without reader frames, and a ``Date`` header formatted once a second; an
  HTTP/1.1 request without a body run in the connection's own task (reading then goes on
  by callback), in a task group without ``asyncio.TaskGroup`` (:mod:`.tasks`).
* :mod:`.proto` (installed by :mod:`.lean`): ``H11Protocol``'s request headers walked
  once, and a response head written with its first body chunk (one ``send``).

Both act only for the Hypercorn and h11 releases in :data:`TESTED` (wsproto as Hypercorn
0.18 requires it); anywhere else they step aside and the service uses plain ASGI and
stock Hypercorn. ``tests/test_transports_direct.py``, ``tests/test_hypercorn_lean.py`` and
``tests/test_hypercorn_conn.py``, ``tests/test_hypercorn_tasks.py``,
``tests/test_hypercorn_proto.py`` fail loudly when an upgrade changes what they rely on.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["TESTED", "supported"]

#: (hypercorn, h11) release series these modules were tested with.
TESTED = {("0.18", "0.16")}

_supported: bool | None = None


def _series(package: str) -> str:
    try:
        return ".".join(version(package).split(".")[:2])
    except PackageNotFoundError:
        return "?"


def supported() -> bool:
    """Whether the installed Hypercorn and h11 are a tested pair (checked once)."""
    global _supported
    if _supported is None:
        _supported = (_series("hypercorn"), _series("h11")) in TESTED
    return _supported
