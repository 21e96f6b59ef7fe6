"""The Kafka side: an aiokafka producer (acks=all) and the topics it writes to.

Records go out in per-partition batches (`batches.BatchWriter`), which handle a failed batch by
the kind of error (`errors`); the producer itself may be replaced (`producer.Producer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from celery_kafka_bridge.codec import DeadLetter, EventRecord, Outcome
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.errors import TransientError
from celery_kafka_bridge.kafka.batches import BatchWriter, Listener
from celery_kafka_bridge.kafka.cloudevents import cloudevent_headers
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.kafka.producer import Producer
from celery_kafka_bridge.retry import backoff
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
TOPIC_CHECK_SECONDS = 2.0
_HEADROOM_BYTES = 65_536
"""Room for the key and headers above the largest body the bridge accepts."""

Token = TypeVar("Token")

RETRIABLE = (KafkaError, TransientError, OSError, TimeoutError)
"""What a Kafka call outside the batch writers (metadata, topics) is retried on."""


class KafkaSink:
    """Writes records to the events topic and dead letters to the dead-letter topic."""

    def __init__(
        self, config: Config, on_producer_reset: Callable[[], None] = lambda: None
    ) -> None:
        self._config = config
        self._producer = Producer(self.producer_options(), on_producer_reset)
        self._partitions: dict[str, list[int]] = {}
        self._writers: list[BatchWriter[Any]] = []

    async def start(self) -> None:
        """Connect (retrying until Kafka answers; a broker that refuses an idempotent producer
        raises `ConfigError`) and create the topics that are missing."""
        await self._producer.start()
        async for attempt in backoff("kafka topic creation", RETRIABLE):
            with attempt:
                async with asyncio.timeout(self._producer.timeout):
                    await self.ensure_topics()
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
            "max_request_size": config.max_message_bytes + _HEADROOM_BYTES,
            "request_timeout_ms": config.kafka_request_timeout_ms,
            **kafka_security(config),
        }

    async def ensure_topics(self) -> None:
        """Create missing topics with the configured layout; never alter existing ones."""
        await create_topics(self._config, {self._config.topic: {}, self._config.dlq_topic: {}})

    async def watch_topics(self, interval: float = TOPIC_CHECK_SECONDS) -> None:
        """Forever: recreate the topics if they vanish, e.g. a broker replaced by an empty one.

        Real Kafka refuses records for a missing topic, so they are retried until it is back;
        this puts it back without a restart.
        """
        while True:
            await asyncio.sleep(interval)
            try:
                await self.ensure_topics()
            except (KafkaError, TransientError, OSError) as exc:
                log.debug("checking the kafka topics failed: %s", exc)

    async def refresh_partitions(self) -> None:
        """Look up (from the producer's metadata, fetched when missing) the topics' partitions."""
        for topic in (self._config.topic, self._config.dlq_topic):
            self._partitions[topic] = sorted(await self._producer.partitions_for(topic))

    def writer(self, listener: Listener[Token]) -> Callable[[Outcome, Token], None]:
        """A function that queues one record, after `refresh_partitions`; the listener hears
        what became of each (`batches.Listener`)."""
        batches = BatchWriter(self._producer, self._config.kafka_linger_ms, listener)
        self._writers.append(batches)
        partitions = self._partitions

        def write(outcome: Outcome, token: Token) -> None:
            topic, key = self._destination(outcome)
            partition = partition_for(key, partitions[topic])
            batches.append(
                topic, partition, key=key, value=outcome.value, headers=outcome.headers, token=token
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
        return self._config.topic, outcome.key

    async def stop(self) -> None:
        for batches in self._writers:
            await batches.close()
        await self._producer.stop()


async def create_topics(config: Config, wanted: Mapping[str, Mapping[str, str]]) -> None:
    """Create those of ``wanted`` (name: topic configs, e.g. cleanup.policy) that are missing,
    with the configured partitions and replication; never alter existing ones."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=config.bootstrap_servers,
        request_timeout_ms=10_000,
        **kafka_security(config),
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        response = await admin.create_topics(
            [
                NewTopic(
                    t,
                    config.topic_partitions,
                    config.topic_replication_factor,
                    topic_configs=dict(wanted[t]),
                )
                for t in missing
            ]
        )
        for topic, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise TransientError(f"creating topic {topic} failed: {code} {message}")
            if code == 0:
                log.info("created kafka topic %s", topic)
    finally:
        await admin.close()
