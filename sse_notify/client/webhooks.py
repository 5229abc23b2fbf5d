"""Verifying the escalation webhooks the service sends, on the ``standardwebhooks`` package.

The service signs each webhook per Standard Webhooks (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``) with the ``whsec_...`` secret that
``sse-notify webhook-secret`` prints. :func:`verify_webhook` checks the signature and the
timestamp (within 5 minutes, the package's tolerance against replays) and returns the
decoded body. Anything that does not verify -- a missing or malformed header, a wrong
signature, an old timestamp, a body that is not JSON -- raises the one
:class:`WebhookVerificationError`, so a receiver needs a single ``except``.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping
from typing import Any

import standardwebhooks
from standardwebhooks.webhooks import EmptyWebhookSecretError

from .errors import WebhookVerificationError

__all__ = ["verify_webhook"]


def verify_webhook(payload: bytes | str, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """The verified webhook body, e.g. ``{"type": "notification.unread", "user": "alice",
    "notification": {...}}``. ``payload`` must be the raw request body, exactly as
    received (not re-encoded JSON); ``headers`` any mapping of the request's headers
    (Flask's ``request.headers``, Starlette's, a dict)."""
    try:
        webhook = standardwebhooks.Webhook(secret)
    except (ValueError, binascii.Error, EmptyWebhookSecretError) as exc:
        raise ValueError("the webhook secret is not a whsec_... secret from `sse-notify webhook-secret`") from exc
    try:
        body = webhook.verify(payload, {name: value for name, value in headers.items()})
    except standardwebhooks.WebhookVerificationError as exc:
        raise WebhookVerificationError(str(exc)) from exc
    except (ValueError, binascii.Error) as exc:  # a malformed signature header, a body not UTF-8 or JSON
        raise WebhookVerificationError(f"malformed webhook: {exc}") from exc
    if not isinstance(body, dict):
        raise WebhookVerificationError("the webhook body is not a JSON object")
    return body
