"""Prometheus metrics, read from the service's own counters at scrape time.

The hot paths only bump plain integers (``hub.stats``); this collector turns them into the
contract's metric families when ``/metrics`` is scraped, so delivering an event never
touches a Prometheus lock.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .hub import Hub

__all__ = ["render_metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ServiceCollector(Collector):
    def __init__(self, hub: Hub, published: int):
        self.hub = hub
        self.published = published

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


def render_metrics(hub: Hub, published: int) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ServiceCollector(hub, published))
    return generate_latest(registry)
