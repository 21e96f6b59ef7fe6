"""Batched Kafka writes against a real broker: lingering, order, and a refused batch reported."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.batches import BatchWriter
from bridge.embedded import EmbeddedKafka
from tests.support import Names, read_topic


async def _producer(kafka: EmbeddedKafka) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=False
    )
    await producer.start()
    return producer


def test_records_within_the_linger_leave_as_one_batch_in_order(
    kafka: EmbeddedKafka, names: Names
) -> None:
    done, started = asyncio.run(_write_five_within_the_linger(kafka, names.topic))
    ((tokens, exc, acked_at),) = done
    assert (tokens, exc) == ([0, 1, 2, 3, 4], None), "one batch, one report, every token"
    assert acked_at - started >= 0.2, "the open batch waited for linger_ms"
    records = read_topic(kafka.bootstrap_servers, names.topic, until=lambda rs: len(rs) >= 5)
    assert [r.value for r in records] == [b"0", b"1", b"2", b"3", b"4"]


async def _write_five_within_the_linger(
    kafka: EmbeddedKafka, topic: str
) -> tuple[list[tuple[list[int], BaseException | None, float]], float]:
    producer = await _producer(kafka)
    done: list[tuple[list[int], BaseException | None, float]] = []
    try:
        await producer.partitions_for(topic)  # the topic exists (auto-created)
        writer = BatchWriter[int](
            producer, 200, lambda tokens, exc: done.append((tokens, exc, time.monotonic()))
        )
        started = time.monotonic()
        for i in range(5):
            writer.append(topic, 0, key=b"k", value=str(i).encode(), headers=[], token=i)
            await asyncio.sleep(0.01)  # each after the first, well inside the 200 ms linger
        while not done:
            await asyncio.sleep(0.01)
        await writer.close()
    finally:
        await producer.stop()
    return done, started


async def test_a_batch_kafka_refuses_is_reported_with_its_error(
    kafka: EmbeddedKafka, names: Names
) -> None:
    producer = await _producer(kafka)
    done: list[tuple[list[Any], BaseException | None]] = []
    try:
        partitions = await producer.partitions_for(names.topic)
        writer = BatchWriter[str](producer, 0, lambda tokens, exc: done.append((tokens, exc)))
        missing = max(partitions) + 1  # no such partition
        writer.append(names.topic, missing, key=None, value=b"x", headers=[], token="lost")
        while not done:
            await asyncio.sleep(0.01)
        await writer.close()
    finally:
        await producer.stop()
    ((tokens, exc),) = done
    assert tokens == ["lost"] and exc is not None
