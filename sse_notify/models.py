"""The data the service moves around: notifications, read-state changes, names.

Kept free of any web or storage framework so every layer can share it. Timestamps are
integer milliseconds since the epoch internally and rendered once, at the edge, as
ISO-8601 with milliseconds and ``Z``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

__all__ = [
    "MAX_ID",
    "NAME_RE",
    "PRIORITIES",
    "Notification",
    "NotificationDraft",
    "Escalate",
    "Priority",
    "ReadChange",
    "iso_ms",
    "now_ms",
    "valid_name",
]

#: The largest notification id (SQLite's integer range); larger ones can never exist.
MAX_ID = 2**63 - 1

#: User ids, publisher names and topics.
NAME_RE = re.compile(r"[A-Za-z0-9._@:-]{1,128}")

Priority = Literal["low", "medium", "high", "urgent"]
PRIORITIES: tuple[str, ...] = ("low", "medium", "high", "urgent")


def valid_name(value: object) -> bool:
    return isinstance(value, str) and NAME_RE.fullmatch(value) is not None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00.")
_last_ms: tuple[int, str] = (0, "1970-01-01T00:00:00.000Z")


def iso_ms(ms: int) -> str:
    """``1764064800123`` -> ``"2025-11-25T10:00:00.123Z"``.

    Every notification on a stream and in an answer carries one, and the notifications
    of a commit share their millisecond: the last millisecond's text is kept, and the
    text up to the second for the last second rendered (``strftime`` was a tenth of a
    bulk publish's CPU time, the millisecond's formatting about 2,000 instructions)."""
    global _last_second, _last_ms
    last_ms = _last_ms
    if last_ms[0] == ms:
        return last_ms[1]
    second, fraction = divmod(ms, 1000)
    last = _last_second
    if last[0] != second:
        last = _last_second = (second, datetime.fromtimestamp(second, tz=timezone.utc)
                               .strftime("%Y-%m-%dT%H:%M:%S."))
    text = f"{last[1]}{fraction:03d}Z"
    _last_ms = (ms, text)
    return text


@dataclass(frozen=True, slots=True)
class Escalate:
    """Call the webhook ``after`` seconds past the commit unless the target user has by
    then ``"read"`` the notification (or had it ``"delivered"``)."""

    after: int
    unless: Literal["read", "delivered"]


# NotificationDraft and Notification are made once per notification published, so they
# are not ``frozen``: a frozen dataclass sets each field through object.__setattr__,
# which made its construction four times as slow. They are values all the same: nothing
# changes one after it is made (nor can hash one: ``data`` is a dict).


@dataclass(slots=True)
class NotificationDraft:
    """What a publisher asked to store for one recipient (``user=None``: broadcast)."""

    user: str | None
    title: str
    body: str | None = None
    priority: str = "medium"
    topic: str | None = None
    data: dict[str, Any] | None = None
    escalate: Escalate | None = None  # only for a user's notification, never a broadcast


@dataclass(slots=True)
class Notification:
    """A committed notification; ``id`` is its place in the global commit order."""

    id: int
    user: str | None
    topic: str | None
    title: str
    body: str | None
    priority: str
    data: dict[str, Any] | None
    created_at: int  # epoch milliseconds

    def to_dict(self, read: bool = False) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "topic": self.topic,
            "title": self.title,
            "body": self.body,
            "priority": self.priority,
            "data": self.data,
            "created_at": iso_ms(self.created_at),
            "read": read,
        }


@dataclass(frozen=True, slots=True)
class ReadChange:
    """The ids whose read state changed for one user (sent as the ``read`` event)."""

    user: str
    ids: tuple[int, ...]
