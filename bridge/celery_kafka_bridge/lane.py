"""One source's way into Kafka: its consumer thread, its pipeline and its producer. A bridge runs
one lane per source (`sources`), so a source that fails stalls nothing but itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from celery_kafka_bridge.amqp.source import AmqpSource
from celery_kafka_bridge.amqp.topology import topology_for
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.health import Health
from celery_kafka_bridge.kafka.errors import RETRIABLE
from celery_kafka_bridge.kafka.sink import KafkaSink
from celery_kafka_bridge.kafka.topics import Expectation, TopicAudit
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.pipeline import Pipeline
from celery_kafka_bridge.redis.source import RedisSource
from celery_kafka_bridge.retry import retried
from celery_kafka_bridge.shaper import Shaper
from celery_kafka_bridge.source import Delivery, SourceThread
from celery_kafka_bridge.sources import Source
from celery_kafka_bridge.workers import WorkerActivity

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 30.0


class _LoopListener:
    """Carries what the source thread sees onto the event loop, in order."""

    def __init__(self, lane: str, pipeline: Pipeline, health: Health) -> None:
        self._loop = asyncio.get_running_loop()
        self._lane = lane
        self._pipeline = pipeline
        self._health = health
        self.fatal: asyncio.Future[None] = self._loop.create_future()

    def on_attached(self, generation: int) -> None:
        self._loop.call_soon_threadsafe(self._pipeline.attach, generation)
        self._loop.call_soon_threadsafe(self._health.set_attached, True, self._lane)

    def on_detached(self, generation: int) -> None:
        self._loop.call_soon_threadsafe(self._pipeline.detach, generation)
        self._loop.call_soon_threadsafe(self._health.set_attached, False, self._lane)

    def on_deliveries(self, batch: list[Delivery]) -> None:
        self._loop.call_soon_threadsafe(self._pipeline.accept, batch)

    def on_fatal(self, exc: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._fail, exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.fatal.done():
            self._health.set_attached(False, self._lane, f"failed: {describe(exc)}")
            self.fatal.set_exception(exc)


class Lane:
    """A source's consumer, pipeline and producer, started and drained together."""

    def __init__(
        self,
        source: Source,
        metrics: Metrics,
        health: Health,
        workers: WorkerActivity,
        shaper: Shaper | None = None,
    ) -> None:
        config = self.config = source.config
        self.name = source.label
        self.sink = KafkaSink(
            config,
            on_producer_reset=metrics.producer_reset,
            source=source.name,
            routed_topics=shaper.topics if shaper is not None else (),
        )
        self.source = _source_thread(source, metrics)
        self.pipeline = Pipeline(
            self.sink,
            config.max_message_bytes,
            self.source.post_acks,
            self.source.batch_processed,
            metrics=metrics,
            workers=workers,
            kafka_denied=health.set_kafka_denied,
            shaper=shaper,
        )
        self.audit = TopicAudit(
            self.sink.topics.topics,
            Expectation.from_config(config),
            metrics.topic_setting_shortfall,
            metrics.topic_audits,
            _durability_gate(config, health, self.source),
        )
        metrics.export_counts(self.name, self._counts)
        self.listener = _LoopListener(self.name, self.pipeline, health)
        self.work: asyncio.Future[Any] | None = None

    async def start(self) -> None:
        """Connect the producer (retrying until Kafka answers), create the missing topics and
        audit them once, then consume."""
        await self.sink.start()
        try:
            await retried(
                "kafka topic audit", lambda: self.sink.topics.check(self.audit), RETRIABLE
            )
        except BaseException:  # stopped while Kafka was away
            await self.sink.stop()
            raise
        self.work = asyncio.gather(
            self.pipeline.run(),
            self._status_lines(),
            self.sink.topics.watch(),
            self.sink.topics.audit(self.audit, self.config.topic_audit_seconds),
        )
        self.source.start(self.listener)

    async def stop(self, deadline: float) -> None:
        """Take nothing new, let Kafka confirm what is in flight until ``deadline``
        (``time.monotonic``), then disconnect both sides."""
        self.source.stop_consuming()
        drained = await self.pipeline.drain(max(0.0, deadline - time.monotonic() - 1.0))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.source.close, max(0.5, deadline - time.monotonic()))
        if self.work is not None:
            self.work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.work
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                await self.sink.stop()
        log.info("stopped %s: %s, drained=%s", self.name, self.pipeline.stats, drained)

    def _counts(self) -> dict[str, tuple[str, float]]:
        stats = self.pipeline.stats
        return {
            "source_events_published_total": (
                "Events of this source Kafka confirmed.",
                stats.events,
            ),
            "source_dead_letters_total": (
                "Dead letters of this source Kafka confirmed.",
                stats.dead_letters,
            ),
        }

    async def _status_lines(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_SECONDS)
            stats, in_flight = self.pipeline.stats, self.pipeline.in_flight
            log.info("status %s: %s, %d in flight", self.name, stats, in_flight)


def _source_thread(source: Source, metrics: Metrics) -> SourceThread:
    config = source.config
    if config.broker_kind == "redis":
        redis_source = RedisSource(config)
        metrics.export_counts(source.label, redis_source.metrics)
        return redis_source
    return AmqpSource(config, topology_for(config))


def _durability_gate(
    config: Config, health: Health, source: SourceThread
) -> Callable[[str | None], None]:
    """What a topic short of the expected settings does: with BRIDGE_REQUIRE_DURABLE_TOPICS,
    the bridge is unready and takes no messages until it is fixed; otherwise only the audit's
    warnings and gauge tell."""

    def on_change(reason: str | None) -> None:
        if not config.require_durable_topics:
            return
        health.set_topics_short(reason)
        source.hold(reason is not None)
        if reason:
            log.warning("holding: taking no messages until the topics are as expected")
        else:
            log.info("the topics are as expected: taking messages")

    return on_change
