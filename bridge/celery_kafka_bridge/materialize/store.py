"""The materializer's topics: created compacted, read back whole at start, written per flush."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.kafka.sink import RETRIABLE, create_topics
from celery_kafka_bridge.materialize.engine import Flush
from celery_kafka_bridge.materialize.monitor import MaterializeMetrics
from celery_kafka_bridge.materialize.tables import dumps
from celery_kafka_bridge.reader.tables import Table
from celery_kafka_bridge.reader.tables import read_table as read_whole_table
from celery_kafka_bridge.retry import backoff
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

COMPACT = {"cleanup.policy": "compact"}


async def ensure_topics(config: Config) -> None:
    tables = (config.tasks_topic, config.workers_topic, config.offsets_topic)
    wanted: dict[str, dict[str, str]] = {topic: COMPACT for topic in tables}
    wanted[config.derived_topic] = {}
    async for attempt in backoff("materialize topic creation", RETRIABLE):
        with attempt:
            await create_topics(config, wanted)


async def read_table(config: Config, topic: str) -> Table:
    """The latest record of every key of one of the materializer's topics."""
    return await read_whole_table(config.bootstrap_servers, topic, **kafka_security(config))


def position_key(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


class TableWriter:
    """Writes a flush: table records and derived events, then, once Kafka confirmed them all,
    the input positions (the commit). A failed flush is sent again whole: table records carry
    latest values, and a second copy of a derived event has the same id."""

    def __init__(self, config: Config, metrics: MaterializeMetrics) -> None:
        self._config = config
        self._metrics = metrics
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
            async for attempt in backoff("materialize commit", RETRIABLE):
                with attempt:
                    await self._gather(
                        self._send(
                            self._config.offsets_topic,
                            position_key(self._config.topic, partition),
                            str(offset).encode(),
                        )
                        for partition, offset in flush.positions.items()
                    )

    async def _send_outputs(self, flush: Flush) -> None:
        config = self._config
        sends = [
            self._send(config.tasks_topic, uuid, value, headers)
            for uuid, (value, headers) in flush.tasks.items()
        ]
        sends += [self._send(config.workers_topic, h, v) for h, v in flush.workers.items()]
        sends += [
            self._send(
                config.derived_topic, found.key, dumps(found.value), [("type", found.type.encode())]
            )
            for found in flush.derived
        ]
        await self._gather(sends)

    async def _send(
        self,
        topic: str,
        key: str,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self._producer.send(
            topic, value, key=key.encode(), headers=headers
        )
        return future

    async def _gather(self, sends: Any) -> None:
        """Queue every send, then wait for every delivery (a failure raises)."""
        futures: list[Awaitable[Any]] = [await send for send in sends]
        await asyncio.gather(*futures)

    def _count(self, flush: Flush) -> None:
        metrics = self._metrics
        metrics.records.labels("tasks").inc(len(flush.tasks))
        metrics.records.labels("workers").inc(len(flush.workers))
        for found in flush.derived:
            metrics.derived.labels(found.type).inc()
            if found.type == "events-missing":
                metrics.missing.labels(found.key).inc(int(found.value["missing"]))
