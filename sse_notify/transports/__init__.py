"""The two streaming transports, as lean ASGI endpoints in front of the Quart app.

They are plain ASGI rather than Quart views because a stream lives for hours: every byte
and task kept per connection counts, and the transports need direct control over when
headers are flushed and how a stream ends. Both share :class:`~sse_notify.feed.Feed`.
"""

from .sse import SSEEndpoint
from .ws import WebSocketEndpoint

__all__ = ["SSEEndpoint", "WebSocketEndpoint"]
