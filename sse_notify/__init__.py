"""sse-notify: self-hosted real-time notifications over Server-Sent Events and WebSocket.

``create_app`` is imported on first use: a backend that only needs ``TokenSigner`` or the
SDK (``sse_notify.client``) does not pay for loading Quart.
"""

from importlib.metadata import version
from typing import Any

from .config import Settings
from .tokens import TokenSigner

__all__ = ["create_app", "Settings", "TokenSigner", "__version__"]
__version__ = version("sse-notify")


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
