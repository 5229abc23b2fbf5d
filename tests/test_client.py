"""Unit tests of the SDK's I/O-free core (``sse_notify.client._core``) and of
``verify_webhook``: which answers are retried and after how long, how error answers map
to exceptions (the service's JSON and a proxy's page), what a publish body holds, and
webhooks signed with ``standardwebhooks`` verified, tampered ones refused.

The client against the real server: ``tests/e2e/test_client.py``.
"""

from __future__ import annotations

import base64
import email.utils
import time
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
import standardwebhooks

from sse_notify.client import (InvalidRequest, NotFound, RateLimited, SSENotifyError, Unauthorized, Unavailable,
                               WebhookVerificationError, verify_webhook)
from sse_notify.client._core import MAX_BACKOFF, MAX_RETRY_AFTER, Call, RetryPolicy, error_from_response


def answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    content = orjson.dumps(body) if body is not None else b""
    return httpx.Response(status, content=content, headers={k.replace("_", "-"): v for k, v in headers.items()})


# -- the retry policy ----------------------------------------------------------------

@pytest.mark.parametrize("status", [200, 201, 400, 401, 404, 405, 413, 422, 500])
def test_final_answers_are_not_retried(status: int) -> None:
    assert RetryPolicy(retries=3).delay(0, answer(status)) is None


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_and_unavailable_answers_are_retried_with_backoff(status: int) -> None:
    policy = RetryPolicy(retries=3, backoff=1.0)
    for attempt, step in enumerate([1.0, 2.0, 4.0]):
        delay = policy.delay(attempt, answer(status))
        assert delay is not None and step / 2 <= delay <= step
    assert policy.delay(3, answer(status)) is None  # the retries are spent


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(retries=100, backoff=1.0)
    delays = {policy.delay(30, None) for _ in range(50)}
    assert all(d is not None and MAX_BACKOFF / 2 <= d <= MAX_BACKOFF for d in delays)
    assert len(delays) > 1


def test_no_answer_is_retried_until_the_retries_are_spent() -> None:
    assert RetryPolicy(retries=1).delay(0, None) is not None
    assert RetryPolicy(retries=1).delay(1, None) is None
    assert RetryPolicy(retries=0).delay(0, None) is None


def test_retry_after_is_honoured_exactly() -> None:
    policy = RetryPolicy(retries=3, backoff=0.01)
    assert policy.delay(0, answer(429, retry_after="2")) == 2.0
    assert policy.delay(0, answer(503, retry_after="5")) == 5.0
    in_3s = email.utils.formatdate(time.time() + 3, usegmt=True)
    assert 1.5 < policy.delay(0, answer(503, retry_after=in_3s)) <= 3.0  # type: ignore[operator]


def test_429_without_retry_after_or_too_long_a_wait_is_raised_at_once() -> None:
    policy = RetryPolicy(retries=3)
    assert policy.delay(0, answer(429)) is None  # over the burst: waiting cannot help
    assert policy.delay(0, answer(429, retry_after=str(int(MAX_RETRY_AFTER) + 1))) is None
    assert policy.delay(0, answer(503, retry_after="3600")) is None


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff=-0.1)


# -- errors --------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "kind"), [(400, InvalidRequest), (401, Unauthorized), (404, NotFound),
                                              (413, InvalidRequest), (422, InvalidRequest), (429, RateLimited),
                                              (502, Unavailable), (503, Unavailable), (504, Unavailable),
                                              (405, SSENotifyError), (500, SSENotifyError)])
def test_error_answers_map_to_typed_exceptions(status: int, kind: type[SSENotifyError]) -> None:
    error = error_from_response(answer(status, {"error": "some_code", "message": "A sentence."}))
    assert type(error) is kind
    assert (error.status, error.code, error.message) == (status, "some_code", "A sentence.")
    assert str(error) == f"{status} some_code: A sentence."


def test_rate_limited_carries_retry_after() -> None:
    error = error_from_response(answer(429, {"error": "rate_limited", "message": "m"}, retry_after="3"))
    assert isinstance(error, RateLimited) and error.retry_after == 3.0


def test_an_answer_that_is_not_the_contracts_json_still_maps_by_status() -> None:
    page = httpx.Response(502, content=b"<html><body>Bad Gateway</body></html>",
                          headers={"content-type": "text/html"})
    error = error_from_response(page)
    assert isinstance(error, Unavailable)
    assert error.code == "http_502" and "Bad Gateway" in error.message
    empty = error_from_response(httpx.Response(504))
    assert isinstance(empty, Unavailable) and empty.message == "Gateway Timeout"


def test_an_unexpected_success_answer_is_an_error_not_a_crash() -> None:
    call = Call.publish(user="a", users=None, broadcast=False, title="t", body=None, priority=None, topic=None,
                        data=None, escalate=None, idempotency_key=None)
    with pytest.raises(SSENotifyError) as caught:
        call.finish(httpx.Response(201, content=b"<html>"))
    assert caught.value.code == "bad_response"


# -- what a call sends ---------------------------------------------------------------

def test_publish_sends_only_the_fields_given_and_a_fresh_key_per_call() -> None:
    http = httpx.Client(base_url="http://notify.test")

    def publish(**fields: object) -> httpx.Request:
        base: dict[str, object] = dict(user=None, users=None, broadcast=False, body=None, priority=None, topic=None,
                                       data=None, escalate=None, idempotency_key=None)
        return Call.publish(**{**base, **fields}).build(http)  # type: ignore[arg-type]

    one = publish(user="alice", title="Hi")
    assert orjson.loads(one.content) == {"user": "alice", "title": "Hi"}
    assert one.headers["content-type"] == "application/json" and one.url == "http://notify.test/notifications"
    full = publish(users=("a", "b"), title="T", body="B", priority="high", topic="t", data={"k": 1},
                   escalate={"after": "10m", "unless": "read"})
    assert orjson.loads(full.content) == {"users": ["a", "b"], "title": "T", "body": "B", "priority": "high",
                                          "topic": "t", "data": {"k": 1},
                                          "escalate": {"after": "10m", "unless": "read"}}
    assert orjson.loads(publish(broadcast=True, title="All").content) == {"broadcast": True, "title": "All"}
    keys = {publish(user="a", title="t").headers["idempotency-key"] for _ in range(3)}
    assert len(keys) == 3
    assert publish(user="a", title="t", idempotency_key="mine").headers["idempotency-key"] == "mine"


def test_other_calls_build_the_contracts_requests() -> None:
    http = httpx.Client(base_url="http://notify.test/prefix/")
    presence = Call.presence(["a", "b@x"]).build(http)
    assert (presence.method, str(presence.url)) == ("GET", "http://notify.test/prefix/presence?user=a&user=b%40x")
    status = Call.status(42).build(http)
    assert (status.method, status.url.path) == ("GET", "/prefix/notifications/42/status")
    token = Call.token("alice", 60).build(http)
    assert token.method == "POST" and orjson.loads(token.content) == {"user": "alice", "ttl": 60}
    assert "idempotency-key" not in token.headers


def test_status_and_presence_answers_are_read() -> None:
    status = Call.status(42).finish(answer(200, {"id": 42, "broadcast": False, "users": {
        "alice": {"delivered_at": "2026-11-25T10:00:00.123Z", "read_at": None}}}))
    assert status.id == 42 and not status.broadcast and status.read is None
    assert status.users["alice"].delivered_at == datetime(2026, 11, 25, 10, 0, 0, 123000, timezone.utc)
    assert status.users["alice"].read_at is None
    broadcast = Call.status(43).finish(answer(200, {"id": 43, "broadcast": True, "read": 5}))
    assert broadcast.broadcast and broadcast.read == 5 and broadcast.users == {}
    presence = Call.presence(["a", "b"]).finish(answer(200, {"users": {
        "a": {"online": True, "streams": 2, "last_seen": None},
        "b": {"online": False, "streams": 0, "last_seen": "2026-11-25T10:00:00.000Z"}}}))
    assert presence["a"].online and presence["a"].streams == 2 and presence["a"].last_seen is None
    assert presence["b"].last_seen == datetime(2026, 11, 25, 10, tzinfo=timezone.utc)


# -- webhooks ------------------------------------------------------------------------

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def signed(payload: str, *, at: datetime | None = None, msg_id: str = "msg_1") -> dict[str, str]:
    at = at or datetime.now(timezone.utc)
    signature = standardwebhooks.Webhook(SECRET).sign(msg_id, at, payload)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


PAYLOAD = orjson.dumps({"type": "notification.unread", "user": "alice",
                        "notification": {"id": 42, "title": "New message"}}).decode()


def test_a_signed_webhook_verifies_and_returns_its_body() -> None:
    headers = {k.title(): v for k, v in signed(PAYLOAD).items()}  # header case does not matter
    body = verify_webhook(PAYLOAD.encode(), headers, SECRET)
    assert body["type"] == "notification.unread" and body["notification"]["id"] == 42


@pytest.mark.parametrize("tamper", [
    lambda p, h: (p.replace("alice", "mallory"), h),
    lambda p, h: (p, {**h, "webhook-id": "msg_2"}),
    lambda p, h: (p, {k: v for k, v in h.items() if k != "webhook-signature"}),
    lambda p, h: (p, {**h, "webhook-signature": "v1,not base64!"}),
    lambda p, h: (p, {**h, "webhook-signature": "garbage"}),
    lambda p, h: (p, {**h, "webhook-timestamp": "yesterday"}),
])
def test_a_tampered_webhook_raises(tamper: object) -> None:
    payload, headers = tamper(PAYLOAD, signed(PAYLOAD))  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(payload, headers, SECRET)
    assert isinstance(caught.value, SSENotifyError) and caught.value.code == "invalid_webhook"


def test_an_old_webhook_is_refused_as_a_replay() -> None:
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    with pytest.raises(WebhookVerificationError, match="too old"):
        verify_webhook(PAYLOAD, signed(PAYLOAD, at=old), SECRET)


def test_a_webhook_signed_with_another_secret_raises() -> None:
    other = "whsec_" + base64.b64encode(b"another secret of 32 bytes......").decode()
    with pytest.raises(WebhookVerificationError):
        verify_webhook(PAYLOAD, signed(PAYLOAD), other)


def test_a_secret_that_is_not_a_whsec_secret_is_a_value_error() -> None:
    for bad in ("", "whsec_", "whsec_???"):
        with pytest.raises(ValueError, match="whsec_"):
            verify_webhook(PAYLOAD, signed(PAYLOAD), bad)
