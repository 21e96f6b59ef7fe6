"""Prometheus metrics of one bridge process, in a registry of its own.

The pipeline calls these methods per event (tens of thousands a second), so the per-event
counters and histograms are plain numbers, updated without locks by the event loop thread (the
only writer, which also serves the scrapes) and exported by a collector at scrape time, as are
the last-seen times per worker (`workers.WorkerActivity`). The in-flight gauge is read only when
scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from celery_kafka_bridge.codec import EventRecord
from celery_kafka_bridge.kafka.errors import Kind
from celery_kafka_bridge.shaper import Shaper
from celery_kafka_bridge.workers import WorkerActivity

NAMESPACE = "celery_kafka_bridge"
MAX_LABELS = 100
"""Distinct event types (or reasons) kept as labels; further ones (custom events gone wild)
count as "other"."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_AGE_BUCKETS = (
    *(0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025),  # the 25 ms target
    *(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)


class Metrics:
    """Counters, gauges and histograms the pipeline, health checks and watchdog update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_resident_memory_bytes and friends, read from /proc at scrape time: the
        # memory alert compares RSS with the container's limit.
        ProcessCollector(registry=self.registry)
        metric: dict[str, Any] = {"namespace": NAMESPACE, "registry": self.registry}
        self._consumed = _Counter(
            "events_consumed", "Events decoded from AMQP messages.", "event_type"
        )
        self._published = _Counter(
            "events_published", "Events Kafka confirmed (acks=all).", "event_type"
        )
        self._messages = _Counter("amqp_messages_consumed", "AMQP messages received.")
        self._latency = _Histogram(
            "publish_latency_seconds",
            "From AMQP receipt to Kafka acknowledgement, per event.",
            _LATENCY_BUCKETS,
        )
        self._age = _Histogram(
            "event_age_seconds",
            "From the worker's event timestamp to Kafka acknowledgement (includes clock skew).",
            _AGE_BUCKETS,
        )
        self._acked = Counter("amqp_messages_acked", "AMQP messages acked.", **metric)
        self._redelivered = Counter(
            "amqp_messages_redelivered", "AMQP messages received flagged redelivered.", **metric
        )
        self._dead = _Counter(
            "dead_letters", "Records Kafka confirmed on the dead-letter topic.", "reason"
        )
        self._retries = Counter(
            "kafka_send_retries",
            "Records of batches Kafka did not take, once per attempt (each is sent again), by "
            "kind of error: transient, denied (not authorized), state (producer replaced), "
            "record (a refused record nobody could dead-letter).",
            ["kind"],
            **metric,
        )
        for kind in Kind:  # every series exported from the start, at 0
            self._retries.labels(kind)
        self._producer_resets = Counter(
            "kafka_producer_resets",
            "Kafka producers replaced because their state was lost or they stopped answering.",
            **metric,
        )
        self._in_flight_reads: list[Callable[[], int]] = []
        self.in_flight = Gauge(
            "in_flight_messages", "AMQP messages taken but not yet confirmed by Kafka.", **metric
        )
        self.loop_tasks = Gauge(
            "event_loop_tasks",
            "Tasks on the bridge's asyncio event loop (flat in a healthy bridge).",
            **metric,
        )
        self.queue_messages = Gauge(
            "queue_messages", "Ready messages in the bridge queue (polled).", **metric
        )
        self.queue_consumers = Gauge(
            "queue_consumers", "Consumers of the bridge queue (polled).", **metric
        )
        self.connection_up = Gauge(
            "connection_up",
            "1 while the side is connected: the source (amqp or redis) consuming, kafka answering.",
            ["side"],
            **metric,
        )
        self.source_up = Gauge(
            "source_up",
            "1 while the source consumes (one series per source of BRIDGE_SOURCES_FILE; "
            "source=default without one).",
            ["source"],
            **metric,
        )
        self.ready = Gauge("ready", "1 while /readyz reports ready.", **metric)
        self.topic_setting_shortfall = Gauge(
            "topic_setting_shortfall",
            "1 while the topic's setting (a Kafka config name, partitions or "
            "replication_factor) falls short of what the bridge expects (audited).",
            ["topic", "setting"],
            **metric,
        )
        self.topic_audits = Counter(
            "topic_audits", "Audits of the topics' settings completed.", **metric
        )
        self._counts = _CountsCollector()
        self.registry.register(self._counts)
        self.silent_workers = Gauge(
            "silent_workers",
            "Workers whose heartbeats show work while they send no task events (no -E).",
            **metric,
        )
        self.registry.register(
            _Exported(
                [
                    self._consumed,
                    self._published,
                    self._messages,
                    self._dead,
                    self._latency,
                    self._age,
                ]
            )
        )

    def watch_in_flight(self, read: Callable[[], int]) -> None:
        """Read the in-flight count when scraped instead of on every change (the sum over the
        sources' pipelines)."""
        self._in_flight_reads.append(read)
        reads = self._in_flight_reads
        self.in_flight.set_function(lambda: sum(r() for r in reads))

    def message(self, redelivered: bool) -> None:
        self._messages.inc()
        if redelivered:
            self._redelivered.inc()

    def export_workers(self, workers: WorkerActivity) -> None:
        """Export each worker's last-event time from ``workers`` when scraped."""
        self.registry.register(_LastSeenCollector(workers.last_seen))

    def export_counts(self, source: str, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        """Export a source's own counters, labelled with its name, when scraped: ``read()``
        maps each name (under the namespace) to its help and value; names ending in ``_total``
        are counters."""
        self._counts.sources.append((source, read))

    def export_rules(self, shaper: Shaper) -> None:
        """Export what each shaping rule did, and the withheld dead letters, when scraped."""
        self.registry.register(_RulesCollector(shaper))

    def consumed(self, record: EventRecord) -> None:
        self._consumed.inc(record.event_type)

    def published(self, record: EventRecord, received_at: float, now: float) -> None:
        """Kafka confirmed ``record`` at ``now`` (wall clock: one reading per Kafka batch)."""
        self._published.inc(record.event_type)
        self._latency.observe(now - received_at)
        if record.timestamp is not None:
            self._age.observe(max(0.0, now - record.timestamp))

    def dead_lettered(self, reason: str) -> None:
        self._dead.inc(reason)

    def acked(self, count: int) -> None:
        self._acked.inc(count)

    def failed_send(self, kind: str, records: int) -> None:
        self._retries.labels(kind).inc(records)

    def producer_reset(self) -> None:
        self._producer_resets.inc()


class _Counter:
    """A counter with at most one label, as a dict of plain ints."""

    def __init__(self, name: str, documentation: str, label: str | None = None) -> None:
        self._name = f"{NAMESPACE}_{name}"
        self._documentation = documentation
        self._label = label
        self._values: dict[str, int] = {}

    def inc(self, label: str = "", amount: int = 1) -> None:
        values = self._values
        if label in values:
            values[label] += amount
        elif len(values) < MAX_LABELS:
            values[label] = amount
        else:
            values["other"] = values.get("other", 0) + amount

    def collect(self) -> Metric:
        labels = [self._label] if self._label else []
        family = CounterMetricFamily(self._name, self._documentation, labels=labels)
        for label, value in list(self._values.items()):
            family.add_metric([label] if self._label else [], value)
        if not self._label and not self._values:
            family.add_metric([], 0)
        return family


class _Histogram:
    """A histogram as plain bucket counts: one bisect per observation."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self._name = f"{NAMESPACE}_{name}"
        self._documentation = documentation
        self._bounds = list(buckets)
        self._counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def collect(self) -> Metric:
        cumulative, total = [], 0
        labels = [*map(floatToGoString, self._bounds), "+Inf"]
        for bound, count in zip(labels, self._counts, strict=True):
            total += count
            cumulative.append((bound, total))
        return HistogramMetricFamily(
            self._name, self._documentation, buckets=cumulative, sum_value=self._sum
        )


class _Exported(Collector):
    def __init__(self, metrics: list[_Counter | _Histogram]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            yield metric.collect()


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


class _CountsCollector(Collector):
    def __init__(self) -> None:
        self.sources: list[tuple[str, Callable[[], dict[str, tuple[str, float]]]]] = []

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for source, read in self.sources:
            for name, (documentation, value) in read().items():
                if name not in families:
                    kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
                    full = f"{NAMESPACE}_{name.removesuffix('_total')}"
                    families[name] = kind(full, documentation, labels=["source"])
                families[name].add_metric([source], value)  # type: ignore[attr-defined]
        yield from families.values()


class _RulesCollector(Collector):
    def __init__(self, shaper: Shaper) -> None:
        self._shaper = shaper

    def collect(self) -> Iterator[CounterMetricFamily]:
        applied = CounterMetricFamily(
            f"{NAMESPACE}_rule_applied",
            "Times a shaping rule acted: on an event (drop, route) or on one of its fields "
            "(drop_field, mask, hash, truncate).",
            labels=["rule", "action"],
        )
        for (rule, action), count in list(self._shaper.applied.items()):
            applied.add_metric([rule, action], count)
        yield applied
        yield CounterMetricFamily(
            f"{NAMESPACE}_dead_letters_withheld",
            "Dead letters written without their value because the rules redact fields.",
            value=self._shaper.withheld,
        )
