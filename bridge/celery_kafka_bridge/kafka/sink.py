"""The Kafka side: an aiokafka producer (acks=all) writing to the topics (`topics.TopicAdmin`).

Records go out in per-partition batches (`batches.BatchWriter`), which handle a failed batch by
the kind of error (`errors`); the producer itself may be replaced (`producer.Producer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from celery_kafka_bridge.codec import DeadLetter, EventRecord, Outcome
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.kafka.batches import BatchWriter, Listener
from celery_kafka_bridge.kafka.cloudevents import cloudevent_headers
from celery_kafka_bridge.kafka.errors import RETRIABLE
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.kafka.producer import Producer
from celery_kafka_bridge.kafka.topics import TopicAdmin
from celery_kafka_bridge.retry import backoff
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

Token = TypeVar("Token")


class KafkaSink:
    """Writes records to the events topic and dead letters to the dead-letter topic."""

    def __init__(
        self,
        config: Config,
        on_producer_reset: Callable[[], None] = lambda: None,
        source: str | None = None,
        routed_topics: tuple[str, ...] = (),
    ) -> None:
        """``source``: the name every record's ``source`` header carries (none if None);
        ``routed_topics``: where shaping rules route events."""
        self._config = config
        self._source_header = [("source", source.encode())] if source is not None else []
        self._producer = Producer(self.producer_options(), on_producer_reset)
        # Every topic written to: events, dead letters, and where rules route events.
        self.topics = TopicAdmin(
            config, list(dict.fromkeys((config.topic, config.dlq_topic, *routed_topics)))
        )
        self._partitions: dict[str, list[int]] = {}
        self._writers: list[BatchWriter[Any]] = []

    async def start(self) -> None:
        """Connect (retrying until Kafka answers) and create the topics that are missing; a
        broker that refuses an idempotent producer, or has fewer brokers than the replication
        factor, raises `ConfigError`."""
        await self._producer.start()
        try:
            async for attempt in backoff("kafka topic creation", RETRIABLE):
                with attempt:
                    async with asyncio.timeout(self._producer.timeout):
                        await self.topics.ensure(check_brokers=True)
        except BaseException:  # a bad setting, or stopped while waiting: nothing will be sent
            await self.stop()
            raise
        log.info("kafka producer ready at %s", self._config.kafka_bootstrap_servers)

    def producer_options(self) -> dict[str, Any]:
        config = self._config
        return {
            "bootstrap_servers": config.bootstrap_servers,
            "client_id": "celery-kafka-bridge",
            "acks": "all",
            "enable_idempotence": config.kafka_enable_idempotence,
            "compression_type": None
            if config.kafka_compression == "none"
            else config.kafka_compression,
            "linger_ms": config.kafka_linger_ms,
            "max_batch_size": config.kafka_batch_bytes,
            "max_request_size": config.max_request_bytes,
            "request_timeout_ms": config.kafka_request_timeout_ms,
            **kafka_security(config),
        }

    async def refresh_partitions(self) -> None:
        """Look up (from the producer's metadata, fetched when missing) the topics' partitions."""
        for topic in self.topics.topics:
            self._partitions[topic] = sorted(await self._producer.partitions_for(topic))

    def writer(self, listener: Listener[Token]) -> Callable[[Outcome, Token], None]:
        """A function that queues one record, after `refresh_partitions`; the listener hears
        what became of each (`batches.Listener`)."""
        batches = BatchWriter(self._producer, self._config.kafka_linger_ms, listener)
        self._writers.append(batches)
        partitions = self._partitions
        extra = self._source_header

        def write(outcome: Outcome, token: Token) -> None:
            topic, key = self._destination(outcome)
            partition = partition_for(key, partitions[topic])
            headers = outcome.headers + extra if extra else outcome.headers
            batches.append(
                topic, partition, key=key, value=outcome.value, headers=headers, token=token
            )

        if self._config.cloudevents == "off":
            return write

        def write_cloudevent(outcome: Outcome, token: Token) -> None:
            # Chosen once here, so with CloudEvents off a record costs nothing more.
            if isinstance(outcome, EventRecord):
                outcome.headers = outcome.headers + cloudevent_headers(outcome)
            write(outcome, token)

        return write_cloudevent

    def _destination(self, outcome: Outcome) -> tuple[str, bytes | None]:
        """Topic and key: dead letters have no key (they spread over the dead-letter topic)."""
        if isinstance(outcome, DeadLetter):
            return self._config.dlq_topic, None
        return outcome.topic or self._config.topic, outcome.key

    async def stop(self) -> None:
        for batches in self._writers:
            await batches.close()
        await self._producer.stop()
        await self.topics.close()
