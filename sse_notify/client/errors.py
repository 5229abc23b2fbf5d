"""The SDK's exceptions: one class per kind of answer a caller handles differently.

Every error the service answers carries the contract's JSON body ``{"error", "message"}``;
the exception keeps both (``code``, ``message``) and the HTTP ``status``. An answer that is
not the service's JSON (a proxy's HTML 502, say) still maps by status, with the code
``http_<status>`` and the start of its text as the message. A request that never got an
answer, after its retries, is a :class:`NetworkError` (``status`` None), the httpx error
as its ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "InvalidRequest",
    "NetworkError",
    "NotFound",
    "RateLimited",
    "SSENotifyError",
    "Unauthorized",
    "Unavailable",
    "WebhookVerificationError",
]


class SSENotifyError(Exception):
    """Base of every error the SDK raises. ``status`` is None when no answer came."""

    def __init__(self, code: str, message: str, status: int | None = None):
        super().__init__(f"{status} {code}: {message}" if status is not None else f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class Unauthorized(SSENotifyError):
    """401: the publisher token is missing, wrongly signed, expired or of the wrong kind."""


class NotFound(SSENotifyError):
    """404: no such notification (or no such endpoint on this server)."""


class InvalidRequest(SSENotifyError):
    """The request itself was refused and repeating it cannot help: 422 (schema: a bad
    user id, more than one target, ...), 400 (not JSON) or 413 (body over the limit)."""


class RateLimited(SSENotifyError):
    """429: the publisher's rate (``serve --publish-rate``) is spent. ``retry_after`` is the
    server's ``Retry-After`` in seconds, None when waiting cannot help (more at once
    than the burst allows)."""

    def __init__(self, code: str, message: str, status: int | None = 429, retry_after: float | None = None):
        super().__init__(code, message, status)
        self.retry_after = retry_after


class Unavailable(SSENotifyError):
    """502, 503 or 504, still so after the retries: storage or the server is unavailable."""


class NetworkError(SSENotifyError):
    """No answer after the retries: connection refused or dropped, or a timeout. A publish
    that ends here may or may not have been stored; repeating it with the same
    ``idempotency_key`` stores it at most once."""

    def __init__(self, message: str):
        super().__init__("network_error", message, None)


class WebhookVerificationError(SSENotifyError):
    """A webhook whose signature, timestamp or headers do not verify: do not act on it."""

    def __init__(self, message: str):
        super().__init__("invalid_webhook", message, None)
