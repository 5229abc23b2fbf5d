"""sse_notify.schemas: request validation and ``parse()``'s 422 messages."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from sse_notify.errors import ApiError
from sse_notify.models import NotificationDraft
from sse_notify.schemas import (
    MAX_BULK, MAX_DATA_DEPTH, MAX_TOKEN_TTL, MarkReadBody, PublishBody, TokenBody, decode_body, parse,
    parse_bulk,
)


def refused(model: type, data: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse(model, data)
    assert info.value.status == 422 and info.value.code == "validation_error"
    return info.value


# -- PublishBody ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "data",
    [
        {"user": "alice", "title": "t"},
        {"users": ["a", "b"], "title": "t"},
        {"users": ["u%d" % i for i in range(1000)], "title": "t"},
        {"broadcast": True, "title": "t"},
        {"user": "alice", "broadcast": False, "title": "t"},
        {"user": "a.b@c:d-e_F9", "title": "x" * 256, "body": "y" * 4096, "priority": "urgent",
         "topic": "chat.room-1", "data": {"nested": [1, {"k": None}], "s": "v"}},
        {"user": "alice", "title": "t", "body": None, "topic": None, "data": None},
        {"user": "x" * 128, "title": "t"},
    ],
)
def test_publish_body_accepts(data: dict) -> None:
    assert isinstance(parse(PublishBody, data), PublishBody)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"title": "t"}, None),  # no target
        ({"user": "a", "users": ["b"], "title": "t"}, None),
        ({"user": "a", "broadcast": True, "title": "t"}, None),
        ({"users": ["a"], "broadcast": True, "title": "t"}, None),
        ({"users": ["a", "b", "a"], "title": "t"}, None),  # duplicates
        ({"users": [], "title": "t"}, "users"),
        ({"users": ["u%d" % i for i in range(1001)], "title": "t"}, "users"),
        ({"users": ["a", "b c"], "title": "t"}, "users.1"),
        ({"users": "alice", "title": "t"}, "users"),
        ({"user": "bad user", "title": "t"}, "user"),
        ({"user": "", "title": "t"}, "user"),
        ({"user": "x" * 129, "title": "t"}, "user"),
        ({"user": "alice\n", "title": "t"}, "user"),
        ({"user": "caf\u00e9", "title": "t"}, "user"),
        ({"user": 5, "title": "t"}, "user"),
        ({"user": "alice"}, "title"),
        ({"user": "alice", "title": ""}, "title"),
        ({"user": "alice", "title": "x" * 257}, "title"),
        ({"user": "alice", "title": 5}, "title"),
        ({"user": "alice", "title": None}, "title"),
        ({"user": "alice", "title": "t", "body": "y" * 4097}, "body"),
        ({"user": "alice", "title": "t", "body": 1}, "body"),
        ({"user": "alice", "title": "t", "priority": "HIGH"}, "priority"),
        ({"user": "alice", "title": "t", "priority": None}, "priority"),
        ({"user": "alice", "title": "t", "topic": "a b"}, "topic"),
        ({"user": "alice", "title": "t", "data": [1, 2]}, "data"),
        ({"user": "alice", "title": "t", "data": "{}"}, "data"),
        ({"broadcast": 1, "title": "t"}, "broadcast"),  # strict: 1 is not true
        ({"broadcast": "true", "title": "t"}, "broadcast"),
        ({"user": "alice", "title": "t", "extra": 1}, "extra"),
    ],
)
def test_publish_body_refuses(data: dict, field: str | None) -> None:
    error = refused(PublishBody, data)
    if field is None:
        assert ":" not in error.message.split(" ")[0]  # a rule about the whole body
    else:
        assert error.message.startswith(f"{field}: ")


def test_target_messages() -> None:
    assert refused(PublishBody, {"title": "t"}).message == (
        'give exactly one target: "user", "users" or "broadcast": true')
    assert refused(PublishBody, {"users": ["a", "a"], "title": "t"}).message == (
        '"users" must not repeat an id')


def test_drafts_one_per_recipient_in_order() -> None:
    body = parse(PublishBody, {"users": ["b", "a", "c"], "title": "T", "body": "B", "topic": "x",
                               "priority": "low", "data": {"k": 1}})
    assert body.drafts() == [NotificationDraft(u, "T", "B", "low", "x", {"k": 1}) for u in ("b", "a", "c")]
    assert parse(PublishBody, {"user": "a", "title": "T"}).drafts() == [NotificationDraft("a", "T")]
    assert parse(PublishBody, {"broadcast": True, "title": "T"}).drafts() == [NotificationDraft(None, "T")]


def test_priority_defaults_to_medium() -> None:
    assert parse(PublishBody, {"user": "a", "title": "t"}).priority == "medium"


# -- MarkReadBody ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "data",
    [{"ids": [1]}, {"ids": [1, 1, 2**63 - 1]}, {"ids": list(range(1, 1001))}, {"all": True}],
)
def test_mark_read_body_accepts(data: dict) -> None:
    body = parse(MarkReadBody, data)
    assert body.ids == data.get("ids")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, None),
        ({"ids": [1], "all": True}, None),
        ({"ids": []}, "ids"),
        ({"ids": list(range(1, 1002))}, "ids"),
        ({"ids": [0]}, "ids.0"),
        ({"ids": [1, -1]}, "ids.1"),
        ({"ids": [2**63]}, "ids.0"),
        ({"ids": ["1"]}, "ids.0"),
        ({"ids": [1.0]}, "ids.0"),
        ({"ids": [True]}, "ids.0"),
        ({"ids": 1}, "ids"),
        ({"all": False}, "all"),
        ({"all": "true"}, "all"),
        ({"all": True, "extra": 1}, "extra"),
    ],
)
def test_mark_read_body_refuses(data: dict, field: str | None) -> None:
    error = refused(MarkReadBody, data)
    if field is None:
        assert error.message == 'give either "ids" or "all": true'
    else:
        assert error.message.startswith(f"{field}: ")


# -- TokenBody ------------------------------------------------------------------------

@pytest.mark.parametrize("data", [{"user": "alice"}, {"user": "alice", "ttl": 1},
                                  {"user": "alice", "ttl": MAX_TOKEN_TTL}, {"user": "alice", "ttl": None}])
def test_token_body_accepts(data: dict) -> None:
    body = parse(TokenBody, data)
    assert body.user == "alice" and body.ttl == data.get("ttl")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "user"),
        ({"user": "bad user"}, "user"),
        ({"user": "alice", "ttl": 0}, "ttl"),
        ({"user": "alice", "ttl": -1}, "ttl"),
        ({"user": "alice", "ttl": MAX_TOKEN_TTL + 1}, "ttl"),
        ({"user": "alice", "ttl": "3600"}, "ttl"),
        ({"user": "alice", "ttl": 1.5}, "ttl"),
        ({"user": "alice", "ttl": True}, "ttl"),
        ({"user": "alice", "admin": True}, "admin"),
    ],
)
def test_token_body_refuses(data: dict, field: str) -> None:
    assert refused(TokenBody, data).message.startswith(f"{field}: ")


# -- parse() --------------------------------------------------------------------------

@pytest.mark.parametrize("data", [[], [{"user": "a", "title": "t"}], "text", 1, None, True])
@pytest.mark.parametrize("model", [PublishBody, MarkReadBody, TokenBody])
def test_parse_refuses_non_objects(model: type, data: Any) -> None:
    assert refused(model, data).message == "The request body must be a JSON object."


def test_parse_message_names_the_first_problem_only() -> None:
    error = refused(PublishBody, {"user": "bad user", "title": ""})
    assert error.message.startswith("user: ") and "title" not in error.message
    assert "Value error" not in refused(PublishBody, {"title": "t"}).message


def test_parse_error_renders_as_contract_json() -> None:
    error = refused(TokenBody, {})
    assert orjson.loads(error.body()) == {"error": "validation_error", "message": error.message}


# -- parse_bulk() -------------------------------------------------------------------------

def test_parse_bulk_validates_every_element_in_order() -> None:
    bodies = parse_bulk([{"user": "a", "title": "1"}, {"broadcast": True, "title": "2"},
                         {"users": ["b", "c"], "title": "3"}])
    assert [[d.user for d in drafts] for drafts in bodies] == [["a"], [None], ["b", "c"]]
    assert len(parse_bulk([{"user": "a", "title": "t"}] * MAX_BULK)) == MAX_BULK


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"user": "a", "title": "t"}, {"user": "a"}], "[1].title: Field required"),
        ([{"user": "a", "title": "t"}] * 3 + [{"title": "t"}],
         '[3]: give exactly one target: "user", "users" or "broadcast": true'),
        ([{"user": "a", "title": "t"}, "text"], "[1]: must be a JSON object."),
        ([[{"user": "a", "title": "t"}]], "[0]: must be a JSON object."),
        ([{"users": ["a", "bad id"], "title": "t"}], "[0].users.1: String should match pattern"),
        ([{"user": "a", "title": "t", "x": 1}, {"user": 5}], "[0].x: Extra inputs are not permitted"),
        ([], "A bulk publish holds 1 to 1000 notifications, not 0."),
        ([{"user": "a", "title": "t"}] * (MAX_BULK + 1), "A bulk publish holds 1 to 1000 notifications, not 1001."),
    ],
)
def test_parse_bulk_names_the_index_of_the_first_invalid_element(data: list, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_bulk(data)
    assert info.value.status == 422 and info.value.message.startswith(message), info.value.message


# -- decode_body --------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b'{"n": 18446744073709551615}', b'{"n": -9223372036854775808}',
                                 b'{"s": "12345678901234567890123"}', b'{"f": 1.2345678901234567890123}'])
def test_decode_body_keeps_what_fits(raw: bytes) -> None:
    assert decode_body(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", [b'{"n": 18446744073709551616}', b'{"n": -9223372036854775809}',
                                 b'[1, {"deep": [123456789012345678901234567890]}]'])
def test_decode_body_refuses_integers_beyond_64_bits(raw: bytes) -> None:
    with pytest.raises(ApiError) as refused:
        decode_body(raw)
    assert refused.value.status == 422


@pytest.mark.parametrize("raw", [b"", b"{", b"NaN", b'{"a": 1,}', b"\xff"])
def test_decode_body_refuses_what_is_not_json(raw: bytes) -> None:
    with pytest.raises(ApiError) as refused:
        decode_body(raw)
    assert refused.value.status == 400


def _nested(depth: int) -> dict:
    data: dict = {}
    for _ in range(depth - 1):
        data = {"a": data}
    return data


def test_data_may_nest_up_to_the_limit() -> None:
    body = {"user": "u", "title": "t", "data": _nested(MAX_DATA_DEPTH)}
    assert parse(PublishBody, body).data is not None
    with pytest.raises(ApiError, match="nested deeper"):
        parse(PublishBody, {**body, "data": _nested(MAX_DATA_DEPTH + 1)})
    with pytest.raises(ApiError, match="nested deeper"):
        parse(PublishBody, {**body, "data": {"list": [[[_nested(MAX_DATA_DEPTH)]]]}})
