"""Building blocks of scenario 6 (hostile input): a tally of answers, a raw HTTP/1.1
request over a plain socket (for bytes no HTTP library will send), and hypothesis
strategies, including ones derived from the service's own ``/openapi.json``.

:class:`Tally` judges every answer the same way: never a 5xx; every non-2xx answer from
the application is the contract's JSON error body (an HTTP-level rejection by the server's
protocol layer, before the application, is counted apart); no answer ever carries the
server's secret or a file from outside ``static/``.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

__all__ = [
    "Answer", "Tally", "from_schema", "header_text", "json_values", "names", "raw_request",
    "run_examples", "safe_text",
]

#: Text that any HTTP library can put in a URL or a JSON document (no lone surrogates).
safe_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)
#: Text a header value can carry: latin-1, no control characters, no edge spaces.
header_text = st.text(alphabet=st.characters(codec="latin-1", exclude_categories=["Cc"]),
                      min_size=1, max_size=60).map(str.strip).filter(bool)
names = st.from_regex(r"[A-Za-z0-9._@:-]{1,20}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | safe_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(safe_text, inner, max_size=4),
    max_leaves=12,
)


def run_examples(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], *,
                 examples: int, seed_value: int) -> None:
    """Run ``check`` on ``examples`` values drawn from ``strategy`` (no shrinking: checks
    record into a tally instead of failing, so every example counts)."""
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(strategy)
    def run(case: Any) -> None:
        check(case)

    run()


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a JSON Schema of the kinds pydantic writes into ``/openapi.json``."""
    if "$ref" in schema:
        return from_schema(components[schema["$ref"].rsplit("/", 1)[1]], components)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, components) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True)
        low = schema.get("minLength", 0)
        return st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=low,
                       max_size=max(low, min(schema.get("maxLength", 40), 300)))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        low = schema.get("minItems", 0)
        return st.lists(from_schema(schema.get("items", {}), components), min_size=low,
                        max_size=max(low, min(schema.get("maxItems", 4), 4)))
    if kind == "object" and schema.get("properties"):
        props, required = schema["properties"], set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, components) for k, v in props.items() if k in required},
            optional={k: from_schema(v, components) for k, v in props.items() if k not in required})
    if kind == "object":
        return st.dictionaries(safe_text, json_values, max_size=4)
    return json_values


def encode_json(value: Any) -> bytes:
    """JSON text for any value hypothesis draws (big integers, nan and lone surrogates
    included: the standard encoder writes them, the server must refuse them)."""
    return json.dumps(value).encode()


# -- one raw request -----------------------------------------------------------------------------

@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str]
    body: bytes

    @property
    def protocol_rejection(self) -> bool:
        """Refused by the HTTP layer before the application (no body, connection closed)."""
        return (self.status in (400, 408, 413, 414, 431) and not self.body
                and "content-type" not in self.headers
                and self.headers.get("connection", "").lower() == "close")


def raw_request(port: int, data: bytes, *, timeout: float = 10.0, until: bytes | None = None) -> Answer:
    """Send ``data`` as is and read one answer (by Content-Length, else to the end of the
    chunked body or the close), for at most ``timeout`` seconds in all, or until the body
    holds ``until``: a stream answer is cut there."""
    deadline = time.monotonic() + timeout
    buf = b""

    def more() -> bytes:
        left = deadline - time.monotonic()
        if left <= 0:
            return b""
        sock.settimeout(left)
        try:
            return sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return b""

    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) before reading everything
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = more()
                if not chunk:
                    return Answer(None, {}, buf)
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 1"):
                break
            buf = body  # an interim answer (100 Continue): the real one follows
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        chunked = "chunked" in headers.get("transfer-encoding", "")
        while (len(body) < length or (chunked and not body.endswith(b"0\r\n\r\n"))) and not (
                until is not None and until in body):
            chunk = more()
            if not chunk:
                break
            body += chunk
    return Answer(int(lines[0].split()[1]), headers, body)


# -- judging answers ------------------------------------------------------------------------------

@dataclass
class Tally:
    """Every request tried and everything wrong with the answers."""

    leak_markers: tuple[bytes, ...]
    tried: int = 0
    protocol_rejections: int = 0
    server_errors: list[str] = field(default_factory=list)  # 5xx, WebSocket 1011
    not_json: list[str] = field(default_factory=list)  # a non-2xx answer without the error body
    unexpected: list[str] = field(default_factory=list)  # an answer the contract rules out
    leaks: list[str] = field(default_factory=list)

    def answer(self, what: str, status: int | None, headers: dict[str, str], body: bytes, *,
               head: bool = False, protocol_rejection: bool = False) -> None:
        self.tried += 1
        for marker in self.leak_markers:
            if marker in body:
                self.leaks.append(f"{what}: the answer contains {marker[:20]!r}")
        if status is None:
            self.unexpected.append(f"{what}: no answer")
            return
        if status >= 500:
            self.server_errors.append(f"{what} -> {status} {body[:200]!r}")
        elif protocol_rejection:
            self.protocol_rejections += 1
        elif status >= 300 and not head and not _is_error_body(headers, body):
            self.not_json.append(f"{what} -> {status} {headers.get('content-type')} {body[:80]!r}")

    def raw(self, what: str, answer: Answer, expect: Callable[[int], bool] | None = None) -> Answer:
        self.answer(what, answer.status, answer.headers, answer.body,
                    protocol_rejection=answer.protocol_rejection)
        if expect is not None and answer.status is not None and not expect(answer.status):
            self.unexpected.append(f"{what} -> {answer.status} {answer.body[:120]!r}")
        return answer

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.unexpected.append(what)

    @property
    def problems(self) -> list[str]:
        return self.server_errors + self.not_json + self.unexpected + self.leaks


def _is_error_body(headers: dict[str, str], body: bytes) -> bool:
    if not headers.get("content-type", "").startswith("application/json"):
        return False
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return (isinstance(doc, dict) and isinstance(doc.get("error"), str)
            and isinstance(doc.get("message"), str))
