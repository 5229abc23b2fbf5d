"""The Python SDK of sse-notify: publish, mint tokens, ask presence and receipts, verify
webhooks.

``Client`` (blocking) and ``AsyncClient`` (asyncio) have the same methods; both retry
connection errors, timeouts, 429 (after its ``Retry-After``), 502, 503 and 504, and send
every publish with one ``Idempotency-Key`` across its retries, so a retry never stores a
notification twice. Error answers raise :class:`SSENotifyError` subclasses carrying the
service's JSON error (``code``, ``message``, ``status``)::

    from sse_notify.client import Client

    with Client("http://127.0.0.1:8000", publisher_token) as notify:
        [id_] = notify.publish(user="alice", title="New message", data={"thread": 7})
"""

from ._async import AsyncClient
from ._core import NotificationStatus, Presence, Receipt, TokenInfo
from ._sync import Client
from .errors import (InvalidRequest, NetworkError, NotFound, RateLimited, SSENotifyError, Unauthorized,
                     Unavailable, WebhookVerificationError)
from .webhooks import verify_webhook

__all__ = [
    "AsyncClient",
    "Client",
    "InvalidRequest",
    "NetworkError",
    "NotFound",
    "NotificationStatus",
    "Presence",
    "RateLimited",
    "Receipt",
    "SSENotifyError",
    "TokenInfo",
    "Unauthorized",
    "Unavailable",
    "WebhookVerificationError",
    "verify_webhook",
]
