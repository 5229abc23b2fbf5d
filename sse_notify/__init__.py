"""sse-notify: self-hosted real-time notifications over Server-Sent Events and WebSocket."""

from importlib.metadata import version

from .app import create_app
from .config import Settings
from .tokens import TokenSigner

__all__ = ["create_app", "Settings", "TokenSigner", "__version__"]
__version__ = version("sse-notify")
