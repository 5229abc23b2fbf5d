"""sse_notify.limits: stream slots and the per-publisher token bucket."""

from __future__ import annotations

import pytest

from sse_notify.errors import ApiError
from sse_notify.limits import PublishRate, StreamSlots


def test_per_user_limit_refuses_with_429_and_frees_on_exit() -> None:
    slots = StreamSlots(per_user=2)
    with slots.take("alice"), slots.take("alice"):
        with pytest.raises(ApiError) as refused:
            slots.take("alice")
        assert refused.value.status == 429 and refused.value.code == "too_many_streams"
        with slots.take("bob"):  # other users are not affected
            pass
    with slots.take("alice"), slots.take("alice"):  # both slots came back
        pass


def test_total_limit_refuses_with_503_and_retry_after() -> None:
    slots = StreamSlots(total=2)
    with slots.take("a"), slots.take("b"):
        with pytest.raises(ApiError) as refused:
            slots.take("c")
        assert refused.value.status == 503 and refused.value.headers["Retry-After"] == "5"
    with slots.take("c"):
        pass


def test_a_slot_is_returned_when_the_stream_fails() -> None:
    slots = StreamSlots(per_user=1)
    with pytest.raises(RuntimeError):
        with slots.take("alice"):
            raise RuntimeError("stream broke")
    with slots.take("alice"):
        pass
    assert slots._by_user == {} and slots._open == 0  # nothing left behind per user


def test_zero_means_unlimited() -> None:
    slots = StreamSlots()
    with slots.take("a"), slots.take("a"), slots.take("a"):
        pass
    rate = PublishRate(0)
    for _ in range(10_000):
        rate.spend("backend")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_the_burst_then_refuses_with_retry_after() -> None:
    clock = Clock()
    rate = PublishRate(2, burst=3, clock=clock)
    for _ in range(3):
        rate.spend("backend")
    with pytest.raises(ApiError) as refused:
        rate.spend("backend")
    assert refused.value.status == 429 and refused.value.code == "rate_limited"
    assert refused.value.headers["Retry-After"] == "1"
    rate.spend("other")  # buckets are per publisher


def test_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    clock = Clock()
    rate = PublishRate(10, burst=2, clock=clock)
    rate.spend("p"), rate.spend("p")
    clock.now += 0.1  # one token back
    rate.spend("p")
    with pytest.raises(ApiError):
        rate.spend("p")
    clock.now += 3600  # a long pause refills only up to the burst
    rate.spend("p"), rate.spend("p")
    with pytest.raises(ApiError):
        rate.spend("p")


def test_retry_after_is_whole_seconds_until_the_next_token() -> None:
    clock = Clock()
    rate = PublishRate(0.25, clock=clock)  # one every 4 s, burst 1
    rate.spend("p")
    clock.now += 1
    with pytest.raises(ApiError) as refused:
        rate.spend("p")
    assert refused.value.headers["Retry-After"] == "3"


def test_spending_several_is_all_or_nothing() -> None:
    clock = Clock()
    rate = PublishRate(2, burst=5, clock=clock)
    rate.spend("p", 4)
    with pytest.raises(ApiError) as refused:
        rate.spend("p", 2)  # one token left: none taken
    assert refused.value.headers["Retry-After"] == "1"  # (2 - 1) / 2 s, rounded up
    rate.spend("p")  # the one left is still there
    with pytest.raises(ApiError):
        rate.spend("p")


def test_more_than_the_burst_at_once_is_refused_without_retry_after() -> None:
    rate = PublishRate(100, burst=10, clock=Clock())
    with pytest.raises(ApiError) as refused:
        rate.spend("p", 11)
    assert refused.value.status == 429 and "Retry-After" not in refused.value.headers
    assert "at most 10 at once" in refused.value.message
    rate.spend("p", 10)  # nothing was taken


def test_refund_gives_back_up_to_the_burst() -> None:
    clock = Clock()
    rate = PublishRate(1, burst=3, clock=clock)
    rate.spend("p", 3)
    rate.refund("p", 2)
    rate.spend("p", 2)
    with pytest.raises(ApiError):
        rate.spend("p")
    rate.refund("p", 10)  # capped at the burst
    rate.spend("p", 3)
    with pytest.raises(ApiError):
        rate.spend("p")
    PublishRate(0).refund("p")  # no limit: nothing to give back
