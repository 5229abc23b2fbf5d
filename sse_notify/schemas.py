"""Request and response bodies of the HTTP API, as pydantic models.

They validate what comes in (every violation becomes a 422 with the first problem in
words) and describe the API in the OpenAPI document quart-schema serves. Validation is
strict: a number is not a string, and unknown fields are refused rather than dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from .errors import ApiError
from .models import MAX_ID, NotificationDraft

__all__ = [
    "ErrorBody", "HistoryQuery", "HistoryResponse", "IdsResponse", "MarkReadBody",
    "NotificationOut", "PublishBody", "TokenBody", "TokenResponse", "UpdatedResponse",
    "parse",
]

Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._@:-]{1,128}$")]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]
MAX_USERS = 1000
MAX_READ_IDS = 1000
MAX_TOKEN_TTL = 366 * 86400


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class PublishBody(_Strict):
    user: Name | None = None
    users: list[Name] | None = Field(None, min_length=1, max_length=MAX_USERS)
    broadcast: bool = False
    title: str = Field(min_length=1, max_length=256)
    body: str | None = Field(None, max_length=4096)
    priority: Literal["low", "medium", "high", "urgent"] = "medium"
    topic: Name | None = None
    data: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> PublishBody:
        targets = (self.user is not None) + (self.users is not None) + self.broadcast
        if targets != 1:
            raise ValueError('give exactly one target: "user", "users" or "broadcast": true')
        if self.users is not None and len(set(self.users)) != len(self.users):
            raise ValueError('"users" must not repeat an id')
        return self

    def drafts(self) -> list[NotificationDraft]:
        recipients: list[str | None] = (
            [None] if self.broadcast else [self.user] if self.user is not None else list(self.users or ())
        )
        return [NotificationDraft(user, self.title, self.body, self.priority, self.topic, self.data)
                for user in recipients]


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


class UpdatedResponse(BaseModel):
    updated: int


class TokenResponse(BaseModel):
    token: str
    user: str
    expires_at: str


class ErrorBody(BaseModel):
    error: str
    message: str


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: Any) -> M:
    """Validate decoded JSON against ``model``; a violation is a 422 naming the field."""
    if not isinstance(data, dict):
        raise ApiError.invalid("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ApiError.invalid(f"{where}: {message}" if where else message) from None
