"""Events written straight to a Kafka topic through the bridge's own codec and sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from celery_kafka_bridge.codec import Envelope, EventRecord, decode
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.kafka.sink import KafkaSink


def encode(event: dict[str, Any] | bytes) -> EventRecord:
    """The record the bridge makes of one event sent as a single JSON message."""
    body = event if isinstance(event, bytes) else orjson.dumps(event)
    routing_key = orjson.loads(body)["type"].replace("-", ".")
    envelope = Envelope(body, "application/json", "utf-8", routing_key, int(time.time() * 1000))
    (record,) = decode(envelope, max_bytes=1_000_000)
    assert isinstance(record, EventRecord)
    return record


async def write_records_async(
    bootstrap: str, topic: str, records: Sequence[EventRecord], timestamp_ms: int | None = None
) -> None:
    """Write ``records`` in order, as the bridge's producer would (4 partitions if new),
    stamped now or at ``timestamp_ms``."""
    config = Config.load(
        kafka_bootstrap_servers=bootstrap,
        topic=topic,
        dlq_topic=f"{topic}.dlq",
        kafka_enable_idempotence=False,
        topic_partitions=4,
        topic_replication_factor=1,
        topic_min_insync_replicas=1,
    )
    sink = KafkaSink(config)
    try:
        await sink.topics.ensure()
    finally:
        await sink.topics.close()
    async with AIOKafkaProducer(**sink.producer_options()) as producer:
        for record in records:
            await producer.send_and_wait(
                topic,
                record.value,
                key=record.key,
                headers=record.headers,
                timestamp_ms=timestamp_ms,
            )


def write_records(
    bootstrap: str, topic: str, records: Sequence[EventRecord], timestamp_ms: int | None = None
) -> None:
    asyncio.run(write_records_async(bootstrap, topic, records, timestamp_ms))


def task_events(
    uuid: str, name: str = "app.add", start: float | None = None
) -> list[dict[str, Any]]:
    """A plausible sent/received/started/succeeded sequence for one task."""
    t0 = time.time() if start is None else start
    steps: list[tuple[str, dict[str, Any]]] = [
        ("task-sent", {"name": name, "args": "(1, 2)", "kwargs": "{}"}),
        ("task-received", {"name": name}),
        ("task-started", {}),
        ("task-succeeded", {"result": "3", "runtime": 0.01}),
    ]
    return [
        {
            "type": kind,
            "uuid": uuid,
            "hostname": "w1@h",
            "timestamp": t0 + i * 0.01,
            "utcoffset": 0,
            "pid": 7,
            "clock": i + 1,
            **fields,
        }
        for i, (kind, fields) in enumerate(steps)
    ]
