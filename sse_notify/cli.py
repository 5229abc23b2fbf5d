"""The command line: ``sse-notify serve``, ``token``, ``rotate-secret``, ``webhook-secret``
and ``tail``.

``main(argv) -> int`` so tests call it directly. Flags default to "unset" and
:meth:`Settings.from_env` applies them over ``SSE_NOTIFY_*`` variables and the defaults,
so the precedence lives in one place; a flag's help names its variable and default,
derived from the :class:`Settings` field of the same name (``_setting``).

``token``, ``rotate-secret``, ``webhook-secret`` and ``tail`` never create a secret (only
``serve`` does): one invented beside the server's would sign tokens that the server
rejects. ``serve`` hands over to :mod:`.server` (one process) or :mod:`.workers`
(``--workers N``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import click

from .config import (ENV_PREFIX, SECRET_FILE, Keyring, MissingSecret, Settings, load_webhook_secret, parse_duration,
                     rotate_secret)
from .server import StartupError, configure_logging, run
from .store import StoreConfigError, cluster_keyring, cluster_webhook_secret, rotate_cluster_secret
from .tokens import DEFAULT_SUBSCRIBER_TTL, TokenSigner
from .workers import supervise

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])

#: Path only, never the query string (it may carry a token); no Authorization header.


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


_DEFAULTS = {f.name: f.default for f in fields(Settings)}


def _setting(flag: str, text: str, *, shown: str | None = None, **kwargs: Any) -> Callable[[F], F]:
    """An option for the :class:`Settings` field named like ``flag``; its help ends with
    the default (the field's own, or ``shown`` when words say it better) and the
    ``SSE_NOTIFY_*`` variable that sets it. The option itself defaults to None, "not
    given", so that :meth:`Settings.from_env` alone decides what wins."""
    name = flag.split("/")[0].lstrip("-").replace("-", "_")
    default = shown if shown is not None else _DEFAULTS[name]
    return click.option(flag, help=f"{text}  [default: {default}; env: {ENV_PREFIX}{name.upper()}]", **kwargs)


_DATA_DIR_DEFAULT = "./sse-notify-data"
#: How ``token`` and ``rotate-secret`` are pointed at the server's secret.
_SECRET_HINT = ("point to the server's data directory with --data-dir DIR or SSE_NOTIFY_DATA_DIR, "
                "to its PostgreSQL store with --store URL, "
                "or give the secret in SSE_NOTIFY_SECRET")


def _data_dir_option(text: str) -> Callable[[F], F]:
    return _setting("--data-dir", text, shown=_DATA_DIR_DEFAULT, type=click.Path(path_type=Path))


def _settings(**flags: Any) -> Settings:
    try:
        return Settings.from_env(**flags)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _existing_keyring(settings: Settings) -> Keyring:
    """The secrets ``token`` and ``rotate-secret`` sign with: never created here, since a
    secret invented beside the server's would sign tokens that the server rejects."""
    try:
        return settings.keyring(create=False)
    except MissingSecret as exc:
        raise click.ClickException(f"{exc} (only `sse-notify serve` creates one): {_SECRET_HINT}") from None
    except ValueError as exc:  # a damaged secret.previous
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Each command's --help lists its options, their defaults and SSE_NOTIFY_* variables.")
@click.version_option(package_name="sse-notify")
def cli() -> None:
    """sse-notify: real-time notifications over Server-Sent Events and WebSocket."""


@cli.command(short_help="Run the service: the HTTP API, SSE, WebSocket and the demo page.",  # whole, not cut
             epilog="The signing secret is <data-dir>/secret.key, created on the first start; "
                    "SSE_NOTIFY_SECRET replaces it (and SSE_NOTIFY_PREVIOUS_SECRET keeps a rotated-out "
                    "one valid). A flag wins over its variable.")
@_setting("--host", "Address to bind.")
@_setting("--port", "Port to bind; 0: any free port.", type=int)
@_data_dir_option("Where the database and the secret live.")
@_setting("--heartbeat", "Seconds of quiet before a keepalive.", type=float, shown="15")
@_setting("--retry", "SSE retry: value in ms.", type=int)
@_setting("--stream-buffer", "Events a stream may fall behind.", type=int)
@_setting("--max-body", "Largest request body in bytes.", type=int)
@_setting("--max-frame", "Largest WebSocket message from a client, bytes.", type=int)
@_setting("--max-header", "Largest request line plus headers, bytes.", type=int)
@_setting("--max-user-streams", "Open streams per user; 0: no limit.", type=int)
@_setting("--max-streams", "Open streams in all; 0: no limit.", type=int)
@_setting("--publish-rate", "Publishes per second per publisher; 0: no limit.", type=float, shown="0")
@_setting("--publish-burst", "Publishes a publisher may send at once.", type=int, shown="the rate")
@_setting("--retention", "Keep notifications this long (90s, 12h, 30d).", callback=_duration, shown="30d",
          metavar="DURATION")
@_setting("--allow-origin", "Origin allowed to call cross-origin; repeatable (the variable: comma-separated).",
          multiple=True, shown="none")
@_setting("--store", "Store URL.", shown="notifications.db, SQLite, in the data directory")
@_setting("--broker", "Broker URL: memory://, postgresql://..., redis://HOST:PORT/N[?channel=NAME].",
          shown="the store's database with a PostgreSQL store, else memory://")
@_setting("--certfile", "TLS certificate (PEM): serve HTTPS with HTTP/2.", shown="none, plain HTTP",
          type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_setting("--keyfile", "TLS private key (PEM), with --certfile.", shown="none",
          type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_setting("--webhook-url", "Where escalation webhooks go (http:// or https://); without it, escalate is refused.",
          shown="none", metavar="URL")
@_setting("--webhook-timeout", "Seconds a webhook receiver has to answer.", type=float, shown="10")
@_setting("--escalation-poll", "Seconds between looks for escalations that came due.", type=float, shown="1")
@_setting("--access-log/--no-access-log", "Log each request (no query strings).", default=None, shown="on")
@_setting("--workers", "Server processes on this port, each one a node (needs a PostgreSQL store).", type=int)
def serve(**flags: object) -> None:
    """Run the service: the HTTP API, SSE, WebSocket and the demo page."""
    settings = _settings(**{**flags, "allow_origin": flags["allow_origin"] or None})
    configure_logging()
    if settings.workers > 1:
        click.get_current_context().exit(supervise(settings))
    try:
        run(settings)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


_TTL_HOURS = f"{DEFAULT_SUBSCRIBER_TTL / 3600:g} h"


@cli.command(short_help="Print a subscriber token for USER, or a publisher token for NAME.",
             help=f"""Print a subscriber token for USER, or with --publisher a publisher token for
             NAME, and a newline.

             A subscriber token lasts {_TTL_HOURS}, a publisher token never expires; --ttl SECONDS
             gives either another lifetime.

             It is signed with the secret in the server's data directory, or with
             SSE_NOTIFY_SECRET. Only `sse-notify serve` creates that secret: without it this
             command fails and creates nothing.""")
@click.argument("user", required=False)
@click.option("--publisher", metavar="NAME", help="Mint a publisher token for NAME instead.")
@click.option("--ttl", type=int, metavar="SECONDS",
              help=f"Lifetime in seconds.  [default: subscriber {DEFAULT_SUBSCRIBER_TTL} ({_TTL_HOURS}); "
                   "publisher: no expiry]")
@_data_dir_option("The server's data directory, which holds the secret.")
@_setting("--store", "Store URL; a PostgreSQL store holds the cluster's secret.", shown="none, the data directory's secret")
def token(user: str | None, publisher: str | None, ttl: int | None, data_dir: Path | None,
          store: str | None) -> None:
    if (user is None) == (publisher is None):
        raise click.UsageError("give either USER or --publisher NAME")
    if ttl is not None and ttl <= 0:
        raise click.BadParameter("must be positive", param_hint="--ttl")
    signer = _signer(data_dir, store)
    try:
        if publisher is not None:
            click.echo(signer.publisher(publisher, ttl=ttl))
        else:
            click.echo(signer.subscriber(user, ttl=ttl or DEFAULT_SUBSCRIBER_TTL))  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cli.command("rotate-secret", short_help="Sign with a fresh secret; the current one stays valid for a grace period.")
@_data_dir_option("The server's data directory, which holds the secret.")
@_setting("--store", "Store URL; a PostgreSQL store holds the cluster's secret.", shown="none, the data directory's secret")
@click.option("--grace", callback=_duration, default="24h", show_default=True, metavar="DURATION",
              help="How long tokens signed with the current secret stay valid (90s, 12h, 30d).")
def rotate_secret_command(data_dir: Path | None, store: str | None, grace: int) -> None:
    """Sign new tokens with a fresh secret; accept the current one for a grace period.

    A running server picks the new secret up when it restarts. Only `sse-notify serve`
    creates the first secret: without one this command fails and creates nothing.
    """
    settings = _settings(data_dir=data_dir, store=store)
    if settings.secret:
        raise click.UsageError("the secret comes from SSE_NOTIFY_SECRET: set the new one there "
                               "and the old one in SSE_NOTIFY_PREVIOUS_SECRET")
    keyring = _cluster(rotate_cluster_secret, settings, grace)
    if keyring is not None:
        where = "the store's database"
    else:
        _existing_keyring(settings)
        keyring = rotate_secret(settings.data_dir, grace)
        where = str((settings.data_dir / SECRET_FILE).resolve())
    until = datetime.fromtimestamp(keyring.previous_until or 0, timezone.utc).isoformat(timespec="seconds")
    click.echo(f"New secret in {where}; tokens signed with the previous "
               f"one are accepted until {until}. Restart the service to use it.", err=True)


def _signer(data_dir: Path | None, store: str | None) -> TokenSigner:
    """A signer with the server's secret: a PostgreSQL store's, else the data directory's
    (never created here)."""
    settings = _settings(data_dir=data_dir, store=store)
    return TokenSigner.from_keyring(_cluster(cluster_keyring, settings) or _existing_keyring(settings))


@cli.command("webhook-secret", short_help="Print the secret escalation webhooks are signed with.")
@_data_dir_option("The server's data directory, which holds the webhook secret.")
@_setting("--store", "Store URL; a PostgreSQL store holds the cluster's webhook secret.",
          shown="none, the data directory's secret")
def webhook_secret_command(data_dir: Path | None, store: str | None) -> None:
    """Print the webhook secret (whsec_ and base64, the Standard Webhooks form) and a newline.

    Receivers verify each webhook's signature with it (the standardwebhooks package). Only
    `sse-notify serve` creates it, on its first start: without it this command fails and
    creates nothing.
    """
    settings = _settings(data_dir=data_dir, store=store)
    secret = _cluster(cluster_webhook_secret, settings)
    if secret is None:
        try:
            secret = load_webhook_secret(settings.data_dir, create=False)
        except MissingSecret as exc:
            raise click.ClickException(f"no webhook secret at {exc.path} (only `sse-notify serve` creates one): "
                                       "point to the server's data directory with --data-dir DIR or "
                                       "SSE_NOTIFY_DATA_DIR, or to its PostgreSQL store with --store URL") from None
    click.echo(secret)


def _cluster(function: Callable[..., Any], *args: object) -> Any:
    """``function`` (the secret a PostgreSQL store keeps), its failure as one line."""
    try:
        return function(*args)
    except StoreConfigError as exc:
        raise click.ClickException(str(exc)) from None


DEFAULT_TAIL_URL = "http://127.0.0.1:8000"


@cli.command(short_help="Follow USER's stream in the terminal: hello, notifications, read events.",
             help="""Follow USER's stream in the terminal, for debugging: the hello (replay mode,
             newest id, unread), each notification, read events and token-expiring, until Ctrl-C.
             A dropped connection is retried by itself, resuming after the last id it saw.

             The subscriber token is minted as `sse-notify token USER` does, with the secret in
             the server's data directory or SSE_NOTIFY_SECRET (never created here); or give one
             with --token instead of USER.""")
@click.argument("user", required=False)
@click.option("--token", "given_token", metavar="TOKEN", help="Follow with this subscriber token instead.")
@click.option("--url", default=DEFAULT_TAIL_URL, show_default=True, help="The server's address.")
@click.option("--since", type=click.IntRange(min=0), metavar="ID",
              help="Start by replaying every notification after this id (0: all history).  [default: live]")
@click.option("--topics", metavar="A,B", help="Only notifications with one of these topics.")
@_data_dir_option("The server's data directory, which holds the secret.")
@_setting("--store", "Store URL; a PostgreSQL store holds the cluster's secret.", shown="none, the data directory's secret")
def tail(user: str | None, given_token: str | None, url: str, since: int | None, topics: str | None,
         data_dir: Path | None, store: str | None) -> None:
    from .tail import Refused, Tail

    if (user is None) == (given_token is None):
        raise click.UsageError("give either USER or --token TOKEN")
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("must start with http:// or https://", param_hint="--url")
    if given_token is not None:
        token_source = lambda: given_token  # noqa: E731
    else:
        signer = _signer(data_dir, store)
        try:
            signer.subscriber(user)  # type: ignore[arg-type]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="USER") from None
        token_source = lambda: signer.subscriber(user)  # type: ignore[arg-type]  # noqa: E731
    follower = Tail(url.rstrip("/"), token_source, cursor=since, topics=topics, refreshable=given_token is None)
    try:
        follower.run()
    except KeyboardInterrupt:  # the way to stop it: not a failure
        pass
    except Refused as exc:
        raise click.ClickException(str(exc)) from None


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
