"""Prometheus metrics, read from the service's own counters at scrape time.

The hot paths only bump plain integers (``hub.stats``, the follower's counters); this
collector turns them into the contract's metric families when ``/metrics`` is scraped, so
delivering an event never touches a Prometheus lock.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .hub import Hub

if TYPE_CHECKING:  # only their counters are read
    from .escalation import Escalator
    from .follower import Follower

__all__ = ["render_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServiceCollector(Collector):
    def __init__(self, hub: Hub, published: int, follower: Follower | None, escalator: Escalator | None):
        self.hub = hub
        self.published = published
        self.follower = follower
        self.escalator = escalator

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        streams = GaugeMetricFamily("sse_notify_open_streams", "Open streams.", labels=["transport"])
        for transport in ("sse", "ws"):
            streams.add_metric([transport], hub.count(transport))
        yield streams
        yield GaugeMetricFamily("sse_notify_connected_users", "Users with an open stream.",
                                value=hub.user_count())
        yield CounterMetricFamily("sse_notify_notifications_published",
                                  "Notifications stored.", value=self.published)
        yield CounterMetricFamily("sse_notify_events_delivered",
                                  "Live events delivered, summed over streams.",
                                  value=hub.stats.delivered)
        yield CounterMetricFamily("sse_notify_events_replayed",
                                  "Stored events replayed to reconnecting streams.",
                                  value=hub.stats.replayed)
        yield CounterMetricFamily("sse_notify_slow_consumer_disconnects",
                                  "Streams closed because they fell behind their buffer.",
                                  value=hub.stats.slow_disconnects)
        follower = self.follower
        if follower is not None:
            yield GaugeMetricFamily("sse_notify_follower_lag",
                                    "The store's newest id minus the last id delivered here, "
                                    "as of the follower's last check.", value=follower.lag)
            yield CounterMetricFamily("sse_notify_follower_catchup_reads",
                                      "Store reads to fill a gap the broker left or catch up.",
                                      value=follower.catchup_reads)
            yield CounterMetricFamily("sse_notify_follower_caught_up",
                                      "Notifications delivered from the store rather than the broker.",
                                      value=follower.caught_up)
            yield CounterMetricFamily("sse_notify_broker_reconnects",
                                      "Times the broker reconnected, each followed by a catch-up.",
                                      value=follower.resyncs)


        escalator = self.escalator
        if escalator is not None:
            yield CounterMetricFamily("sse_notify_webhooks_sent", "Escalation webhooks a receiver took (2xx).",
                                      value=escalator.sent)
            yield CounterMetricFamily("sse_notify_webhook_failures",
                                      "Escalation webhook attempts that failed (not 2xx, timeout, refused).",
                                      value=escalator.failed)
            yield CounterMetricFamily("sse_notify_webhooks_given_up",
                                      "Escalation webhooks dropped after 24 h of failed attempts.",
                                      value=escalator.given_up)
            yield CounterMetricFamily("sse_notify_escalations_moot",
                                      "Escalations not sent: read (or delivered) in time.", value=escalator.moot)
            yield GaugeMetricFamily("sse_notify_escalations_pending",
                                    "Escalations scheduled or being retried, whole deployment, as of the last poll.",
                                    value=escalator.pending)


def render_metrics(hub: Hub, published: int, follower: Follower | None = None,
                   escalator: Escalator | None = None) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(hub, published, follower, escalator))
    return generate_latest(registry)
