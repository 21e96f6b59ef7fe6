"""Reading the state tables `celery-kafka-bridge materialize` keeps (compacted topics): one task
by id from the one partition its key maps to, or a whole table.

Compaction may not have run yet, so a table is read to its end and the last record of each key
wins; a tombstone (no value) means the key was deleted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from celery.events.state import State

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.materialize.tables import restore_task, restore_worker
from celery_kafka_bridge.reader.stream import TopicNotFound

DEFAULT_TASKS_TOPIC: str = Config.model_fields["tasks_topic"].default
IDLE_SECONDS = 1.0
"""A table is read once past the end offsets seen at the start and then idle this long, or this
long past them (a live table may never go idle): some brokers (Tansu) report end offsets that
trail what they serve."""

Table = dict[str, tuple[bytes | None, dict[str, bytes]]]
"""Key: (latest value, its headers); a deleted key's value is None."""


async def read_table(
    servers: Sequence[str],
    topic: str,
    *,
    key: str | None = None,
    metadata_timeout: float = 0.0,
    **client_options: Any,
) -> Table:
    """The latest record of every key of a compacted topic (only ``key``'s partition if given);
    `TopicNotFound` if the topic does not exist."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=list(servers),
        client_id="celery-kafka-bridge-tables",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_options,
    )
    await consumer.start()
    table: Table = {}
    try:
        found = await _partitions(consumer, topic, metadata_timeout)
        if key is not None:
            found = [partition_for(key.encode(), found)]
        partitions = [TopicPartition(topic, p) for p in found]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        last, reached = time.monotonic(), None
        while True:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    if record.key is not None:
                        table[record.key.decode()] = (record.value, dict(record.headers or ()))
            now = time.monotonic()
            last = now if batches else last
            if reached is None and all(
                [await consumer.position(tp) >= e for tp, e in ends.items()]
            ):
                reached = now
            if reached is not None and (
                now - last >= IDLE_SECONDS or now - reached >= IDLE_SECONDS
            ):
                return table
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout: float) -> list[int]:
    """The topic's partitions; `TopicNotFound` once a metadata refresh after ``timeout`` still
    does not list it (the materializer creates its topics before writing, so readers need not
    wait for them)."""
    deadline = time.monotonic() + timeout
    while not (found := consumer.partitions_for_topic(topic)):
        await consumer.topics()  # refreshes the metadata
        if not (found := consumer.partitions_for_topic(topic)) and time.monotonic() >= deadline:
            raise TopicNotFound(f"topic {topic!r} not found")
        if not found:
            await asyncio.sleep(0.2)
    return sorted(found)


async def fetch_task(
    servers: Sequence[str], task_id: str, topic: str = DEFAULT_TASKS_TOPIC, **options: Any
) -> dict[str, Any] | None:
    """A task's latest state as the materializer wrote it (Celery's ``Task.as_dict()`` fields,
    the worker as its hostname); None if the table does not hold it."""
    value, _ = (await read_table(servers, topic, key=task_id, **options)).get(task_id, (None, {}))
    return None if value is None else dict(orjson.loads(value))


def lookup_task(
    servers: Sequence[str], task_id: str, topic: str = DEFAULT_TASKS_TOPIC
) -> dict[str, Any] | None:
    """`fetch_task` for synchronous code (scripts, notebooks)."""
    return asyncio.run(fetch_task(servers, task_id, topic))


def table_state(tasks: Table, workers: Table, max_tasks: int) -> State:
    """Celery's State holding the tables' tasks and workers."""
    state = State(max_tasks_in_memory=max_tasks)
    for uuid, (value, _) in tasks.items():
        if value is not None:
            restore_task(state, uuid, orjson.loads(value))
    for value, _ in workers.values():
        if value is not None:
            restore_worker(state, orjson.loads(value))
    return state
