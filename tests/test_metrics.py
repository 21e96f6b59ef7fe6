"""Metrics move as events flow: counters per event type, dead letters per reason, histograms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import generate_latest

from celery_kafka_bridge.codec import Envelope, EventRecord, Outcome
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.kafka.batches import Listener
from celery_kafka_bridge.metrics import MAX_LABELS, Metrics
from celery_kafka_bridge.pipeline import Pipeline
from celery_kafka_bridge.source import Delivery
from celery_kafka_bridge.workers import WorkerActivity
from harness.support import Names, Rabbit, poll, publish_events
from tests.conftest import BridgeFactory

PREFIX = "celery_kafka_bridge"


class ConfirmingSink:
    """Kafka stand-in that confirms every record at once (pure pipeline logic)."""

    async def refresh_partitions(self) -> None:
        pass

    def writer(self, listener: Listener[Any]) -> Callable[[Outcome, Any], None]:
        return lambda _outcome, token: listener.written("events", [token])


def delivery(tag: int, body: bytes, redelivered: bool = False) -> Delivery:
    envelope = Envelope(body, "application/json", "utf-8", "task.received", 1_700_000_000_000)
    return Delivery(1, tag, envelope, redelivered)


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"{PREFIX}_{name}", labels) or 0.0


async def test_the_pipeline_counts_events_dead_letters_acks_and_redeliveries() -> None:
    metrics = Metrics()
    workers = WorkerActivity()
    pipeline = Pipeline(
        ConfirmingSink(), 10_000, lambda _g, _ops, _through: None, metrics=metrics, workers=workers
    )
    pipeline.attach(1)
    event = b'{"type": "task-received", "uuid": "u1", "hostname": "w@h", "timestamp": 1700000000.0}'
    pair = b'[{"type": "task-started", "hostname": "w@h"}, {"type": "task-started"}]'
    for tag, (body, redelivered) in enumerate(
        [(event, False), (pair, True), (b"{nope", False)], start=1
    ):
        pipeline._publish(delivery(tag, body, redelivered))
    assert await pipeline.drain(1.0)  # every record confirmed, every ack flushed
    assert value(metrics, "events_consumed_total", event_type="task-received") == 1
    assert value(metrics, "events_published_total", event_type="task-started") == 2
    assert value(metrics, "dead_letters_total", reason="undecodable") == 1
    assert value(metrics, "amqp_messages_consumed_total") == 3
    assert value(metrics, "amqp_messages_redelivered_total") == 1
    assert value(metrics, "amqp_messages_acked_total") == 3
    assert value(metrics, "publish_latency_seconds_count") == 3
    assert value(metrics, "event_age_seconds_count") == 1, "only one event had a timestamp"
    assert value(metrics, "in_flight_messages") == 0
    assert workers.last_seen == {"w@h": 1_700_000_000.0}
    assert workers.last_task_event == {"w@h": 1_700_000_000.0}


def test_event_types_beyond_the_label_cap_count_as_other() -> None:
    metrics = Metrics()
    for i in range(MAX_LABELS + 5):
        metrics.consumed(EventRecord(None, b"{}", [], f"custom-{i}"))
    assert value(metrics, "events_consumed_total", event_type="other") == 5
    assert value(metrics, "events_consumed_total", event_type="custom-0") == 1


def test_workers_appear_with_their_last_event_time_and_are_forgotten_after_an_hour() -> None:
    metrics, workers = Metrics(), WorkerActivity()
    metrics.export_workers(workers)
    workers.observe(EventRecord(b"w@h", b"{}", [], "worker-heartbeat", "w@h", 5.0), 100.0)
    page = generate_latest(metrics.registry).decode()
    assert f'{PREFIX}_worker_last_event_timestamp_seconds{{hostname="w@h"}} 100.0' in page
    workers.forget(100.0 + 3601)
    assert "w@h" not in generate_latest(metrics.registry).decode()


def test_counters_say_n_after_n_events_and_a_poison_message_moves_the_dead_letter_counter(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge()
    sent = publish_events(names.exchange, 300, hostname="loadgen@metrics")
    rabbit.publish(names.exchange, "task.bad", b'{"type": ', "application/json")
    rabbit.publish(names.exchange, "task.bad", b"\x80\x04.", "application/x-python-serialize")

    def published() -> float:
        return bridge.metric(f"{PREFIX}_events_published_total", event_type="task-received")

    poll(lambda: published() >= sent, 30, what=f"{sent} events published")
    poll(lambda: bridge.metric(f"{PREFIX}_dead_letters_total") >= 2, 15, what="dead letters")
    assert published() == sent
    assert bridge.metric(f"{PREFIX}_events_consumed_total", event_type="task-received") == sent
    assert bridge.metric(f"{PREFIX}_dead_letters_total", reason="undecodable") == 1
    assert bridge.metric(f"{PREFIX}_dead_letters_total", reason="unsupported_content_type") == 1
    messages = bridge.metric(f"{PREFIX}_amqp_messages_consumed_total")
    poll(
        lambda: bridge.metric(f"{PREFIX}_amqp_messages_acked_total") == messages,
        10,
        what="every message acked",
    )
    assert bridge.metric(f"{PREFIX}_publish_latency_seconds_count") == sent
    assert bridge.metric(f"{PREFIX}_event_age_seconds_count") == sent
    assert (
        bridge.metric(f"{PREFIX}_worker_last_event_timestamp_seconds", hostname="loadgen@metrics")
        > 0
    )
    assert bridge.metric(f"{PREFIX}_in_flight_messages") == 0


def test_histogram_buckets_are_cumulative_and_include_their_upper_bound() -> None:
    metrics = Metrics()
    record = EventRecord(None, b"{}", [], "task-started", timestamp=None)
    for latency in (0.001, 0.0011, 0.02, 100.0):  # on a bound, just above it, mid, beyond all
        metrics.published(record, 1_700_000_000.0 - latency, now=1_700_000_000.0)
    bucket = "publish_latency_seconds_bucket"
    assert value(metrics, bucket, le="0.001") == 1
    assert value(metrics, bucket, le="0.0025") == 2
    assert value(metrics, bucket, le="0.025") == 3
    assert value(metrics, bucket, le="60.0") == 3
    assert value(metrics, bucket, le="+Inf") == 4
    assert value(metrics, "publish_latency_seconds_count") == 4
    assert value(metrics, "publish_latency_seconds_sum") >= 100.0211
