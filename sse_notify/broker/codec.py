"""How network brokers put message batches on the wire: compact JSON (orjson), one array
of messages per payload, split so that no payload exceeds the broker's size limit.

A notification travels with the fields of :class:`~sse_notify.models.Notification`
(``created_at`` in epoch ms), a read change as ``{"user", "ids"}``, and an id range as
``{"first", "last"}``. A notification that alone would not fit becomes an id range, which
the follower reads back from the store; a read change that would not fit is split into
several for the same user (its ids are not in the log, so they must travel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..models import Notification, ReadChange
from . import IdRange, Message

__all__ = ["encode", "decode"]

_ID_BYTES = 21  # the longest id (19 digits), its comma and a margin


def encode(messages: Sequence[Message], limit: int | None = None) -> list[bytes]:
    """Payloads carrying ``messages`` in order, each at most ``limit`` bytes."""
    if limit is None:
        return [orjson.dumps(list(messages))]
    parts: list[bytes] = []
    for message in messages:
        part = orjson.dumps(message)
        if len(part) + 2 <= limit:
            parts.append(part)
        elif isinstance(message, Notification):
            parts.append(orjson.dumps(IdRange(message.id, message.id)))
        elif isinstance(message, ReadChange):
            step = max(1, (limit - 2 - len(orjson.dumps(ReadChange(message.user, ())))) // _ID_BYTES)
            parts += [orjson.dumps(ReadChange(message.user, message.ids[i:i + step]))
                      for i in range(0, len(message.ids), step)]
        else:  # an id range always fits any sane limit
            raise ValueError(f"broker payload limit {limit} is too small")
    payloads: list[bytes] = []
    chunk: list[bytes] = []
    size = 2
    for part in _merge_ranges(parts):
        if chunk and size + len(part) + 1 > limit:
            payloads.append(b"[" + b",".join(chunk) + b"]")
            chunk, size = [], 2
        chunk.append(part)
        size += len(part) + 1
    if chunk:
        payloads.append(b"[" + b",".join(chunk) + b"]")
    return payloads


def _merge_ranges(parts: list[bytes]) -> list[bytes]:
    """Adjacent id ranges (a batch of large notifications) become one."""
    if not any(p.startswith(b'{"first"') for p in parts):
        return parts
    merged: list[bytes] = []
    previous: IdRange | None = None
    for part in parts:
        if part.startswith(b'{"first"'):
            current = _message(orjson.loads(part))
            assert isinstance(current, IdRange)
            if previous is not None and previous.last + 1 == current.first:
                previous = IdRange(previous.first, current.last)
                merged[-1] = orjson.dumps(previous)
                continue
            previous = current
        else:
            previous = None
        merged.append(part)
    return merged


def _message(item: dict[str, Any]) -> Message:
    if "id" in item:
        return Notification(item["id"], item["user"], item["topic"], item["title"], item["body"],
                            item["priority"], item["data"], item["created_at"])
    if "ids" in item:
        return ReadChange(item["user"], tuple(item["ids"]))
    return IdRange(item["first"], item["last"])


def decode(payload: bytes | str) -> list[Message]:
    """The messages of one payload; ``ValueError`` if it is not one of ours."""
    try:
        items = orjson.loads(payload)
        if not isinstance(items, list):
            raise TypeError("not a list")
        return [_message(item) for item in items]
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise ValueError(f"not a broker payload: {exc}") from None
