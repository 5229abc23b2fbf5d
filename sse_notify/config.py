"""Settings: one typed, frozen object built from defaults, then ``SSE_NOTIFY_*``
environment variables, then explicit overrides (command-line flags), in that order.

Also owns the server secrets (:class:`Keyring`): ``SSE_NOTIFY_SECRET`` when set, else
``<data-dir>/secret.key``, created with mode 0600 on first use so tokens survive restarts.
Only the server creates it: a caller that merely signs (``sse-notify token``) passes
``create=False`` and gets :class:`MissingSecret`, because a secret it invented would sign
tokens that the running server rejects.
The webhook secret (``whsec_`` + base64 of 32 random bytes, the Standard Webhooks form)
is kept the same way in ``<data-dir>/webhook.key`` (:func:`load_webhook_secret`), and
likewise only ever created by the server.
``sse-notify rotate-secret`` (:func:`rotate_secret`) moves the current secret to
``<data-dir>/secret.previous`` with the end of its grace period and writes a new one; with
``SSE_NOTIFY_SECRET``, ``SSE_NOTIFY_PREVIOUS_SECRET`` plays that part for as long as it is set.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit, urlunsplit
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Settings", "Keyring", "MissingSecret", "parse_duration", "load_secret", "rotate_secret",
           "redact_url", "ENV_PREFIX", "load_webhook_secret", "new_webhook_secret", "WEBHOOK_SECRET_FILE"]

ENV_PREFIX = "SSE_NOTIFY_"
SECRET_FILE = "secret.key"
PREVIOUS_SECRET_FILE = "secret.previous"
WEBHOOK_SECRET_FILE = "webhook.key"

_DURATION_RE = re.compile(r"(\d+)\s*([smhd]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> int:
    """``"90s"``, ``"12h"``, ``"30d"`` (or plain seconds) -> seconds."""
    if isinstance(text, (int, float)):
        seconds = int(text)
    else:
        match = _DURATION_RE.fullmatch(text.strip().lower())
        if match is None:
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 12h, 30d)")
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _boolean(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _split_origins(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    return tuple(origin.strip().rstrip("/") for origin in value if origin.strip())


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./sse-notify-data")
    #: Store URL; empty means the embedded SQLite file ``<data-dir>/notifications.db``.
    store: str = ""
    #: Broker URL; empty means the store's PostgreSQL (LISTEN/NOTIFY) with a PostgreSQL
    #: store, else ``memory://``, the in-process broker of a single node.
    broker: str = ""
    heartbeat: float = 15.0
    retry: int = 3000
    stream_buffer: int = 1024
    max_body: int = 65536
    #: Largest WebSocket message from a client, bytes.
    max_frame: int = 65536
    #: Largest request line plus headers, bytes.
    max_header: int = 16384
    #: Open streams one user may hold (0: no limit) and the server may hold in all.
    max_user_streams: int = 100
    max_streams: int = 50000
    #: Publishes per second per publisher name (0: no limit), and the burst allowed.
    publish_rate: float = 0.0
    publish_burst: int = 0
    retention: int = 30 * 86400
    allow_origin: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    #: Still accepted (never used to sign) beside ``secret``; only with ``secret``.
    previous_secret: str | None = field(default=None, repr=False)
    access_log: bool = True
    #: Server processes on one port (``--workers``); each one is a node.
    workers: int = 1
    #: Where escalation webhooks are POSTed (http or https); None: escalation is refused.
    webhook_url: str | None = None
    #: Seconds a webhook receiver has to answer before the attempt counts as failed.
    webhook_timeout: float = 10.0
    #: Seconds between looks for escalations that came due.
    escalation_poll: float = 1.0
    #: Record delivery receipts (``GET /notifications/<id>/status``); off only to measure
    #: what recording costs.
    receipts: bool = True
    #: TLS certificate and key (PEM); with both set the service speaks HTTPS and HTTP/2.
    certfile: Path | None = None
    keyfile: Path | None = None
    static_dir: Path = Path(__file__).resolve().parent.parent / "static"
    #: Seconds after its last heartbeat that a node's streams stop counting in
    #: ``GET /presence`` (a node beats every second). No flag: ``SSE_NOTIFY_PRESENCE_TTL``.
    presence_ttl: float = 15.0

    _CONVERTERS = {
        "port": int,
        "data_dir": Path,
        "heartbeat": float,
        "retry": int,
        "stream_buffer": int,
        "max_body": int,
        "max_frame": int,
        "max_header": int,
        "max_user_streams": int,
        "max_streams": int,
        "publish_rate": float,
        "publish_burst": int,
        "retention": parse_duration,
        "allow_origin": _split_origins,
        "access_log": _boolean,
        "workers": int,
        "receipts": _boolean,
        "webhook_timeout": float,
        "escalation_poll": float,
        "static_dir": Path,
        "certfile": Path,
        "keyfile": Path,
        "presence_ttl": float,
    }

    def __post_init__(self) -> None:
        for name in ("heartbeat", "retry", "stream_buffer", "max_body", "max_frame", "max_header", "workers"):
            value = getattr(self, name)
            if not (0 < value < math.inf):  # also refuses nan
                raise ValueError(f"{name} must be a positive number")
        for name in ("max_user_streams", "max_streams", "publish_rate", "publish_burst"):
            value = getattr(self, name)
            if not (0 <= value < math.inf):
                raise ValueError(f"{name} must be 0 (no limit) or a positive number")
        if not 2 <= self.presence_ttl <= 3600:  # also refuses nan; under 2 s a beat late by a hair drops a node
            raise ValueError("presence_ttl must be between 2 and 3600 seconds")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0-65535")
        if self.webhook_url is not None:
            parts = urlsplit(self.webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"webhook_url must be an http:// or https:// URL, not {redact_url(self.webhook_url)!r}")
        for name in ("webhook_timeout", "escalation_poll"):
            if not (0 < getattr(self, name) < math.inf):
                raise ValueError(f"{name} must be a positive number")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together")
        if self.workers > 1 and self.store_url.startswith("sqlite:"):
            raise ValueError("--workers above 1 needs a store the processes share, "
                             "--store postgresql://USER@HOST:PORT/DB (SQLite has one writer per process)")
        if self.workers > 1 and self.broker_url.startswith("memory:"):
            raise ValueError("--workers above 1 needs a broker between the processes, "
                             "postgresql://... or redis://... (memory:// reaches one process)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``SSE_NOTIFY_<NAME>`` variables, then ``overrides`` (None = unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name.startswith("_"):
                continue
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: cls._convert(k, v) for k, v in values.items()})

    @classmethod
    def _convert(cls, name: str, value: Any) -> Any:
        converter = cls._CONVERTERS.get(name)
        try:
            return converter(value) if converter else value
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid value for {name}: {value!r} ({exc})") from None

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{self.data_dir / 'notifications.db'}"

    @property
    def broker_url(self) -> str:
        if self.broker:
            return self.broker
        store_url = self.store_url
        return store_url if store_url.split(":", 1)[0] in ("postgresql", "postgres") else "memory://"

    def keyring(self, create: bool = True) -> Keyring:
        """The configured secrets, else the data directory's: created if missing, or with
        ``create=False`` :class:`MissingSecret`."""
        if self.secret:
            return Keyring(self.secret, self.previous_secret)
        return load_keyring(self.data_dir, create=create)


@dataclass(frozen=True)
class Keyring:
    """The secret that signs, and a previous one still accepted until ``previous_until``
    (epoch seconds; None: for as long as it is configured)."""

    secret: str = field(repr=False)
    previous: str | None = field(default=None, repr=False)
    previous_until: float | None = None


class MissingSecret(ValueError):
    """No ``secret.key`` where one was expected, and creating one was not allowed."""

    def __init__(self, path: Path):
        self.path = path.resolve()
        super().__init__(f"no secret at {self.path}")


def load_secret(data_dir: Path, create: bool = True) -> str:
    """Read ``<data_dir>/secret.key``, creating it (mode 0600) with a fresh secret if absent;
    with ``create=False`` an absent (or empty) file raises :class:`MissingSecret` and
    nothing is created."""
    return _private_value(data_dir / SECRET_FILE, lambda: secrets.token_urlsafe(48), create)


def _private_value(path: Path, make: Callable[[], str], create: bool) -> str:
    """The stripped contents of ``path``; when absent (or empty) either made with ``make()``
    and written with mode 0600 -- by exactly one of several racing processes -- or, with
    ``create=False``, :class:`MissingSecret` and nothing written."""
    try:
        value = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        value = ""
    if value:
        return value
    if not create:
        raise MissingSecret(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(make() + "\n")
    return path.read_text().strip()


def load_keyring(data_dir: Path, create: bool = True) -> Keyring:
    """``secret.key`` (see :func:`load_secret`) and, within its grace period, ``secret.previous``."""
    secret = load_secret(data_dir, create=create)
    path = data_dir / PREVIOUS_SECRET_FILE
    try:
        saved = json.loads(path.read_text())
        previous, until = saved["secret"], float(saved["until"])
    except FileNotFoundError:
        return Keyring(secret)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a saved secret; remove it or rotate again") from None
    if until <= time.time():
        return Keyring(secret)
    return Keyring(secret, previous, until)


def rotate_secret(data_dir: Path, grace: int) -> Keyring:
    """Make a new signing secret; the current one stays valid for ``grace`` more seconds.
    Raises :class:`MissingSecret` when there is no current secret: rotating one that no
    server ever used would only invent a first secret."""
    current = load_secret(data_dir, create=False)
    until = time.time() + grace
    _write_private(data_dir / PREVIOUS_SECRET_FILE, json.dumps({"secret": current, "until": until}))
    _write_private(data_dir / SECRET_FILE, secrets.token_urlsafe(48) + "\n")
    return load_keyring(data_dir)


def new_webhook_secret() -> str:
    """A fresh webhook secret in the Standard Webhooks form: ``whsec_`` + base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def load_webhook_secret(data_dir: Path, create: bool = True) -> str:
    """``<data_dir>/webhook.key``, made (mode 0600) if absent; with ``create=False`` an
    absent one is :class:`MissingSecret` and nothing is created."""
    return _private_value(data_dir / WEBHOOK_SECRET_FILE, new_webhook_secret, create)


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, readable by the owner only."""
    temp = path.with_name(path.name + ".tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


def redact_url(url: str) -> str:
    """``url`` fit for a log line: any password in it replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
