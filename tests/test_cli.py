"""sse_notify.cli: ``main(argv) -> int`` called directly; no server is started."""

from __future__ import annotations

import os
import re
import time
from dataclasses import fields
from pathlib import Path

import click
import pytest

from sse_notify import cli, server
from sse_notify.cli import main
from sse_notify.config import Settings, load_secret
from sse_notify.tokens import DEFAULT_SUBSCRIBER_TTL, InvalidToken, TokenSigner


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SSE_NOTIFY_* from the outer environment; a stray default data dir lands in tmp."""
    for name in list(os.environ):
        if name.startswith("SSE_NOTIFY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def served_dir(tmp_path: Path) -> Path:
    """A data directory with the secret a server's first start would have created."""
    data_dir = tmp_path / "served"
    load_secret(data_dir)
    return data_dir


@pytest.fixture
def no_serving(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail loudly instead of blocking if a test ever gets as far as running the server."""
    calls: list = []

    def refuse(settings: object) -> None:
        calls.append(settings)
        raise AssertionError("serve got past option validation")

    monkeypatch.setattr(cli, "run", refuse)
    return calls


def test_token_prints_a_subscriber_token_that_verifies(served_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = served_dir
    assert main(["token", "alice", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1  # exactly the token and a newline
    signer = TokenSigner(load_secret(data_dir))
    claims = signer.verify_subscriber(out.strip())
    assert claims.subject == "alice"
    with pytest.raises(InvalidToken):
        signer.verify_publisher(out.strip())


def test_token_default_and_explicit_ttl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    signer = TokenSigner(load_secret(tmp_path))
    assert main(["token", "alice", "--data-dir", str(tmp_path)]) == 0
    default = signer.verify_subscriber(capsys.readouterr().out.strip())
    assert abs(default.expires_at - (time.time() + DEFAULT_SUBSCRIBER_TTL)) < 60
    assert main(["token", "alice", "--ttl", "120", "--data-dir", str(tmp_path)]) == 0
    short = signer.verify_subscriber(capsys.readouterr().out.strip())
    assert abs(short.expires_at - (time.time() + 120)) < 60


def test_token_uses_the_same_secret_every_time(served_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "alice", "--data-dir", str(served_dir)]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["token", "bob", "--data-dir", str(served_dir)]) == 0
    second = capsys.readouterr().out.strip()
    signer = TokenSigner(load_secret(served_dir))
    assert signer.verify_subscriber(first).subject == "alice"
    assert signer.verify_subscriber(second).subject == "bob"


def test_token_honours_secret_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSE_NOTIFY_SECRET", "from-env")
    assert main(["token", "alice", "--data-dir", str(tmp_path / "d")]) == 0
    assert TokenSigner("from-env").verify_subscriber(capsys.readouterr().out.strip()).subject == "alice"


def test_token_publisher(served_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--publisher", "x", "--data-dir", str(served_dir)]) == 0
    token = capsys.readouterr().out.strip()
    signer = TokenSigner(load_secret(served_dir))
    claims = signer.verify_publisher(token)
    assert claims.subject == "x" and claims.expires_at is None
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(token)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["token", "alice", "--publisher", "x"], id="both"),
        pytest.param(["token"], id="neither"),
    ],
)
def test_token_needs_exactly_one_subject(argv: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--data-dir", str(tmp_path)]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--publisher" in captured.err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["token", "bad user"], id="space"),
        pytest.param(["token", "x" * 129], id="too-long"),
        pytest.param(["token", "--publisher", "a/b"], id="publisher"),
        pytest.param(["token", "alice", "--ttl", "0"], id="ttl-zero"),
        pytest.param(["token", "alice", "--ttl", "-5"], id="ttl-negative"),
        pytest.param(["token", "alice", "--ttl", "soon"], id="ttl-not-int"),
    ],
)
def test_token_invalid_input(argv: list[str], served_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--data-dir", str(served_dir)]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Error" in captured.err and "no secret" not in captured.err  # refused for the input itself


def test_serve_bad_retention_fails_before_serving(no_serving: list, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--retention", "nonsense"]) != 0
    err = capsys.readouterr().err
    assert "--retention" in err and "nonsense" in err
    assert no_serving == []


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["serve", "--port", "99999"], "port"),
        (["serve", "--port", "eighty"], "port"),
        (["serve", "--heartbeat", "0"], "heartbeat"),
        (["serve", "--stream-buffer", "-1"], "stream_buffer"),
        (["serve", "--certfile", "/nonexistent/cert.pem"], "certfile"),
        (["serve", "--no-such-flag"], "no-such-flag"),
    ],
)
def test_serve_invalid_options_fail_before_serving(argv: list[str], mentions: str, no_serving: list,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) != 0
    assert mentions in capsys.readouterr().err
    assert no_serving == []


def test_serve_invalid_environment_fails_before_serving(monkeypatch: pytest.MonkeyPatch, no_serving: list,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSE_NOTIFY_RETENTION", "forever")
    assert main(["serve"]) != 0
    assert "retention" in capsys.readouterr().err
    assert no_serving == []


def test_serve_passes_flags_over_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list = []

    monkeypatch.setattr(cli, "run", seen.append)  # the settings serve would run with
    monkeypatch.setattr(cli, "configure_logging", lambda: None)
    monkeypatch.setenv("SSE_NOTIFY_PORT", "9001")
    monkeypatch.setenv("SSE_NOTIFY_HEARTBEAT", "7")
    monkeypatch.setenv("SSE_NOTIFY_ALLOW_ORIGIN", "https://env.example")
    assert main(["serve", "--port", "9002", "--retention", "12h", "--data-dir", str(tmp_path)]) == 0
    [settings] = seen
    assert (settings.port, settings.heartbeat, settings.retention) == (9002, 7.0, 43200)
    assert settings.allow_origin == ("https://env.example",)  # no flag: the variable stays
    assert settings.data_dir == tmp_path
    seen.clear()
    assert main(["serve", "--allow-origin", "https://a.example", "--allow-origin", "https://b.example/",
                 "--no-access-log"]) == 0
    assert seen[0].allow_origin == ("https://a.example", "https://b.example")
    assert seen[0].access_log is False


@pytest.mark.parametrize("argv", [
    pytest.param(["token", "alice"], id="token"),
    pytest.param(["token", "--publisher", "backend"], id="token-publisher"),
    pytest.param(["rotate-secret"], id="rotate-secret"),
])
@pytest.mark.parametrize("where", ["default", "flag", "variable"])
def test_without_a_secret_token_and_rotate_secret_fail_in_one_line_and_create_nothing(
        argv: list[str], where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Run from the wrong directory, they must not invent a secret the server does not use."""
    extra: list[str] = []
    looked = tmp_path / "sse-notify-data"  # the default, relative to the working directory (tmp)
    if where == "flag":
        looked = tmp_path / "elsewhere" / "data"
        extra = ["--data-dir", os.path.relpath(looked, tmp_path)]
    elif where == "variable":
        looked = tmp_path / "from-env"
        monkeypatch.setenv("SSE_NOTIFY_DATA_DIR", "from-env")
    assert main([*argv, *extra]) != 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("Error: "), err  # one line
    assert f"{looked / 'secret.key'} " in err  # where it looked, as an absolute path
    for hint in ("--data-dir DIR", "SSE_NOTIFY_DATA_DIR", "SSE_NOTIFY_SECRET"):
        assert hint in err
    assert list(tmp_path.iterdir()) == []  # no directory, no secret


def test_an_empty_secret_file_is_not_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "secret.key").write_text("")
    assert main(["token", "alice", "--data-dir", str(tmp_path)]) != 0
    assert "no secret" in capsys.readouterr().err
    assert (tmp_path / "secret.key").read_text() == ""


def test_token_with_a_damaged_previous_secret_fails_in_one_line(served_dir: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    (served_dir / "secret.previous").write_text("not json")
    assert main(["token", "alice", "--data-dir", str(served_dir)]) != 0
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "secret.previous" in err


def test_token_with_a_bad_variable_fails_in_one_line(served_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSE_NOTIFY_RETENTION", "forever")  # read by every command's Settings
    assert main(["token", "alice", "--data-dir", str(served_dir)]) != 0
    out, err = capsys.readouterr()
    assert out == "" and "retention" in err and "Traceback" not in err


def _flatten(text: str) -> str:
    return " ".join(text.split())


def _option_help(out: str) -> dict[str, str]:
    """``--help`` output -> {first flag: its whole help text, re-joined onto one line}."""
    options = out.split("\nOptions:\n", 1)[1]
    blocks = re.split(r"\n(?=  -)", options.split("\n\n", 1)[0])
    return {block.split()[0].rstrip(","): _flatten(block) for block in blocks}


def test_every_serve_option_names_its_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    helps = _option_help(capsys.readouterr().out)
    settings = {f.name for f in fields(Settings)}
    options = [p for p in cli.serve.params if isinstance(p, click.Option) and p.name != "help"]
    assert len(options) == 24
    for option in options:
        text = helps[option.opts[0]]
        variable = "SSE_NOTIFY_" + option.name.upper()
        assert option.name in settings  # the variable Settings.from_env reads
        assert re.search(rf"\[default: [^;\]]+; env: {variable}\]$", text), text


def test_serve_help_explains_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--help"]) == 0
    out = _flatten(capsys.readouterr().out)
    assert "SSE_NOTIFY_SECRET" in out and "SSE_NOTIFY_PREVIOUS_SECRET" in out and "secret.key" in out


def test_token_help_states_the_default_lifetimes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--help"]) == 0
    out = capsys.readouterr().out
    helps = _option_help(out)
    assert f"subscriber {DEFAULT_SUBSCRIBER_TTL} (24 h)" in helps["--ttl"]
    assert "publisher: no expiry" in helps["--ttl"]
    assert "A subscriber token lasts 24 h, a publisher token never expires; --ttl SECONDS" in _flatten(out)
    assert "SSE_NOTIFY_DATA_DIR" in helps["--data-dir"]


def test_the_command_list_shows_each_summary_whole(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = _flatten(capsys.readouterr().out.split("Commands:", 1)[1])
    assert "..." not in out  # click's mark of a summary cut short
    for name, command in cli.cli.commands.items():
        summary = command.get_short_help_str(limit=1000)
        assert summary.endswith(".") and f"{name} {summary}" in out


def test_start_line_names_the_absolute_data_dir_and_hides_a_store_password(
        tmp_path: Path) -> None:
    line = server.start_line(Settings.from_env({}, data_dir="rel/data"))
    assert line == f"sse-notify on http://127.0.0.1:8000 (data: {tmp_path / 'rel' / 'data'})"  # cwd: tmp_path
    line = server.start_line(Settings.from_env({}, store="postgresql://app:s3cret@db.example/notes"))
    assert "s3cret" not in line and "store: postgresql://app:***@db.example/notes" in line


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "serve" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert "1.0.0" in capsys.readouterr().out


def test_unknown_command_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) != 0
    assert "frobnicate" in capsys.readouterr().err


def test_rotate_secret_signs_anew_and_keeps_old_tokens_valid(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    old_token = TokenSigner(load_secret(tmp_path)).subscriber("alice")
    assert main(["rotate-secret", "--data-dir", str(tmp_path), "--grace", "2h"]) == 0
    err = capsys.readouterr().err
    assert "accepted until" in err and str(tmp_path / "secret.key") in err
    assert main(["token", "bob", "--data-dir", str(tmp_path)]) == 0
    new_token = capsys.readouterr().out.strip()
    assert TokenSigner(load_secret(tmp_path)).verify_subscriber(new_token).subject == "bob"
    with pytest.raises(InvalidToken):  # the old token is not valid under the new secret alone
        TokenSigner(load_secret(tmp_path)).verify_subscriber(old_token)


def test_rotate_secret_refuses_when_the_secret_comes_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SSE_NOTIFY_SECRET", "from-env")
    assert main(["rotate-secret", "--data-dir", str(tmp_path)]) != 0
    assert "SSE_NOTIFY_PREVIOUS_SECRET" in capsys.readouterr().err
    assert not (tmp_path / "secret.previous").exists()
