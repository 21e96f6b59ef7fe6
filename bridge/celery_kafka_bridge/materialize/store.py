"""The materializer's topics: created compacted, read back whole at start, written per flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.kafka.errors import RETRIABLE
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.kafka.topics import TopicAdmin
from celery_kafka_bridge.materialize.engine import Flush
from celery_kafka_bridge.materialize.monitor import MaterializeMetrics
from celery_kafka_bridge.materialize.slices import Slice
from celery_kafka_bridge.materialize.tables import dumps
from celery_kafka_bridge.reader.stream import wait_for_partitions
from celery_kafka_bridge.reader.tables import Table
from celery_kafka_bridge.reader.tables import read_table as read_whole_table
from celery_kafka_bridge.retry import backoff
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

COMPACT = {"cleanup.policy": "compact"}


async def ensure_topics(config: Config) -> None:
    """Create the tables (compacted) and the derived-events topic, with the durability
    settings of the bridge's own topics."""
    tables = (config.tasks_topic, config.workers_topic, config.offsets_topic)
    admin = TopicAdmin(
        config, [*tables, config.derived_topic], overrides={topic: COMPACT for topic in tables}
    )
    try:
        async for attempt in backoff("materialize topic creation", RETRIABLE):
            with attempt:
                await admin.ensure()
    finally:
        await admin.close()


async def read_table(config: Config, topic: str) -> Table:
    """The latest record of every key of one of the materializer's topics."""
    return await read_whole_table(config.bootstrap_servers, topic, **kafka_security(config))


_Record = tuple[str, str, bytes | None, list[tuple[str, bytes]]]
"""Topic, key, value (None: a tombstone), headers."""


def position_prefix(topic: str, slice_: Slice) -> str:
    """The start of a slice's position keys in the offsets topic (``topic/slice/partition``):
    each slice reads every partition, to its own positions."""
    return f"{topic}/{slice_}/"


class TableWriter:
    """Writes a flush: table records and derived events, then, once Kafka confirmed them all,
    the input positions (the commit). A failed flush is sent again whole: table records carry
    latest values, and a second copy of a derived event has the same id."""

    def __init__(self, config: Config, metrics: MaterializeMetrics, slice_: Slice) -> None:
        self._config = config
        self._metrics = metrics
        self._position_prefix = position_prefix(config.topic, slice_)
        self._partitions: dict[str, list[int]] = {}
        self._producer = AIOKafkaProducer(
            bootstrap_servers=config.bootstrap_servers,
            client_id="celery-kafka-bridge-materialize",
            acks="all",
            enable_idempotence=config.kafka_enable_idempotence,
            linger_ms=5,
            max_batch_size=config.kafka_batch_bytes,
            request_timeout_ms=config.kafka_request_timeout_ms,
            **kafka_security(config),
        )

    async def start(self) -> None:
        async for attempt in backoff("materialize kafka producer", RETRIABLE):
            with attempt:
                await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def partitions(self, topic: str, timeout: float = 10.0) -> list[int]:
        """The partition ids of ``topic``, waiting ``timeout`` seconds for it to exist (from
        metadata of all topics: asking for one could create it with the broker's defaults)."""

        async def known() -> set[int] | None:
            metadata = await self._producer.client.fetch_all_metadata()
            found: set[int] | None = metadata.partitions_for_topic(topic)
            return found

        return await wait_for_partitions(known, topic, self._config.bootstrap_servers, timeout)

    async def write(self, flush: Flush) -> None:
        """Everything in ``flush``, then its positions; retried until Kafka takes it."""
        if len(flush):
            async for attempt in backoff("materialize write", RETRIABLE):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        self._metrics.write_retries.inc()
                    await self._send_outputs(flush)
            self._count(flush)
        if flush.positions:
            topic = self._config.offsets_topic
            positions: list[_Record] = [
                (topic, f"{self._position_prefix}{p}", str(offset).encode(), [])
                for p, offset in flush.positions.items()
            ]
            async for attempt in backoff("materialize commit", RETRIABLE):
                with attempt:
                    await self._send_all(positions)

    async def _send_outputs(self, flush: Flush) -> None:
        config = self._config
        records: list[_Record] = [
            (config.tasks_topic, uuid, value, headers)
            for uuid, (value, headers) in flush.tasks.items()
        ]
        records += [(config.workers_topic, h, v, []) for h, v in flush.workers.items()]
        records += [
            (config.derived_topic, d.key, dumps(d.value), [("type", d.type.encode())])
            for d in flush.derived
        ]
        await self._send_all(records)

    async def _send_all(self, records: list[_Record]) -> None:
        """Every record, in batches per partition (a send per record costs more than applying
        its events), then wait until Kafka acknowledged them all (a failure raises)."""
        producer = self._producer
        by_partition: dict[tuple[str, int], list[_Record]] = {}
        for record in records:
            topic = record[0]
            partitions = self._partitions.get(topic) or sorted(await producer.partitions_for(topic))
            self._partitions[topic] = partitions
            where = (topic, partition_for(record[1].encode(), partitions))
            by_partition.setdefault(where, []).append(record)
        futures: list[Awaitable[Any]] = []
        for (topic, partition), batch_records in by_partition.items():
            batch = producer.create_batch()
            for _, key, value, headers in batch_records:
                encoded = key.encode()
                while (
                    batch.append(key=encoded, value=value, timestamp=None, headers=headers) is None
                ):
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    def _count(self, flush: Flush) -> None:
        metrics = self._metrics
        metrics.records.labels("tasks").inc(len(flush.tasks))
        metrics.records.labels("workers").inc(len(flush.workers))
        for found in flush.derived:
            metrics.derived.labels(found.type).inc()
            if found.type == "events-missing":
                metrics.missing.labels(found.key).inc(int(found.value["missing"]))
