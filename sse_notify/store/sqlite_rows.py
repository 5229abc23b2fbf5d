"""Many rows per SQLite statement, for the store's hot inserts (notifications, receipts).

``executemany`` runs its statement once per row, and each run pays for itself: binding,
a step, a reset, the statement's end (``sqlite3VdbeHalt``), the GIL released and taken
back around each. A multi-row ``INSERT ... VALUES (...),(...),...`` pays that once for
all its rows: profiled, about 3,000 instructions less per row.

Rows are passed flat (one list of every row's parameters in turn). A batch of ``n`` rows
is split into statements of :data:`SIZES` rows (the binary digits of ``n``, the largest
size repeated), so each table has a handful of statement texts for the ``sqlite3``
module's statement cache (128 per connection) and a bulk publish of 100 takes three
statements (64 + 32 + 4), each one round trip to aiosqlite's thread.

``None`` is never bound: the ``sqlite3`` module sends every bound ``None`` through its
adapter protocol (a registry lookup and two failed attribute lookups, one formatting an
``AttributeError`` it then discards: about 3,300 instructions each), where an integer is
bound directly. So a nullable text column is bound as the integer :data:`NULL` and
written through ``NULLIF(?,0)``: a bound integer 0 is never equal to a bound text (SQLite
compares values without affinity by storage class), so no text, ``"0"`` and ``""``
included, is ever turned into NULL.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import aiosqlite

__all__ = ["NULL", "SIZES", "insert_rows"]

#: What a nullable text column is bound as for NULL (see the module's notes).
NULL = 0
#: Rows per statement, largest first; the largest is repeated (``executemany``).
SIZES = (256, 128, 64, 32, 16, 8, 4, 2, 1)


@lru_cache(maxsize=64)
def _statement(head: str, row: str, size: int, tail: str) -> str:
    return f"{head} VALUES {','.join([row] * size)}{tail}"


async def insert_rows(db: aiosqlite.Connection, head: str, row: str, params: list[Any],
                      tail: str = "") -> None:
    """Run ``{head} VALUES {row},{row},...{tail}`` over the flat ``params``, each ``row``
    taking ``row.count("?")`` of them, in order."""
    width = row.count("?")
    left = len(params) // width
    assert left * width == len(params), "params must hold whole rows"
    start = 0
    top = SIZES[0]
    if left >= top:
        step = top * width
        chunks = left // top
        end = chunks * step
        await db.executemany(_statement(head, row, top, tail),
                             [params[i:i + step] for i in range(0, end, step)])
        start, left = end, left - chunks * top
    for size in SIZES[1:]:
        if left >= size:
            end = start + size * width
            await db.execute(_statement(head, row, size, tail), params[start:end])
            start, left = end, left - size
