"""The hot endpoints, as lean ASGI handlers in front of the Quart app: the two streaming
transports and publishing.

They are plain ASGI rather than Quart views because they are where the load is. A stream
lives for hours, so every byte and task kept per connection counts, and the transports
need direct control over when headers are flushed and how a stream ends; both share
:class:`~sse_notify.feed.Feed`. A publish is the most frequent request, and Quart's
per-request machinery cost more than the publish itself.
"""

from .publish import PublishEndpoint
from .sse import SSEEndpoint
from .ws import WebSocketEndpoint

__all__ = ["PublishEndpoint", "SSEEndpoint", "WebSocketEndpoint"]
