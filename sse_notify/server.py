"""Running the service under Hypercorn: its configuration, the listening socket (one of
``--workers``' own when this process is a worker), signals and a clean shutdown.

Before serving, :func:`~sse_notify._hypercorn.lean.install` gives Hypercorn's asyncio
worker smaller per-connection objects (for the tested versions only).
``serve`` installs its own SIGINT/SIGTERM handlers: a signal first ends every open stream,
then Hypercorn closes the (now idle) connections and the app's shutdown hooks close
storage. Configuration that cannot work (a store or broker that cannot be reached, an
unknown URL scheme) raises :class:`StartupError` with a one-line reason before anything
listens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from .config import Settings, redact_url
from .store import StoreConfigError, check_store
from .workers import WORKER_ENV, listening_socket

__all__ = ["StartupError", "configure_logging", "raise_open_files_limit", "run", "start_line"]

#: Path only, never the query string (it may carry a token); no Authorization header.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(L)ss'
GRACEFUL_TIMEOUT = 3.0


class StartupError(Exception):
    """The service cannot start as configured; the message says why, in one line."""


def run(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM (on uvloop when it is installed)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(settings))
    else:
        uvloop.run(_serve(settings))


def raise_open_files_limit(want: int = 1 << 20) -> int:
    """Raise this process's soft open-files limit towards ``want``, as far as the hard
    limit allows (each stream is a socket); returns the soft limit now in force. The load
    clients of the benchmark and the fault suite use it too."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


#: Asked of listen(2); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 65535


async def _serve(settings: Settings) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from ._hypercorn import lean
    from .app import create_app

    try:
        await check_store(settings.store_url)
    except StoreConfigError as exc:
        raise StartupError(str(exc)) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    try:
        app = create_app(settings)
    except ValueError as exc:  # an unknown store or broker URL scheme
        raise StartupError(str(exc)) from None
    await _check_broker(app)
    config = Config()
    if WORKER_ENV in os.environ:  # one of --workers: its own socket on the shared port
        config.bind = [f"fd://{listening_socket(settings.host, settings.port).detach()}"]
    else:
        config.bind = [f"[{settings.host}]:{settings.port}" if ":" in settings.host else f"{settings.host}:{settings.port}"]
    config.accesslog = logging.getLogger("sse_notify.access") if settings.access_log else None
    config.access_log_format = ACCESS_LOG_FORMAT
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.websocket_max_message_size = settings.max_frame
    config.h11_max_incomplete_size = settings.max_header
    config.h2_max_header_list_size = settings.max_header
    config.websocket_ping_interval = settings.heartbeat
    # Hypercorn releases an idle connection the client has closed only when this timer
    # fires, not at EOF: its descriptor is held until then, so keep it short.
    config.keep_alive_timeout = 5
    # Hypercorn's default listen backlog is 100: in a reconnect storm (thousands of clients
    # at once after a restart) the kernel then drops SYNs and clients time out. The kernel
    # caps this at net.core.somaxconn (4096 on current Linux).
    config.backlog = LISTEN_BACKLOG
    if settings.certfile is not None:
        config.certfile = str(settings.certfile)
        config.keyfile = str(settings.keyfile)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def shutdown_trigger() -> None:
        await stop.wait()
        logging.getLogger("sse_notify").info("shutting down")
        app.begin_shutdown()  # type: ignore[attr-defined]
        _stop_websocket_pings()

    logging.getLogger("sse_notify").info("%s", start_line(settings))
    lean.install()  # smaller per-connection objects (tested Hypercorn versions only)
    # The app's ASGI callable itself (Quart's __call__ only awaits it): one frame less
    # per open stream. mode="asgi": its router is a plain function returning the handler's
    # coroutine (another frame less), which Hypercorn would not recognise as ASGI.
    await hypercorn_serve(app.asgi_app, config, shutdown_trigger=shutdown_trigger, mode="asgi")


def start_line(settings: Settings) -> str:
    """What ``serve`` logs as it starts: where it listens and, absolute, where its data
    lives (the store URL, if one is set, without its password), so a 401 from a token
    signed elsewhere can be traced to a different directory."""
    where = f"data: {settings.data_dir.resolve()}"
    if settings.store:
        where += f", store: {redact_url(settings.store)}"
    scheme = "https" if settings.certfile else "http"
    return f"sse-notify on {scheme}://{settings.host}:{settings.port} ({where})"


async def _check_broker(app: object) -> None:
    """Refuse to start, in one line, when the broker cannot be reached (a failure inside
    the app's startup would end in tracebacks)."""
    from .broker import BrokerUnavailable, open_broker

    service = app.extensions["sse_notify"]  # type: ignore[attr-defined]
    probe = open_broker(service.settings.broker_url)
    try:
        await probe.open()
    except BrokerUnavailable as exc:
        raise StartupError(str(exc)) from None
    finally:
        await probe.close()


def _stop_websocket_pings() -> None:
    """Hypercorn's WebSocket ping loop sleeps a whole ``--heartbeat`` before it notices that
    its socket closed, and the connection's task lives until it does; at shutdown Hypercorn
    would wait out its graceful timeout for sockets already gone. Cancelling the loops (a
    cancelled child does not fail Hypercorn's task group) lets those connections end now."""
    for task in asyncio.all_tasks():
        if getattr(task.get_coro(), "__qualname__", "") == "WSStream._send_pings":
            task.cancel()
