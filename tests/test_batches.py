"""Batched Kafka writes against a real broker: lingering, order, a refused batch sent again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.kafka.batches import BatchWriter
from celery_kafka_bridge.kafka.errors import Kind
from celery_kafka_bridge.kafka.producer import Producer
from harness.support import Names, read_topic


async def _producer(kafka: EmbeddedKafka) -> Producer:
    producer = Producer(
        {
            "bootstrap_servers": kafka.bootstrap_servers,
            "acks": "all",
            "enable_idempotence": False,
            "request_timeout_ms": 5000,
        },
        on_reset=lambda: None,
    )
    await producer.start()
    return producer


class Recorder:
    """A `batches.Listener` that keeps what it heard."""

    def __init__(self) -> None:
        self.done: list[tuple[list[Any], float]] = []
        self.failed_attempts: list[tuple[int, Kind]] = []

    def written(self, topic: str, tokens: list[Any]) -> None:
        self.done.append((tokens, time.monotonic()))

    def failed(self, topic: str, records: int, exc: BaseException, kind: Kind) -> None:
        self.failed_attempts.append((records, kind))

    def rejected(self, token: Any, exc: BaseException) -> bool:
        raise AssertionError(f"no record is refused here: {exc}")


def test_records_within_the_linger_leave_as_one_batch_in_order(
    kafka: EmbeddedKafka, names: Names
) -> None:
    done, started = asyncio.run(_write_five_within_the_linger(kafka, names.topic))
    ((tokens, acked_at),) = done
    assert tokens == [0, 1, 2, 3, 4], "one batch, one report, every token"
    assert acked_at - started >= 0.2, "the open batch waited for linger_ms"
    records = read_topic(kafka.bootstrap_servers, names.topic, until=lambda rs: len(rs) >= 5)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3", b"4"]


async def _write_five_within_the_linger(
    kafka: EmbeddedKafka, topic: str
) -> tuple[list[tuple[list[Any], float]], float]:
    producer = await _producer(kafka)
    recorder = Recorder()
    try:
        await producer.partitions_for(topic)  # the topic exists (auto-created)
        writer = BatchWriter[int](producer, 200, recorder)
        started = time.monotonic()
        for i in range(5):
            writer.append(topic, 0, key=b"k", value=str(i).encode(), headers=[], token=i)
            await asyncio.sleep(0.01)  # each after the first, well inside the 200 ms linger
        while not recorder.done:
            await asyncio.sleep(0.01)
        await writer.close()
    finally:
        await producer.stop()
    assert not recorder.failed_attempts, "kafka refused a batch"
    return recorder.done, started


async def test_a_batch_kafka_refuses_is_sent_again_and_the_partition_waits_behind_it(
    kafka: EmbeddedKafka, names: Names
) -> None:
    producer = await _producer(kafka)
    recorder = Recorder()
    failed = recorder.failed_attempts
    try:
        partitions = await producer.partitions_for(names.topic)
        writer = BatchWriter[str](producer, 0, recorder)
        missing = max(partitions) + 1  # no such partition: every attempt fails
        writer.append(names.topic, missing, key=None, value=b"x", headers=[], token="first")
        while len(failed) < 2:
            await asyncio.sleep(0.01)
        writer.append(names.topic, missing, key=None, value=b"y", headers=[], token="second")
        while len(failed) < 3:
            await asyncio.sleep(0.01)
        await writer.close()
    finally:
        await producer.stop()
    assert recorder.done == [], "nothing was taken, and the second batch never overtook the first"
    assert failed == [(1, Kind.TRANSIENT)] * 3, "only the first batch was tried"
