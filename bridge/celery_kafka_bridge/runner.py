"""The bridge's lifecycle: start Kafka, consume AMQP, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from celery_kafka_bridge import http
from celery_kafka_bridge.amqp.source import AmqpSource, Delivery
from celery_kafka_bridge.amqp.topology import topology_for
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.health import Health
from celery_kafka_bridge.kafka.errors import RETRIABLE
from celery_kafka_bridge.kafka.sink import KafkaSink
from celery_kafka_bridge.kafka.topics import Expectation, TopicAudit
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.pipeline import Pipeline
from celery_kafka_bridge.retry import retried
from celery_kafka_bridge.watchdog import Watchdog
from celery_kafka_bridge.workers import WorkerActivity

log = logging.getLogger(__name__)

STATUS_INTERVAL_SECONDS = 30.0


class _LoopListener:
    """Carries what the source thread sees onto the event loop, in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pipeline: Pipeline, health: Health) -> None:
        self._loop = loop
        self._pipeline = pipeline
        self._health = health
        self.fatal: asyncio.Future[None] = loop.create_future()

    def on_attached(self, generation: int) -> None:
        self._loop.call_soon_threadsafe(self._pipeline.attach, generation)
        self._loop.call_soon_threadsafe(self._health.set_attached, True)

    def on_detached(self, generation: int) -> None:
        self._loop.call_soon_threadsafe(self._pipeline.detach, generation)
        self._loop.call_soon_threadsafe(self._health.set_attached, False)

    def on_deliveries(self, batch: list[Delivery]) -> None:
        self._loop.call_soon_threadsafe(self._pipeline.accept, batch)

    def on_fatal(self, exc: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._fail, exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.fatal.done():
            self.fatal.set_exception(exc)


async def run_bridge(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); raise what stopped it otherwise."""
    metrics = Metrics()
    workers = WorkerActivity()
    metrics.export_workers(workers)
    loop = asyncio.get_running_loop()
    metrics.loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))  # scraped on the loop
    health = Health(config, metrics)
    async with _monitoring(config, metrics, health, workers):
        await _run_bridge(config, stop, metrics, health, workers)


@contextlib.asynccontextmanager
async def _monitoring(
    config: Config, metrics: Metrics, health: Health, workers: WorkerActivity
) -> AsyncIterator[None]:
    """HTTP endpoints, broker probes and the watchdog, from before Kafka connects to the end."""
    server = await http.serve(config.http_port, metrics, health) if config.http_port else None
    tasks = asyncio.gather(
        health.probe_kafka(),
        health.poll_queue(),
        Watchdog(config, metrics, workers).run(health.amqp_attached),
    )
    try:
        yield
    finally:
        tasks.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tasks
        if server is not None:
            await server.cleanup()


async def _run_bridge(
    config: Config,
    stop: asyncio.Event | None,
    metrics: Metrics,
    health: Health,
    workers: WorkerActivity,
) -> None:
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sink = KafkaSink(config, on_producer_reset=metrics.producer_reset)
    source = AmqpSource(config, topology_for(config))
    audit = TopicAudit(
        sink.topics.topics,
        Expectation.from_config(config),
        metrics.topic_setting_shortfall,
        metrics.topic_audits,
        _durability_gate(config, health, source),
    )
    if not await _until_stopped(_start_kafka(sink, audit), stop):
        return
    pipeline = Pipeline(
        sink,
        config.max_message_bytes,
        source.post_acks,
        source.batch_processed,
        metrics=metrics,
        workers=workers,
        kafka_denied=health.set_kafka_denied,
    )
    listener = _LoopListener(loop, pipeline, health)
    work = asyncio.gather(
        pipeline.run(),
        _status_lines(pipeline),
        sink.topics.watch(),
        sink.topics.audit(audit, config.topic_audit_seconds),
    )
    source.start(listener)
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    watched: set[asyncio.Future[Any]] = {stopped, listener.fatal, work}
    try:
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        deadline = time.monotonic() + config.shutdown_grace_seconds
        health.set_draining()
        log.info("draining: taking no new messages, waiting for kafka to confirm in-flight ones")
        source.stop_consuming()
        drained = await pipeline.drain(max(0.0, deadline - time.monotonic() - 1.0))
        await loop.run_in_executor(None, source.close, max(0.5, deadline - time.monotonic()))
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                await sink.stop()
        log.info("stopped: %s, drained=%s", pipeline.stats, drained)
    if listener.fatal.done():
        listener.fatal.result()


async def _start_kafka(sink: KafkaSink, audit: TopicAudit) -> None:
    """Connect, create the missing topics, audit them once (before any message is taken)."""
    await sink.start()
    try:
        await retried("kafka topic audit", lambda: sink.topics.check(audit), RETRIABLE)
    except BaseException:  # stopped while Kafka was away
        await sink.stop()
        raise


def _durability_gate(
    config: Config, health: Health, source: AmqpSource
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


async def _until_stopped(coro: Any, stop: asyncio.Event) -> bool:
    """Run ``coro`` unless ``stop`` is set first; True if it completed."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def _status_lines(pipeline: Pipeline) -> None:
    while True:
        await asyncio.sleep(STATUS_INTERVAL_SECONDS)
        log.info("status: %s, %d in flight", pipeline.stats, pipeline.in_flight)
