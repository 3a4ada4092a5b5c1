"""Prometheus metrics for the outbox and its sender (bounded label sets only)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from watcher_common.outbox import Outbox

SENT_STATUSES = ("stored", "duplicate", "rejected", "retry")
FAILURE_REASONS = ("network", "http_5xx", "http_429", "http_503", "http_4xx", "auth")


class OutboxCollector(Collector):
    """Reads the outbox's counters at scrape time, so the gauges are never stale."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    def collect(self) -> Iterator[Metric]:
        s = self._outbox.stats()
        yield GaugeMetricFamily("watcher_outbox_events", "Events queued in the outbox", s.events)
        yield GaugeMetricFamily(
            "watcher_outbox_bytes", "Bytes queued in the outbox (events + blobs)", s.bytes
        )
        yield GaugeMetricFamily(
            "watcher_outbox_oldest_age_seconds",
            "Age of the oldest queued event (0 when empty)",
            s.oldest_age_s,
        )
        yield GaugeMetricFamily(
            "watcher_outbox_dead_events", "Permanently rejected events kept for inspection", s.dead
        )


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sent = Counter(
            "watcher_outbox_sent",
            "Events answered by the backend, by result status",
            ["status"],
            registry=registry,
        )
        self.failures = Counter(
            "watcher_outbox_send_failures",
            "Failed ingest/blob requests, by reason",
            ["reason"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "watcher_outbox_batch_seconds",
            "Time to send one batch (blob uploads + ingest request)",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        # Pre-create every label so dashboards see zeros instead of missing series.
        for status in SENT_STATUSES:
            self.sent.labels(status=status)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)


def register_outbox_metrics(
    outbox: Outbox, registry: CollectorRegistry | None = None
) -> SenderMetrics:
    reg = REGISTRY if registry is None else registry
    reg.register(OutboxCollector(outbox))
    return SenderMetrics(reg)
