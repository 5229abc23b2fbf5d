"""sse_notify.tokens: signing and verifying subscriber and publisher tokens."""

from __future__ import annotations

import secrets
import time
import types

import pytest
from itsdangerous import URLSafeTimedSerializer

from sse_notify import tokens
from sse_notify.tokens import DEFAULT_SUBSCRIBER_TTL, InvalidToken, TokenSigner

SECRET = "test-secret"


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(SECRET)


def _later(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the tokens module's clock forward."""
    now = time.time() + seconds
    monkeypatch.setattr(tokens, "time", types.SimpleNamespace(time=lambda: now))


def test_subscriber_round_trip(signer: TokenSigner) -> None:
    before = time.time()
    claims = signer.verify_subscriber(signer.subscriber("alice", ttl=600))
    assert claims.subject == "alice"
    assert before + 600 <= claims.expires_at <= time.time() + 600


def test_subscriber_default_ttl_is_a_day(signer: TokenSigner) -> None:
    claims = signer.verify_subscriber(signer.subscriber("a.b@c:d-e_f"))
    assert claims.subject == "a.b@c:d-e_f"
    assert abs(claims.expires_at - (time.time() + DEFAULT_SUBSCRIBER_TTL)) < 60


def test_publisher_round_trip_without_expiry(signer: TokenSigner) -> None:
    claims = signer.verify_publisher(signer.publisher("backend"))
    assert claims.subject == "backend" and claims.expires_at is None


def test_publisher_with_ttl_expires(signer: TokenSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    token = signer.publisher("backend", ttl=10)
    assert signer.verify_publisher(token).expires_at is not None
    _later(monkeypatch, 11)
    with pytest.raises(InvalidToken):
        signer.verify_publisher(token)


def test_subscriber_token_is_not_a_publisher_token(signer: TokenSigner) -> None:
    with pytest.raises(InvalidToken):
        signer.verify_publisher(signer.subscriber("alice"))


def test_publisher_token_is_not_a_subscriber_token(signer: TokenSigner) -> None:
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(signer.publisher("alice"))


def _tampered(token: str) -> str:
    payload, rest = token.split(".", 1)
    flipped = "B" if payload[5] != "B" else "C"
    return payload[:5] + flipped + payload[6:] + "." + rest


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(_tampered, id="tampered-payload"),
        pytest.param(lambda t: t[:-5] + ("A" if t[-5] != "A" else "B") + t[-4:], id="tampered-signature"),
        pytest.param(lambda t: t[: len(t) // 2], id="truncated"),
        pytest.param(lambda t: t.rsplit(".", 1)[0], id="signature-removed"),
        pytest.param(lambda t: "", id="empty"),
        pytest.param(lambda t: None, id="none"),
        pytest.param(lambda t: "garbage", id="garbage"),
        pytest.param(lambda t: "a.b.c", id="garbage-dots"),
        pytest.param(lambda t: "\u00e9\u00e9.\u00e9.\u00e9", id="non-ascii"),
        pytest.param(lambda t: t + "A" * 5000, id="too-long"),
        pytest.param(lambda t: " " + t, id="leading-space"),
    ],
)
def test_bad_subscriber_tokens_are_refused(signer: TokenSigner, mangle) -> None:
    token = signer.subscriber("alice", ttl=600)
    signer.verify_subscriber(token)  # the original is fine
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(mangle(token))


def test_validly_signed_but_too_long_token_is_refused(signer: TokenSigner) -> None:
    serializer = URLSafeTimedSerializer(SECRET, salt=tokens._SUBSCRIBER_SALT)
    short = serializer.dumps({"u": "alice", "e": time.time() + 600})
    long = serializer.dumps({"u": "alice", "e": time.time() + 600, "pad": secrets.token_hex(3000)})
    assert signer.verify_subscriber(short).subject == "alice"
    assert len(long) > 4096
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(long)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(["alice"], id="not-a-dict"),
        pytest.param({"u": "bad user", "e": None}, id="invalid-subject"),
        pytest.param({"u": 5, "e": None}, id="subject-not-str"),
        pytest.param({"e": None}, id="no-subject"),
        pytest.param({"u": "alice", "e": "tomorrow"}, id="expiry-not-a-number"),
    ],
)
def test_validly_signed_malformed_payloads_are_refused(signer: TokenSigner, payload) -> None:
    serializer = URLSafeTimedSerializer(SECRET, salt=tokens._SUBSCRIBER_SALT)
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(serializer.dumps(payload))


def test_subscriber_token_without_expiry_is_refused(signer: TokenSigner) -> None:
    serializer = URLSafeTimedSerializer(SECRET, salt=tokens._SUBSCRIBER_SALT)
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(serializer.dumps({"u": "alice"}))


def test_wrong_secret_is_refused(signer: TokenSigner) -> None:
    other = TokenSigner("another-secret")
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(other.subscriber("alice"))
    with pytest.raises(InvalidToken):
        signer.verify_publisher(other.publisher("backend"))


def test_expired_subscriber_token_is_refused(signer: TokenSigner, monkeypatch: pytest.MonkeyPatch) -> None:
    token = signer.subscriber("alice", ttl=60)
    _later(monkeypatch, 59)
    assert signer.verify_subscriber(token).subject == "alice"
    _later(monkeypatch, 61)
    with pytest.raises(InvalidToken):
        signer.verify_subscriber(token)


def test_rotation_previous_secret_verifies_current_signs() -> None:
    old, new = TokenSigner("old-secret"), TokenSigner("new-secret")
    rotating = TokenSigner("new-secret", previous="old-secret")
    # tokens signed with the previous secret still verify
    assert rotating.verify_subscriber(old.subscriber("alice")).subject == "alice"
    assert rotating.verify_publisher(old.publisher("backend")).subject == "backend"
    # new tokens are signed with the current secret only
    token = rotating.subscriber("bob")
    assert new.verify_subscriber(token).subject == "bob"
    with pytest.raises(InvalidToken):
        old.verify_subscriber(token)
    # the previous secret does not let a token change role
    with pytest.raises(InvalidToken):
        rotating.verify_publisher(old.subscriber("alice"))


def test_previous_secret_is_refused_once_its_grace_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    old = TokenSigner("old-secret")
    sub, pub = old.subscriber("alice", ttl=3 * 86400), old.publisher("backend")
    rotating = TokenSigner("new-secret", previous="old-secret", previous_until=time.time() + 3600)
    assert rotating.verify_subscriber(sub).subject == "alice"
    _later(monkeypatch, 3601)  # the same signer, later: checked at every verification
    for verify, token in ((rotating.verify_subscriber, sub), (rotating.verify_publisher, pub)):
        with pytest.raises(InvalidToken):
            verify(token)
    assert rotating.verify_subscriber(rotating.subscriber("bob")).subject == "bob"


@pytest.mark.parametrize("secret", ["", b""])
def test_empty_secret_is_refused(secret) -> None:
    with pytest.raises(ValueError):
        TokenSigner(secret)


@pytest.mark.parametrize("user", ["", "has space", "a/b", "x" * 129, "caf\u00e9", "a\n"])
def test_invalid_user_id_is_refused_when_minting(signer: TokenSigner, user: str) -> None:
    with pytest.raises(ValueError):
        signer.subscriber(user)
    with pytest.raises(ValueError):
        signer.publisher(user)


def test_longest_valid_user_id_is_accepted(signer: TokenSigner) -> None:
    assert signer.verify_subscriber(signer.subscriber("x" * 128)).subject == "x" * 128


@pytest.mark.parametrize("ttl", [0, -1])
def test_non_positive_ttl_is_refused(signer: TokenSigner, ttl: float) -> None:
    with pytest.raises(ValueError):
        signer.subscriber("alice", ttl=ttl)


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every verification, valid or not, either role, through the rotation fallback too,
    compares signatures with hmac.compare_digest (itsdangerous' way): no early exit on the
    first differing byte for a forger to time."""
    import hmac

    from itsdangerous import signer as itsdangerous_signer

    compared: list[int] = []
    compare_digest = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append(1)
        return compare_digest(a, b)

    monkeypatch.setattr(itsdangerous_signer.hmac, "compare_digest", recording)
    rotating = TokenSigner("new", previous="old")
    old = TokenSigner("old")
    good, tampered = rotating.subscriber("alice"), rotating.subscriber("alice")[:-2] + "xx"
    cases = [(rotating.verify_subscriber, good), (rotating.verify_publisher, rotating.publisher("b")),
             (rotating.verify_subscriber, old.subscriber("alice"))]
    for verify, token in cases:
        before = len(compared)
        verify(token)
        assert len(compared) > before
    before = len(compared)
    with pytest.raises(InvalidToken):
        rotating.verify_subscriber(tampered)
    assert len(compared) > before
