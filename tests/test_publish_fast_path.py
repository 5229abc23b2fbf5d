"""sse_notify.schemas: the hand-written check of publish bodies against the pydantic model.

``publish_drafts`` and ``parse_bulk`` accept the common publish shapes without pydantic.
The model stays the definition: on every body (generated near the edges of each rule,
valid or not) the fast path must either give exactly the model's drafts or step aside,
and the answer to an invalid body must be the model's 422, word for word.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sse_notify.errors import ApiError
from sse_notify.schemas import (
    MAX_BULK, MAX_DATA_DEPTH, PublishBody, _fast_drafts, parse, parse_bulk, publish_drafts,
)

ABSENT = object()

names = st.sampled_from(["alice", "a.b@c:d-e_F9", "x" * 128, "x" * 129, "", "bad id", "alice\n", "caf\u00e9",
                         "\u0661", "ALICE"])
wrong = st.sampled_from([None, 0, 1, 1.5, True, False, [], {}, ["alice"], {"a": 1}, "true"])


def _nested(depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(depth - 1):
        data = {"a": data}
    return data


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "user": names | wrong,
    "users": st.lists(names, min_size=0, max_size=4) | st.just([f"u{i}" for i in range(1000)])
    | st.just([f"u{i}" for i in range(1001)]) | st.just(["a", "a"]) | st.lists(wrong, max_size=2) | wrong,
    "broadcast": st.booleans() | wrong,
    "title": st.sampled_from(["t", "", "x" * 256, "x" * 257, "\U0001f600" * 256, "\U0001f600" * 257]) | wrong,
    "body": st.sampled_from(["b", "", "y" * 4096, "y" * 4097]) | wrong,
    "priority": st.sampled_from(["low", "medium", "high", "urgent", "HIGH", ""]) | wrong,
    "topic": names | wrong,
    "data": st.sampled_from([{"k": 1}, {"n": [1, {"k": None}]}, _nested(MAX_DATA_DEPTH),
                             _nested(MAX_DATA_DEPTH + 1), {"l": [[[_nested(MAX_DATA_DEPTH)]]]}]) | wrong,
    "escalate": st.sampled_from([{"after": "10m"}, {"after": "1s"}, {"after": "10m", "unless": "delivered"}]) | wrong,
    "extra": st.just(1),
}

bodies = st.fixed_dictionaries({}, optional=FIELDS)


def _model(data: Any, at: str = "") -> tuple[list[Any] | None, str | None]:
    """What the pydantic model says: (drafts, None) or (None, the 422's message)."""
    try:
        return parse(PublishBody, data, at).drafts(), None
    except ApiError as error:
        assert error.status == 422
        return None, error.message


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_the_fast_path_accepts_only_what_the_model_accepts_with_the_same_drafts(data: dict[str, Any]) -> None:
    fast = _fast_drafts(data)
    drafts, message = _model(data)
    if fast is not None:
        assert message is None, (data, message)
        assert fast == drafts
    try:
        answer: Any = publish_drafts(data)
    except ApiError as error:
        answer = error.message
    assert answer == (drafts if message is None else message)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(bodies, min_size=1, max_size=5))
def test_a_bulk_body_is_refused_at_its_first_invalid_element_in_the_model_words(items: list[dict[str, Any]]) -> None:
    expected: Any = []
    for index, item in enumerate(items):
        drafts, message = _model(item, f"[{index}]")
        if message is not None:
            expected = message
            break
        expected.append(drafts)
    try:
        answer: Any = parse_bulk(items)
    except ApiError as error:
        assert error.status == 422
        answer = error.message
    assert answer == expected


def test_the_common_shapes_take_the_fast_path() -> None:
    for data in ({"user": "alice", "title": "t", "data": {"ts": 1.5}}, {"users": ["a", "b"], "title": "t"},
                 {"broadcast": True, "title": "t", "priority": "high", "topic": "x", "body": None}):
        assert _fast_drafts(data) == parse(PublishBody, data).drafts()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"user": "a", "title": "t", "extra": 1}], "[0].extra: Extra inputs are not permitted"),
        ([{"user": "a", "title": 5}], "[0].title: Input should be a valid string"),
        ([{"user": "a", "title": "x" * 257}], "[0].title: String should have at most 256 characters"),
        ([{"user": "a", "title": "t", "body": "y" * 4097}], "[0].body: String should have at most 4096 characters"),
        ([{"user": "a", "title": "t"}, {"users": ["a", "a"], "title": "t"}], '[1]: "users" must not repeat an id'),
        ([{"user": "a", "title": "t"}, {"broadcast": 1, "title": "t"}], "[1].broadcast: Input should be a valid boolean"),
        ([{"user": "a", "title": "t", "data": _nested(MAX_DATA_DEPTH + 1)}],
         f"[0].data: nested deeper than {MAX_DATA_DEPTH} levels"),
        ([{"user": "a", "title": "t"}] * (MAX_BULK + 1), "A bulk publish holds 1 to 1000 notifications, not 1001."),
        ([], "A bulk publish holds 1 to 1000 notifications, not 0."),
    ],
)
def test_bulk_errors_keep_the_model_words(data: list[Any], message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_bulk(data)
    assert info.value.status == 422 and info.value.message == message
