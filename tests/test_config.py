"""sse_notify.config: durations, Settings precedence and validation, the secret file."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from sse_notify import config
from sse_notify.config import (Keyring, MissingSecret, Settings, load_secret, parse_duration, redact_url,
                               rotate_secret)


# -- parse_duration -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90), ("15m", 900), ("12h", 43200), ("30d", 2592000),
        ("1s", 1), ("45", 45), (" 2h ", 7200), ("2H", 7200), ("10 m", 600),
        (90, 90), (1.9, 1),
    ],
)
def test_parse_duration(text: str | int | float, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "s", "abc", "nonsense", "10x", "1.5h", "-5", "-5s", "5ss", "h5", "0", "0s", 0, -3, "1d2h"])
def test_parse_duration_refuses(text: str | int) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# -- Settings -------------------------------------------------------------------------

def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.data_dir) == ("127.0.0.1", 8000, Path("./sse-notify-data"))
    assert (s.heartbeat, s.retry, s.stream_buffer, s.max_body) == (15.0, 3000, 1024, 65536)
    assert s.retention == 30 * 86400
    assert s.allow_origin == () and s.secret is None and s.access_log is True
    assert s.broker == "" and s.broker_url == "memory://"


def test_broker_defaults_to_the_postgresql_store() -> None:
    store = "postgresql://app@db:5432/notify"
    assert Settings.from_env({}, store=store).broker_url == store
    assert Settings.from_env({}, store="postgres://db/n").broker_url == "postgres://db/n"
    assert Settings.from_env({}, store=store, broker="redis://r:6379/0").broker_url == "redis://r:6379/0"
    assert Settings.from_env({}, store=store, broker="memory://").broker_url == "memory://"
    assert Settings.from_env({}, store="sqlite:///x.db").broker_url == "memory://"


def test_from_env_ignores_real_environment_when_mapping_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_NOTIFY_PORT", "9999")
    assert Settings.from_env({}).port == 8000
    assert Settings.from_env().port == 9999  # None: os.environ


def test_precedence_default_then_env_then_override() -> None:
    env = {"SSE_NOTIFY_PORT": "9001", "SSE_NOTIFY_HEARTBEAT": "2.5", "SSE_NOTIFY_RETENTION": "12h",
           "SSE_NOTIFY_DATA_DIR": "/tmp/from-env"}
    s = Settings.from_env(env)
    assert (s.port, s.heartbeat, s.retention, s.data_dir) == (9001, 2.5, 43200, Path("/tmp/from-env"))
    s = Settings.from_env(env, port=9002, retention="90s", host=None, heartbeat=None)
    assert (s.port, s.retention) == (9002, 90)
    assert s.heartbeat == 2.5  # None means "flag not given": the variable stays
    assert s.host == "127.0.0.1"  # neither: the default


def test_empty_env_value_counts_as_unset() -> None:
    assert Settings.from_env({"SSE_NOTIFY_PORT": ""}).port == 8000


def test_unprefixed_variables_are_ignored() -> None:
    assert Settings.from_env({"PORT": "1234", "SSE_NOTIFY_port": "1234"}).port == 8000


def test_allow_origin_comma_list_from_env() -> None:
    s = Settings.from_env({"SSE_NOTIFY_ALLOW_ORIGIN": "https://a.example, https://b.example/ ,,"})
    assert s.allow_origin == ("https://a.example", "https://b.example")


def test_allow_origin_flags_win_over_env() -> None:
    s = Settings.from_env({"SSE_NOTIFY_ALLOW_ORIGIN": "https://a.example"},
                          allow_origin=("https://c.example/",))
    assert s.allow_origin == ("https://c.example",)


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("YES", True), ("on", True),
                                            ("0", False), ("false", False), ("off", False)])
def test_access_log_from_env(raw: str, value: bool) -> None:
    assert Settings.from_env({"SSE_NOTIFY_ACCESS_LOG": raw}).access_log is value


def test_limits_default_and_zero_means_no_limit() -> None:
    s = Settings.from_env({})
    assert (s.max_user_streams, s.max_streams, s.publish_rate) == (100, 50000, 0)
    s = Settings.from_env({"SSE_NOTIFY_MAX_USER_STREAMS": "0", "SSE_NOTIFY_PUBLISH_RATE": "2.5"})
    assert s.max_user_streams == 0 and s.publish_rate == 2.5


def test_secret_from_env() -> None:
    assert Settings.from_env({"SSE_NOTIFY_SECRET": "s3cret"}).secret == "s3cret"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SSE_NOTIFY_PORT": "eighty"}, "port"),
        ({"SSE_NOTIFY_PORT": "70000"}, "port"),
        ({"SSE_NOTIFY_PORT": "-1"}, "port"),
        ({"SSE_NOTIFY_HEARTBEAT": "soon"}, "heartbeat"),
        ({"SSE_NOTIFY_HEARTBEAT": "0"}, "heartbeat"),
        ({"SSE_NOTIFY_RETRY": "1.5"}, "retry"),
        ({"SSE_NOTIFY_RETRY": "-1"}, "retry"),
        ({"SSE_NOTIFY_STREAM_BUFFER": "0"}, "stream_buffer"),
        ({"SSE_NOTIFY_MAX_BODY": "big"}, "max_body"),
        ({"SSE_NOTIFY_RETENTION": "forever"}, "retention"),
        ({"SSE_NOTIFY_RETENTION": "0s"}, "retention"),
        ({"SSE_NOTIFY_MAX_FRAME": "0"}, "max_frame"),
        ({"SSE_NOTIFY_MAX_HEADER": "-5"}, "max_header"),
        ({"SSE_NOTIFY_MAX_USER_STREAMS": "-1"}, "max_user_streams"),
        ({"SSE_NOTIFY_MAX_STREAMS": "many"}, "max_streams"),
        ({"SSE_NOTIFY_PUBLISH_RATE": "nan"}, "publish_rate"),
        ({"SSE_NOTIFY_PUBLISH_BURST": "-2"}, "publish_burst"),
    ],
)
def test_invalid_env_values_raise_value_error_naming_the_setting(env: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env(env)


@pytest.mark.parametrize(("name", "value"), [("port", "x"), ("retention", "nonsense"), ("stream_buffer", -5)])
def test_invalid_overrides_raise_value_error_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({}, **{name: value})


def test_certfile_and_keyfile_go_together(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="certfile"):
        Settings.from_env({}, certfile=tmp_path / "c.pem")
    s = Settings.from_env({}, certfile=str(tmp_path / "c.pem"), keyfile=str(tmp_path / "k.pem"))
    assert s.certfile == tmp_path / "c.pem" and s.keyfile == tmp_path / "k.pem"


def test_non_finite_heartbeat_is_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        Settings.from_env({"SSE_NOTIFY_HEARTBEAT": "nan"})


def test_invalid_access_log_value_is_refused() -> None:
    with pytest.raises(ValueError, match="access_log"):
        Settings.from_env({"SSE_NOTIFY_ACCESS_LOG": "banana"})


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_store_url_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    s = Settings.from_env({}, data_dir=tmp_path)
    assert s.store_url == f"sqlite:///{tmp_path / 'notifications.db'}"
    assert Settings.from_env({}, store="sqlite:///x.db").store_url == "sqlite:///x.db"


# -- the secret -----------------------------------------------------------------------

def test_load_secret_creates_0600_file_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    secret = load_secret(data_dir)
    path = data_dir / "secret.key"
    assert len(secret) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret
    assert load_secret(data_dir) == secret
    assert load_secret(tmp_path / "other") != secret


def test_keyring_reads_the_file_unless_configured(tmp_path: Path) -> None:
    assert Settings.from_env({}, data_dir=tmp_path).keyring() == Keyring(load_secret(tmp_path))
    configured = Settings.from_env({"SSE_NOTIFY_SECRET": "given", "SSE_NOTIFY_PREVIOUS_SECRET": "old"},
                                   data_dir=tmp_path / "x")
    assert configured.keyring() == Keyring("given", "old", None)
    assert not (tmp_path / "x").exists()  # a configured secret creates no file


def test_without_create_a_missing_secret_is_refused_and_nothing_is_made(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingSecret) as caught:
        load_secret(Path("rel") / "data", create=False)
    assert caught.value.path == tmp_path / "rel" / "data" / "secret.key"  # absolute: where it looked
    assert str(tmp_path / "rel" / "data" / "secret.key") in str(caught.value)
    with pytest.raises(MissingSecret):
        Settings.from_env({}, data_dir=tmp_path / "d").keyring(create=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "secret.key").write_text("\n")
    with pytest.raises(MissingSecret):
        load_secret(tmp_path / "empty", create=False)
    with pytest.raises(MissingSecret):
        rotate_secret(tmp_path / "r", grace=60)  # no current secret: nothing to rotate
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_without_create_an_existing_secret_is_read(tmp_path: Path) -> None:
    secret = load_secret(tmp_path)
    assert load_secret(tmp_path, create=False) == secret
    assert Settings.from_env({}, data_dir=tmp_path).keyring(create=False) == Keyring(secret)
    configured = Settings.from_env({"SSE_NOTIFY_SECRET": "given"}, data_dir=tmp_path / "x")
    assert configured.keyring(create=False) == Keyring("given")  # no file needed


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.example:5432/notes", "postgresql://app:***@db.example:5432/notes"),
    ("redis://:pw@127.0.0.1:6379/0?channel=x", "redis://:***@127.0.0.1:6379/0?channel=x"),
    ("postgresql://postgres@127.0.0.1/db", "postgresql://postgres@127.0.0.1/db"),
    ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
])
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_rotate_keeps_the_previous_secret_for_the_grace_period(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_secret(tmp_path)
    rotated = rotate_secret(tmp_path, grace=3600)
    assert rotated.secret != first and rotated.previous == first
    assert rotated.previous_until == pytest.approx(time.time() + 3600, abs=5)
    for name in ("secret.key", "secret.previous"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert Settings.from_env({}, data_dir=tmp_path).keyring() == rotated  # what serve loads
    monkeypatch.setattr(config.time, "time", lambda: rotated.previous_until + 1)
    assert Settings.from_env({}, data_dir=tmp_path).keyring() == Keyring(rotated.secret)


def test_a_damaged_previous_secret_file_is_reported(tmp_path: Path) -> None:
    load_secret(tmp_path)
    (tmp_path / "secret.previous").write_text("not json")
    with pytest.raises(ValueError, match="secret.previous"):
        Settings.from_env({}, data_dir=tmp_path).keyring()


