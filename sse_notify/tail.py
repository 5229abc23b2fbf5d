"""``sse-notify tail``: follow one user's stream from a terminal, for debugging.

Reads ``GET /events`` with httpx and httpx-sse and prints, one readable block each, the
``hello`` (replay mode, newest id, unread count), every notification (id, time, priority,
topic, title, body, data; marked ``replayed`` when it came from storage rather than live),
``read`` events and ``token-expiring``. Lines starting ``--`` are the tool's own (connected,
lost, reconnecting).

Deliberate decisions:

- It reconnects by itself, as a browser's EventSource does: after the server's ``retry``
  interval (or a 429/503's ``Retry-After``), doubling it (at most :data:`MAX_DELAY`) for
  each further connect in a row that fails, always with ``Last-Event-ID``. Until the first notification the
  cursor is ``hello.newest_id``: everything committed after ``hello`` is on the stream,
  so a reconnect from there misses nothing and repeats nothing.
- The token is asked for anew at each connect (:class:`Tail` takes a callable): minted
  from the secret, it never runs out; a token given on the command line is used until the
  server refuses it, which ends the tool (exit 1) as any 4xx refusal does -- retrying
  cannot fix those. 429 and 5xx are retried.
- A read timeout (:data:`READ_TIMEOUT`, longer than any sensible ``--heartbeat``) counts
  as a lost connection, so a silently dead network is noticed.
- The token travels in the ``Authorization`` header, never in the URL, and is never printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
import httpx
import orjson
from httpx_sse import SSEError, connect_sse

from .client._core import RETRY_ERRORS, retry_after

__all__ = ["MAX_DELAY", "READ_TIMEOUT", "Refused", "Tail"]

READ_TIMEOUT = 60.0
MAX_DELAY = 30.0
DEFAULT_RETRY_MS = 3000  # the SSE default, until the server's retry field arrives


class Refused(Exception):
    """The server refused the stream in a way retrying cannot fix (a 4xx other than 429)."""


class _Lost(Exception):
    """The connection could not be made or ended; ``after``: a wait the server asked for."""

    def __init__(self, reason: str, after: float | None = None):
        super().__init__(reason)
        self.after = after


@dataclass
class Tail:
    """Follows the stream of the user whose token ``token()`` returns, on ``url``."""

    url: str
    token: Callable[[], str]
    cursor: int | None = None  # Last-Event-ID of the next connect
    topics: str | None = None
    refreshable: bool = True  # whether token() gives a fresh token (minted) or always the same
    echo: Callable[[str], None] = click.echo
    retry_ms: int = DEFAULT_RETRY_MS
    _newest_at_hello: int = field(default=0, init=False)
    _connected: bool = field(default=False, init=False)
    _sent_cursor: int | None = field(default=None, init=False)

    def run(self) -> None:
        """Follow until interrupted (KeyboardInterrupt) or refused (:class:`Refused`)."""
        start = f" from id {self.cursor}" if self.cursor is not None else ""
        self.echo(self._note(f"following {self.url}/events{start} (Ctrl-C to stop)"))
        failed = 0  # connects in a row that failed
        was_connected = False
        with httpx.Client(timeout=httpx.Timeout(10.0, read=READ_TIMEOUT)) as http:
            while True:
                self._connected = False
                try:
                    self._follow(http, reconnect=was_connected)
                    reason, after = "the server ended the stream", None
                except _Lost as lost:
                    reason, after = str(lost), lost.after
                was_connected |= self._connected
                failed = 0 if self._connected else failed + 1
                delay = after if after is not None else self._backoff(failed)
                cursor = f"Last-Event-ID {self.cursor}" if self.cursor is not None else "no cursor"
                what = "connection lost" if self._connected else "cannot follow"
                self.echo(self._note(f"{what} ({reason}); reconnecting with {cursor} in {delay:g} s"))
                time.sleep(delay)

    def _backoff(self, failed: int) -> float:
        """The server's retry interval, doubled for each connect after the first that failed."""
        return min(MAX_DELAY, self.retry_ms / 1000 * 2 ** max(0, failed - 1))

    def _follow(self, http: httpx.Client, *, reconnect: bool) -> None:
        headers = {"Authorization": f"Bearer {self.token()}"}
        self._sent_cursor = self.cursor
        if self.cursor is not None:
            headers["Last-Event-ID"] = str(self.cursor)
        params = {"topics": self.topics} if self.topics is not None else None
        try:
            with connect_sse(http, "GET", f"{self.url}/events", headers=headers, params=params) as source:
                response = source.response
                if response.status_code != 200:
                    self._refusal(response)
                self._connected = True
                if reconnect:
                    self.echo(self._note("reconnected"))
                for event in source.iter_sse():
                    if event.retry is not None:
                        self.retry_ms = event.retry
                    if event.event != "message" or event.data:
                        self._show(event.event, event.data)
        except RETRY_ERRORS as exc:
            raise _Lost(_describe(exc)) from None
        except httpx.TransportError as exc:  # not the network: a URL httpx cannot use, say
            raise Refused(f"cannot request {self.url}/events: {exc}") from None
        except SSEError as exc:  # not an event stream: this is not sse-notify's /events
            raise Refused(str(exc)) from None

    def _refusal(self, response: httpx.Response) -> None:
        response.read()
        try:
            body = orjson.loads(response.content)
            what = f"{response.status_code} {body['error']}: {body['message']}"
        except (ValueError, KeyError, TypeError):
            what = f"{response.status_code} {response.reason_phrase}"
        if response.status_code == 429 or response.status_code >= 500:
            raise _Lost(what, retry_after(response.headers))
        if response.status_code == 401:
            what += (" (is --data-dir, or SSE_NOTIFY_SECRET, the server's?)" if self.refreshable
                     else " (the --token is not valid, or no longer)")
        raise Refused(f"the server refused the stream: {what}")

    # -- printing -------------------------------------------------------------------

    def _show(self, kind: str, data: str) -> None:
        try:
            payload: Any = orjson.loads(data)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):  # not what the contract sends: shown as it came
            self.echo(f"{kind}  {data}")
            return
        if kind == "hello":
            self._newest_at_hello = payload.get("newest_id", 0)
            if self.cursor is None:
                self.cursor = self._newest_at_hello
            replay = payload.get("replay")
            if replay != "live" and self._sent_cursor is not None:
                replay = f"{replay} (after id {self._sent_cursor})"
            self.echo(click.style("hello", bold=True) + f"  user {payload.get('user')}, replay {replay}, "
                      f"newest id {payload.get('newest_id')}, unread {payload.get('unread')}")
        elif kind == "notification":
            self.cursor = payload["id"]
            self.echo(self.notification(payload, replayed=payload["id"] <= self._newest_at_hello))
        elif kind == "read":
            self.echo(click.style("read", bold=True) + "  " + ", ".join(f"#{i}" for i in payload.get("ids", [])))
        elif kind == "token-expiring":
            then = ("a fresh one is minted at the reconnect" if self.refreshable
                    else "the stream ends then; give a new --token")
            self.echo(click.style("token-expiring", fg="yellow", bold=True) +
                      f"  at {payload.get('expires_at')}: {then}")
        else:
            self.echo(f"{kind}  {data}")

    @staticmethod
    def notification(n: dict[str, Any], *, replayed: bool = False) -> str:
        """A notification as printed: a head line, then body and data indented."""
        head = [click.style(f"#{n['id']}", bold=True), n.get("created_at") or "",
                _PRIORITY_STYLE.get(n.get("priority") or "", str)(n.get("priority") or "")]
        if n.get("topic") is not None:
            head.append(f"[{n['topic']}]")
        if n.get("user") is None:
            head.append("(broadcast)")
        if replayed:
            head.append("(replayed)")
        lines = ["  ".join(head) + "  " + click.style(n.get("title") or "", bold=True)]
        if n.get("body") is not None:
            lines += [f"    {line}" for line in str(n["body"]).splitlines() or [""]]
        if n.get("data") is not None:
            lines.append("    data " + orjson.dumps(n["data"]).decode())
        return "\n".join(lines)

    @staticmethod
    def _note(text: str) -> str:
        return click.style(f"-- {text}", dim=True)


_PRIORITY_STYLE: dict[str, Callable[[str], str]] = {
    "high": lambda s: click.style(s, fg="yellow"),
    "urgent": lambda s: click.style(s, fg="red", bold=True),
}


def _describe(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    if isinstance(exc, httpx.ReadTimeout):
        return f"nothing received for {READ_TIMEOUT:g} s"
    return str(exc) or type(exc).__name__
