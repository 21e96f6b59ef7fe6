"""The Kafka side of the benchmark: count a topic's records and time their arrival.

Partitions are assigned explicitly (consumer-group joins can stall on Tansu), and reads go
until the expected count and then a short quiet spell, not up to the end offsets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

_STALL_SECONDS = 10.0
"""No record for this long while short of the expected count: the reader starts over."""


@dataclass
class Arrivals:
    """Per event: event timestamp to producer send (CreateTime) and to this consumer, in ms."""

    to_send_ms: list[float] = field(default_factory=list)
    to_consumer_ms: list[float] = field(default_factory=list)


async def assigned_consumer(
    bootstrap: str, topic: str, fetch_wait_ms: int, timeout: float = 60.0
) -> AIOKafkaConsumer:
    """A started consumer assigned every partition of ``topic``, from the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_wait_ms,
        fetch_min_bytes=1 if fetch_wait_ms <= 10 else 256 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        partitions = consumer.partitions_for_topic(topic)
        while not partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} does not exist")
            await consumer.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def read(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float,
    *,
    on_record: Callable[[int, bytes, float], None] | None = None,
    idle: float = 1.0,
) -> tuple[int, float]:
    """Count ``topic``'s records until ``expected`` were seen and ``idle`` s passed without more.

    Returns the count and when (``perf_counter``) it first reached ``expected``. Without
    ``on_record`` it only counts, in few large fetches, to take little CPU from what it watches;
    with it, ``on_record(create_time_ms, value, received_s)`` sees each record as soon as it can.
    """
    wait_ms = 10 if on_record else 100
    consumer = await assigned_consumer(bootstrap, topic, wait_ms)
    seen = 0
    reached_at = 0.0
    positions: dict[TopicPartition, int] = {}
    try:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100, max_records=20_000)
            now = time.time()
            for partition, messages in batches.items():
                seen += len(messages)
                positions[partition] = messages[-1].offset + 1
                if on_record is not None:
                    for m in messages:
                        on_record(m.timestamp, m.value, now)
            if seen >= expected and not reached_at:
                reached_at = time.perf_counter()
            if batches:
                last = time.monotonic()
            elif seen >= expected and time.monotonic() - last > idle:
                break
            elif time.monotonic() - last > _STALL_SECONDS:
                # Tansu has left a reader with nothing to fetch although the topic held more:
                # a fresh consumer goes on from the positions reached.
                await consumer.stop()
                consumer = await assigned_consumer(bootstrap, topic, wait_ms)
                for partition, offset in positions.items():
                    consumer.seek(partition, offset)
                last = time.monotonic()
        return seen, reached_at
    finally:
        await consumer.stop()


def arrivals_recorder(arrivals: Arrivals) -> Callable[[int, bytes, float], None]:
    """An ``on_record`` that files each event's latencies into ``arrivals``."""

    def record(create_time_ms: int, value: bytes, received_s: float) -> None:
        event_ms = orjson.loads(value)["timestamp"] * 1000.0
        arrivals.to_send_ms.append(create_time_ms - event_ms)
        arrivals.to_consumer_ms.append(received_s * 1000.0 - event_ms)

    return record
