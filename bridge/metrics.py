"""Prometheus metrics of one bridge process, in a registry of its own.

The pipeline calls these methods per event (~10k/s), so labelled children are looked up once and
cached, the in-flight gauge is read only when scraped, and the last-seen time per worker lives in
a plain dict exported by a collector at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bridge.codec import EventRecord

NAMESPACE = "celery_kafka_bridge"
MAX_LABELS = 100
"""Distinct event types (or reasons) kept as labels; further ones (custom events gone wild)
count as "other"."""
WORKER_TTL_SECONDS = 3600.0
"""A worker not seen for this long is dropped from the per-worker metric."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_AGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_TASK_EVENT_PREFIX = "task-"
_HEARTBEATS = frozenset({"worker-online", "worker-heartbeat"})


class Metrics:
    """Counters, gauges and histograms the pipeline, health checks and watchdog update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        metric: dict[str, Any] = {"namespace": NAMESPACE, "registry": self.registry}
        self._consumed = Counter(
            "events_consumed", "Events decoded from AMQP messages.", ["event_type"], **metric
        )
        self._published = Counter(
            "events_published", "Events Kafka confirmed (acks=all).", ["event_type"], **metric
        )
        self._messages = Counter("amqp_messages_consumed", "AMQP messages received.", **metric)
        self._acked = Counter("amqp_messages_acked", "AMQP messages acked.", **metric)
        self._redelivered = Counter(
            "amqp_messages_redelivered", "AMQP messages received flagged redelivered.", **metric
        )
        self._dead = Counter(
            "dead_letters",
            "Records Kafka confirmed on the dead-letter topic.",
            ["reason"],
            **metric,
        )
        self._retries = Counter(
            "kafka_send_retries", "Kafka sends that failed and were retried.", **metric
        )
        self._latency = Histogram(
            "publish_latency_seconds",
            "From AMQP receipt to Kafka acknowledgement, per event.",
            buckets=_LATENCY_BUCKETS,
            **metric,
        )
        self._age = Histogram(
            "event_age_seconds",
            "From the worker's event timestamp to Kafka acknowledgement (includes clock skew).",
            buckets=_AGE_BUCKETS,
            **metric,
        )
        self.in_flight = Gauge(
            "in_flight_messages", "AMQP messages taken but not yet confirmed by Kafka.", **metric
        )
        self.queue_messages = Gauge(
            "queue_messages", "Ready messages in the bridge queue (polled).", **metric
        )
        self.queue_consumers = Gauge(
            "queue_consumers", "Consumers of the bridge queue (polled).", **metric
        )
        self.connection_up = Gauge(
            "connection_up",
            "1 while the side is connected: amqp consuming, kafka answering.",
            ["side"],
            **metric,
        )
        self.ready = Gauge("ready", "1 while /readyz reports ready.", **metric)
        self.silent_workers = Gauge(
            "silent_workers",
            "Workers whose heartbeats show work while they send no task events (no -E).",
            **metric,
        )
        self.last_seen: dict[str, float] = {}
        """Wall-clock time of the last event per worker hostname."""
        self.last_task_event: dict[str, float] = {}
        """Wall-clock time of the last task-* event per worker hostname."""
        self.heartbeats: dict[str, tuple[float, bytes]] = {}
        """The latest worker-online/heartbeat per hostname (received at, body), parsed only by
        the watchdog."""
        self.registry.register(_LastSeenCollector(self.last_seen))
        self._consumed_by_type: dict[str, Any] = {}
        self._published_by_type: dict[str, Any] = {}
        self._dead_by_reason: dict[str, Any] = {}

    def watch_in_flight(self, read: Callable[[], int]) -> None:
        """Read the in-flight count when scraped instead of on every change."""
        self.in_flight.set_function(read)

    def message(self, redelivered: bool) -> None:
        self._messages.inc()
        if redelivered:
            self._redelivered.inc()

    def consumed(self, record: EventRecord, received_at: float) -> None:
        _child(self._consumed, self._consumed_by_type, record.event_type).inc()
        hostname = record.hostname
        if hostname is not None:
            self.last_seen[hostname] = received_at
            if record.event_type in _HEARTBEATS:
                self.heartbeats[hostname] = (received_at, record.value)
            elif record.event_type.startswith(_TASK_EVENT_PREFIX):
                self.last_task_event[hostname] = received_at

    def published(self, record: EventRecord, received_at: float) -> None:
        now = time.time()
        _child(self._published, self._published_by_type, record.event_type).inc()
        self._latency.observe(now - received_at)
        if record.timestamp is not None:
            self._age.observe(max(0.0, now - record.timestamp))

    def dead_lettered(self, reason: str) -> None:
        _child(self._dead, self._dead_by_reason, reason).inc()

    def acked(self, count: int) -> None:
        self._acked.inc(count)

    def retried_send(self) -> None:
        self._retries.inc()

    def forget_workers(self, now: float) -> None:
        """Drop workers not seen for `WORKER_TTL_SECONDS` (autoscaled hosts come and go)."""
        for hostname, seen in list(self.last_seen.items()):
            if now - seen > WORKER_TTL_SECONDS:
                del self.last_seen[hostname]
                self.heartbeats.pop(hostname, None)
                self.last_task_event.pop(hostname, None)


def _child(metric: Any, cache: dict[str, Any], label: str) -> Any:
    child = cache.get(label)
    if child is None:
        if len(cache) >= MAX_LABELS:
            return metric.labels("other")
        child = cache[label] = metric.labels(label)
    return child


class _LastSeenCollector(Collector):
    def __init__(self, last_seen: dict[str, float]) -> None:
        self._last_seen = last_seen

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_worker_last_event_timestamp_seconds",
            "Wall-clock time the bridge last received an event from the worker.",
            labels=["hostname"],
        )
        for hostname, seen in list(self._last_seen.items()):
            family.add_metric([hostname], seen)
        yield family
