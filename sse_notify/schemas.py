"""Request and response bodies of the HTTP API, as pydantic models.

They validate what comes in (every violation becomes a 422 with the first problem in
words) and describe the API in the OpenAPI document quart-schema serves. Validation is
strict: a number is not a string, and unknown fields are refused rather than dropped.

Publish bodies (the hot path: a bulk POST carries up to 1,000) are first checked by hand
(:func:`publish_drafts`) for the shapes publishers send -- one target, no ``escalate`` --
and turned into drafts directly. Whatever that check does not accept goes to
:class:`PublishBody`, which stays the one definition of what is valid and of every error
message: the fast path only ever accepts what the model accepts (a test compares them on
generated bodies), and never answers an error itself.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    BaseModel, ConfigDict, Field, RootModel, StringConstraints, ValidationError, field_validator,
    model_validator,
)

from .errors import ApiError
from .config import parse_duration
from .models import MAX_ID, NAME_RE, PRIORITIES, Escalate, NotificationDraft

__all__ = [
    "ErrorBody", "HealthResponse", "HistoryQuery", "HistoryResponse", "IdsResponse", "MarkReadBody",
    "NotificationOut", "PublishBody", "TokenBody", "TokenResponse", "UpdatedResponse",
    "PresenceQuery", "PresenceResponse", "UserPresenceOut",
    "BulkIdsResponse", "MAX_BULK", "PublishAnswer", "PublishRequest", "StatusResponse",
    "decode_body", "parse", "parse_bulk", "publish_drafts",
]

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._@:-]{1,128}$")]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
MAX_USERS = 1000
MAX_TITLE, MAX_BODY = 256, 4096
MAX_BULK = 1000  # notification bodies in one bulk publish
MAX_READ_IDS = 1000
MAX_TOKEN_TTL = 366 * 86400
#: How deeply ``data`` may nest: it is re-encoded inside other JSON up to three levels
#: deeper (a history page), and the encoder stops at 254 levels.
MAX_DATA_DEPTH = 200
#: The integers JSON bodies may carry (64 bits, signed or not): the decoder silently turns
#: larger ones into floats, which would change ``data`` instead of passing it through.
INT_RANGE = (-(2**63), 2**64 - 1)
#: Only a run of 19 digits can be an integer out of range. Looking for one with a regular
#: expression cost twice the JSON decoding of a bulk body; mapping every digit to ``0``
#: and everything else to a space, then searching for 19 zeros, costs a tenth of it.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))
_LONG_DIGITS = b"0" * 19


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


ESCALATE_MIN, ESCALATE_MAX = 5, 7 * 86400  # seconds


class EscalateBody(_Strict):
    """When to call the webhook: `after` a duration (`5s` to `7d`: a number and `s`, `m`,
    `h` or `d`), unless the user has `read` the notification (or had it `delivered`)."""

    after: str = Field(examples=["10m"])
    unless: Literal["read", "delivered"] = "read"

    @field_validator("after")
    @classmethod
    def _duration(cls, after: str) -> str:
        try:
            seconds = parse_duration(after)
        except ValueError:
            raise ValueError("must be a duration such as 30s, 10m, 2h or 1d") from None
        if not ESCALATE_MIN <= seconds <= ESCALATE_MAX:
            raise ValueError("must be between 5s and 7d")
        return after


class PublishBody(_Strict):
    user: Name | None = None
    users: list[Name] | None = Field(None, min_length=1, max_length=MAX_USERS)
    broadcast: bool = False
    title: str = Field(min_length=1, max_length=MAX_TITLE)
    body: str | None = Field(None, max_length=MAX_BODY)
    priority: Literal["low", "medium", "high", "urgent"] = "medium"
    topic: Name | None = None
    data: dict[str, Any] | None = None
    escalate: EscalateBody | None = None

    @field_validator("data")
    @classmethod
    def _not_too_deep(cls, data: dict[str, Any] | None) -> dict[str, Any] | None:
        if data is not None and not _depth_within(data, MAX_DATA_DEPTH):
            raise ValueError(f"nested deeper than {MAX_DATA_DEPTH} levels")
        return data

    @model_validator(mode="after")
    def _one_target(self) -> PublishBody:
        targets = (self.user is not None) + (self.users is not None) + self.broadcast
        if targets != 1:
            raise ValueError('give exactly one target: "user", "users" or "broadcast": true')
        if self.users is not None and len(set(self.users)) != len(self.users):
            raise ValueError('"users" must not repeat an id')
        if self.broadcast and self.escalate is not None:
            raise ValueError('"escalate" is for notifications to users, not broadcasts')
        return self

    def drafts(self) -> list[NotificationDraft]:
        recipients: list[str | None] = (
            [None] if self.broadcast else [self.user] if self.user is not None else list(self.users or ())
        )
        escalate = None if self.escalate is None else Escalate(parse_duration(self.escalate.after),
                                                                self.escalate.unless)
        return [NotificationDraft(user, self.title, self.body, self.priority, self.topic, self.data, escalate)
                for user in recipients]


class PublishRequest(RootModel[PublishBody | Annotated[list[PublishBody],
                                                      Field(min_length=1, max_length=MAX_BULK)]]):
    """One notification, or (bulk) an array of 1 to 1000 of them, validated first and
    stored in one commit."""  # the OpenAPI description; requests go through parse/parse_bulk


class MarkReadBody(_Strict):
    ids: list[Id] | None = Field(None, min_length=1, max_length=MAX_READ_IDS)
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> MarkReadBody:
        if (self.ids is None) == (self.all is None):
            raise ValueError('give either "ids" or "all": true')
        return self


class TokenBody(_Strict):
    user: Name
    ttl: int | None = Field(None, ge=1, le=MAX_TOKEN_TTL)


class HistoryQuery(BaseModel):
    """Query string of ``GET /notifications`` (documentation; parsed by hand for 422s)."""

    limit: int = Field(50, ge=1, le=200)
    before: int | None = None
    unread: bool | None = None


class NotificationOut(BaseModel):
    id: int
    user: str | None
    topic: str | None
    title: str
    body: str | None
    priority: str
    data: dict[str, Any] | None
    created_at: str
    read: bool


class HistoryResponse(BaseModel):
    notifications: list[NotificationOut]
    next_before: int | None


class IdsResponse(BaseModel):
    ids: list[int]


class BulkIdsResponse(BaseModel):
    results: list[IdsResponse]  # one per element of the bulk body, in order


class PublishAnswer(RootModel[IdsResponse | BulkIdsResponse]):
    """The ids stored; for an array body, one {"ids": [...]} per element, in order."""


class Receipt(BaseModel):
    delivered_at: str | None  # first written to one of the user's streams
    read_at: str | None


class UserStatus(BaseModel):
    id: int
    broadcast: Literal[False]
    users: dict[str, Receipt]


class BroadcastStatus(BaseModel):
    id: int
    broadcast: Literal[True]
    read: int  # users who read it


class StatusResponse(RootModel[UserStatus | BroadcastStatus]):
    """A user's notification: its receipt per target user; a broadcast: how many read it."""


class UpdatedResponse(BaseModel):
    updated: int


class TokenResponse(BaseModel):
    token: str
    user: str
    expires_at: str


class HealthResponse(BaseModel):
    status: Literal["ok"]


class PresenceQuery(BaseModel):
    """Query string of ``GET /presence`` (documentation; parsed by hand for 422s)."""

    user: list[Name] = Field(min_length=1, max_length=100)


class UserPresenceOut(BaseModel):
    online: bool
    streams: int = Field(ge=0)
    last_seen: str | None


class PresenceResponse(BaseModel):
    users: dict[str, UserPresenceOut]


class ErrorBody(BaseModel):
    error: str
    message: str


M = TypeVar("M", bound=BaseModel)


def decode_body(raw: bytes) -> Any:
    """A request body as JSON: 400 when it is not JSON, 422 when it holds an integer
    outside :data:`INT_RANGE`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError.bad_json() from None
    if _LONG_DIGITS in raw.translate(_DIGITS_AS_ZEROS):
        try:
            json.loads(raw, parse_int=_int_in_range)
        except _OutOfRange:
            raise ApiError.invalid(
                f"Integers must lie between {INT_RANGE[0]} and {INT_RANGE[1]}.") from None
    return data


class _OutOfRange(ValueError):
    pass


def _int_in_range(text: str) -> int:
    value = int(text)
    if not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise _OutOfRange
    return value


def _depth_within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects and arrays at most ``limit`` levels deep."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def parse(model: type[M], data: Any, at: str = "") -> M:
    """Validate decoded JSON against ``model``; a violation is a 422 naming the field
    (prefixed by ``at``, where in the body ``data`` is, e.g. ``[3]``)."""
    if not isinstance(data, dict):
        raise ApiError.invalid(f"{at}: must be a JSON object." if at else "The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        parts = [str(part) for part in first["loc"]]
        where = ".".join([at, *parts] if at else parts)
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError.invalid(f"{where}: {message}" if where else message) from None


def parse_bulk(data: list[Any]) -> list[list[NotificationDraft]]:
    """A bulk publish body: 1 to :data:`MAX_BULK` notification bodies, each validated like
    a single one; the first invalid one is a 422 naming its index (``[3].title: ...``).
    Returns each body's drafts, in order."""
    if not 1 <= len(data) <= MAX_BULK:
        raise ApiError.invalid(f"A bulk publish holds 1 to {MAX_BULK} notifications, not {len(data)}.")
    fast = _fast_drafts
    out = []
    for index, item in enumerate(data):
        drafts = fast(item)
        out.append(parse(PublishBody, item, f"[{index}]").drafts() if drafts is None else drafts)
    return out


def publish_drafts(data: Any) -> list[NotificationDraft]:
    """One publish body's drafts; an invalid body is :func:`parse`'s 422."""
    drafts = _fast_drafts(data)
    return parse(PublishBody, data).drafts() if drafts is None else drafts


_PUBLISH_FIELDS = frozenset(PublishBody.model_fields)
_PRIORITY_SET = frozenset(PRIORITIES)
_is_name = NAME_RE.fullmatch


def _fast_drafts(data: Any) -> list[NotificationDraft] | None:
    """The drafts of a publish body :class:`PublishBody` accepts, checked by hand; None
    when it is invalid or a shape left to the model (``escalate``), so that the model
    decides and words the error. Types are checked exactly (JSON decodes to exact types,
    and the model is strict)."""
    if type(data) is not dict or not _PUBLISH_FIELDS.issuperset(data) or data.get("escalate") is not None:
        return None
    get = data.get
    title = get("title")
    if type(title) is not str or not 1 <= len(title) <= MAX_TITLE:
        return None
    body = get("body")
    if body is not None and (type(body) is not str or len(body) > MAX_BODY):
        return None
    priority = get("priority", "medium")
    if type(priority) is not str or priority not in _PRIORITY_SET:
        return None
    topic = get("topic")
    if topic is not None and (type(topic) is not str or _is_name(topic) is None):
        return None
    payload = get("data")
    if payload is not None:
        if type(payload) is not dict:
            return None
        for value in payload.values():
            if type(value) is dict or type(value) is list:  # nested: count the depth
                if not _depth_within(payload, MAX_DATA_DEPTH):
                    return None
                break
    user, users, broadcast = get("user"), get("users"), get("broadcast", False)
    if type(broadcast) is not bool:
        return None
    if user is not None:
        if users is not None or broadcast or type(user) is not str or _is_name(user) is None:
            return None
        return [NotificationDraft(user, title, body, priority, topic, payload)]
    if broadcast:
        return None if users is not None else [NotificationDraft(None, title, body, priority, topic, payload)]
    if type(users) is not list or not 1 <= len(users) <= MAX_USERS:
        return None
    for name in users:
        if type(name) is not str or _is_name(name) is None:
            return None
    if len(set(users)) != len(users):
        return None
    return [NotificationDraft(name, title, body, priority, topic, payload) for name in users]
