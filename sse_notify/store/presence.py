"""The PresenceStore protocol: where every node of a deployment keeps how many streams each
user has open on it, so that any node can answer for all of them.

Three tables, in the store's PostgreSQL database (its migrations create them) or in a
SQLite file beside the store's (see ``sqlite_presence.py`` for why):

* ``presence_nodes (node, beat_at)``: one row per running node (``sse-notify serve``
  process) and its last heartbeat, epoch ms.
* ``presence (user, node, streams)``: a user's open streams on one node; no row: none.
* ``presence_last_seen (user, at)``: the newest time a node saw the user's last stream
  there close.

A node counts only while its heartbeat is younger than the reader's ``ttl``: a node that
died without a word (SIGKILL, power loss) stops counting that long after its last beat,
and its users' ``last_seen`` is then that beat. :meth:`PresenceStore.expire` folds such
nodes into ``presence_last_seen`` and removes their rows; a node that was only cut off
and comes back finds itself unknown (:meth:`PresenceStore.beat` answers False) and sends
all of its counts again.

Clocks: SQLite (processes of one machine) uses the machine's; PostgreSQL uses the
database server's, so nodes with skewed clocks still agree on who is alive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from . import Store

__all__ = ["PresenceStore", "UserPresence", "combine", "open_presence_store"]


@dataclass(frozen=True, slots=True)
class UserPresence:
    streams: int  # open streams on nodes alive now
    last_seen: int | None  # epoch ms when the last one closed; None while online or never seen


@runtime_checkable
class PresenceStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def beat(self, node: str, changes: Mapping[str, int]) -> bool:
        """In one transaction: ``node`` is alive now, and has ``changes[user]`` streams of
        each user named (0: none any more, and the user was seen now). False when ``node``
        was not known (its first beat, or it was expired while it could not beat): the
        caller then sends all of its counts at its next beat."""
        ...

    async def leave(self, node: str) -> None:
        """A clean shutdown: ``node``'s users were seen now, and its rows go."""
        ...

    async def expire(self, ttl_ms: int) -> None:
        """Fold the nodes silent for ``ttl_ms`` into ``last_seen`` (their last beat) and
        remove their rows. Readers ignore such nodes anyway: this only keeps tables small."""
        ...

    async def lookup(self, users: Sequence[str], ttl_ms: int) -> dict[str, UserPresence]:
        """Each of ``users`` (distinct), counting the nodes that beat within ``ttl_ms``."""
        ...


def open_presence_store(store: Store) -> PresenceStore:
    """The presence tables of ``store``'s database, reached the way that backend wants."""
    from .sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        from .sqlite_presence import SQLitePresence

        return SQLitePresence(store.path)
    from .postgres import PostgresStore

    if isinstance(store, PostgresStore):
        from .pg_presence import PostgresPresence

        return PostgresPresence(store)
    raise TypeError(f"no presence tables for a {type(store).__name__}")


def combine(users: Sequence[str], counted: Iterable[Sequence[Any]],
            seen: Iterable[Sequence[Any]]) -> dict[str, UserPresence]:
    """The answer to :meth:`PresenceStore.lookup` from its two queries' rows, which both
    backends shape alike: ``counted`` is ``(user, streams on live nodes, newest beat of a
    silent node holding the user)``, ``seen`` is ``(user, last_seen)``."""
    last_seen: dict[str, int] = {user: at for user, at in seen}
    answer: dict[str, UserPresence] = {}
    for user, streams, silent_beat in counted:
        if streams:
            answer[user] = UserPresence(streams, None)
        elif silent_beat is not None:  # a node died holding the user: seen at its last beat
            last_seen[user] = max(last_seen.get(user, 0), silent_beat)
    for user in users:
        if user not in answer:
            answer[user] = UserPresence(0, last_seen.get(user))
    return answer
