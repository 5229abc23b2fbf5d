"""Signed webhook requests, the Standard Webhooks way (https://www.standardwebhooks.com).

Each request carries ``webhook-id`` (the same on every retry of one message, so a receiver
can drop repeats), ``webhook-timestamp`` (seconds, of this attempt) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``), made by the
``standardwebhooks`` package with the ``whsec_`` secret, so receivers verify with the same
package. Only a 2xx answer counts as received; anything else -- another status, a
redirect (not followed), a timeout, a refused connection -- is :class:`WebhookFailed`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import httpx
import orjson
from standardwebhooks import Webhook

__all__ = ["WebhookSender", "WebhookFailed"]


class WebhookFailed(Exception):
    """The receiver did not take the message (the reason, one line)."""


class WebhookSender:
    def __init__(self, url: str, secret: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self._signer = Webhook(secret)
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def send(self, msg_id: str, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload).decode()
        now = datetime.now(timezone.utc)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, now, body),
        }
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise WebhookFailed("no answer in time") from None
        except httpx.HTTPError as exc:
            raise WebhookFailed(f"{type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise WebhookFailed(f"answered {response.status_code}")

    async def close(self) -> None:
        await self._client.aclose()
