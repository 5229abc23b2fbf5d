"""The command line: ``sse-notify serve`` and ``sse-notify token``.

``main(argv) -> int`` so tests call it directly. Flags default to "unset" and
:meth:`Settings.from_env` applies them over ``SSE_NOTIFY_*`` variables and the defaults,
so the precedence lives in one place. ``serve`` installs its own SIGINT/SIGTERM handlers:
a signal first ends every open stream, then Hypercorn closes the (now idle) connections
and the app's shutdown hooks close storage.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import datetime, timezone
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from .config import SECRET_FILE, Keyring, Settings, parse_duration, rotate_secret
from .store import StoreConfigError, check_store, cluster_keyring, rotate_cluster_secret
from .tokens import DEFAULT_SUBSCRIBER_TTL, TokenSigner

__all__ = ["main", "raise_open_files_limit"]

#: Path only, never the query string (it may carry a token); no Authorization header.
ACCESS_LOG_FORMAT = '%(h)s %(t)s "%(r)s" %(s)s %(b)s %(L)ss'
GRACEFUL_TIMEOUT = 3.0


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sse-notify")
def cli() -> None:
    """sse-notify: real-time notifications over Server-Sent Events and WebSocket."""


@cli.command()
@click.option("--host", help="Address to bind. [default: 127.0.0.1; env SSE_NOTIFY_HOST]")
@click.option("--port", type=int, help="Port to bind. [default: 8000; env SSE_NOTIFY_PORT]")
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="Where the database and secret live. [default: ./sse-notify-data]")
@click.option("--heartbeat", type=float, help="Seconds of quiet before a keepalive. [default: 15]")
@click.option("--retry", type=int, help="SSE retry: value in ms. [default: 3000]")
@click.option("--stream-buffer", type=int, help="Events a stream may fall behind. [default: 1024]")
@click.option("--max-body", type=int, help="Largest request body in bytes. [default: 65536]")
@click.option("--max-frame", type=int, help="Largest WebSocket message from a client, bytes. [default: 65536]")
@click.option("--max-header", type=int, help="Largest request line plus headers, bytes. [default: 16384]")
@click.option("--max-user-streams", type=int, help="Open streams per user; 0: no limit. [default: 100]")
@click.option("--max-streams", type=int, help="Open streams in all; 0: no limit. [default: 50000]")
@click.option("--publish-rate", type=float, help="Publishes per second per publisher; 0: no limit. [default: 0]")
@click.option("--publish-burst", type=int, help="Publishes a publisher may send at once. [default: the rate]")
@click.option("--retention", callback=_duration, help="Keep notifications this long (90s, 12h, 30d). [default: 30d]")
@click.option("--allow-origin", multiple=True, help="Origin allowed to call cross-origin (repeatable).")
@click.option("--store", help="Store URL. [default: sqlite:///<data-dir>/notifications.db]")
@click.option("--broker", help="Broker URL. [default: memory://]")
@click.option("--certfile", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TLS certificate (PEM): serve HTTPS with HTTP/2.")
@click.option("--keyfile", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="TLS private key (PEM), with --certfile.")
@click.option("--access-log/--no-access-log", default=None, help="Log each request (no query strings). [default: on]")
def serve(**flags: object) -> None:
    """Run the service."""
    try:
        settings = Settings.from_env(**{**flags, "allow_origin": flags["allow_origin"] or None})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _configure_logging()
    raise_open_files_limit()
    _run(_serve(settings))


@cli.command()
@click.argument("user", required=False)
@click.option("--publisher", metavar="NAME", help="Mint a publisher token for NAME instead.")
@click.option("--ttl", type=int, help=f"Lifetime in seconds. [subscriber default: {DEFAULT_SUBSCRIBER_TTL}]")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory holding the secret.")
@click.option("--store", help="Store URL; a PostgreSQL store holds the cluster's secret.")
def token(user: str | None, publisher: str | None, ttl: int | None, data_dir: Path | None,
          store: str | None) -> None:
    """Print a subscriber token for USER (or a publisher token) and a newline."""
    if (user is None) == (publisher is None):
        raise click.UsageError("give either USER or --publisher NAME")
    if ttl is not None and ttl <= 0:
        raise click.BadParameter("must be positive", param_hint="--ttl")
    settings = Settings.from_env(data_dir=data_dir, store=store)
    signer = TokenSigner.from_keyring(_cluster(cluster_keyring, settings) or settings.keyring())
    try:
        if publisher is not None:
            click.echo(signer.publisher(publisher, ttl=ttl))
        else:
            click.echo(signer.subscriber(user, ttl=ttl or DEFAULT_SUBSCRIBER_TTL))  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("rotate-secret")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory holding the secret.")
@click.option("--store", help="Store URL; a PostgreSQL store holds the cluster's secret.")
@click.option("--grace", callback=_duration, default="24h", show_default=True,
              help="How long tokens signed with the current secret stay valid (90s, 12h, 30d).")
def rotate_secret_command(data_dir: Path | None, store: str | None, grace: int) -> None:
    """Sign new tokens with a fresh secret; accept the current one for a grace period.

    A running server picks the new secret up when it restarts.
    """
    settings = Settings.from_env(data_dir=data_dir, store=store)
    if settings.secret:
        raise click.UsageError("the secret comes from SSE_NOTIFY_SECRET: set the new one there "
                               "and the old one in SSE_NOTIFY_PREVIOUS_SECRET")
    keyring = _cluster(rotate_cluster_secret, settings, grace)
    where = "the store's database" if keyring is not None else settings.data_dir / SECRET_FILE
    keyring = keyring or rotate_secret(settings.data_dir, grace)
    until = datetime.fromtimestamp(keyring.previous_until or 0, timezone.utc).isoformat(timespec="seconds")
    click.echo(f"New secret in {where}; tokens signed with the previous "
               f"one are accepted until {until}. Restart the service to use it.", err=True)


def _cluster(function: Callable[..., Keyring | None], *args: object) -> Keyring | None:
    """``function`` (the secret a PostgreSQL store keeps), its failure as one line."""
    try:
        return function(*args)
    except StoreConfigError as exc:
        raise click.ClickException(str(exc)) from None


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


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


async def _serve(settings: Settings) -> None:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    from .app import create_app

    try:
        await check_store(settings.store_url)
    except StoreConfigError as exc:
        raise click.ClickException(str(exc)) from None
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    config = Config()
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

    logging.getLogger("sse_notify").info(
        "sse-notify on %s://%s:%d (data: %s)", "https" if settings.certfile else "http", settings.host, settings.port, settings.data_dir)
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)


def _stop_websocket_pings() -> None:
    """Hypercorn's WebSocket ping loop sleeps a whole ``--heartbeat`` before it notices that
    its socket closed, and the connection's task lives until it does; at shutdown Hypercorn
    would wait out its graceful timeout for sockets already gone. Cancelling the loops (a
    cancelled child does not fail Hypercorn's task group) lets those connections end now."""
    for task in asyncio.all_tasks():
        if getattr(task.get_coro(), "__qualname__", "") == "WSStream._send_pings":
            task.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="sse-notify",
                 standalone_mode=False)
    except click.exceptions.Abort:
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0
