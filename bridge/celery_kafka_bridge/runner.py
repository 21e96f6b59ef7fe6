"""The bridge's lifecycle: start Kafka, consume each source (a RabbitMQ queue or Redis pub/sub)
in a lane of its own, drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from celery_kafka_bridge import http
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.health import Health
from celery_kafka_bridge.lane import Lane
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.rules import load_rules
from celery_kafka_bridge.shaper import Shaper
from celery_kafka_bridge.sources import Source, sources_of
from celery_kafka_bridge.watchdog import Watchdog
from celery_kafka_bridge.workers import WorkerActivity

log = logging.getLogger(__name__)


async def run_bridge(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); raise what stopped it otherwise.

    With one source, its failure stops the bridge; with several (``BRIDGE_SOURCES_FILE``), a
    failed source is reported unready and the others go on. A sources or rules file that
    cannot be used raises `ConfigError` before anything connects."""
    sources = sources_of(config)
    shaper = Shaper(load_rules(config.rules_file)) if config.rules_file else None
    metrics = Metrics()
    if shaper is not None:
        metrics.export_rules(shaper)
    workers = WorkerActivity()
    metrics.export_workers(workers)
    loop = asyncio.get_running_loop()
    metrics.loop_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))  # scraped on the loop
    health = Health(config, metrics, sources)
    async with _monitoring(config, sources, metrics, health, workers):
        lanes = [Lane(source, metrics, health, workers, shaper) for source in sources]
        await _run_bridge(config, lanes, health, stop or asyncio.Event())


@contextlib.asynccontextmanager
async def _monitoring(
    config: Config,
    sources: list[Source],
    metrics: Metrics,
    health: Health,
    workers: WorkerActivity,
) -> AsyncIterator[None]:
    """HTTP endpoints, broker probes and the watchdog, from before Kafka connects to the end."""
    server = await http.serve(config.http_port, metrics, health) if config.http_port else None
    # The queue depth gauges describe one AMQP queue: a single source's.
    queue = len(sources) == 1 and sources[0].config.broker_kind == "amqp"
    tasks = asyncio.gather(
        health.probe_kafka(),
        Watchdog(sources[0].config, metrics, workers).run(health.source_attached),
        *([health.poll_queue()] if queue else []),
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
    config: Config, lanes: list[Lane], health: Health, stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = [asyncio.ensure_future(lane.start()) for lane in lanes]
    try:
        started = await until_stopped(asyncio.gather(*starting), stop)
    except BaseException:
        for task in starting:  # a lane that failed to start stops the others' starts
            task.cancel()
        await _drain(config, lanes, health)
        raise
    if not started:
        await _drain(config, lanes, health)
        return
    stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
    try:
        failure = await _watch(lanes, stopped)
    finally:
        stopped.cancel()
        await _drain(config, lanes, health)
    if failure is not None:
        raise failure


async def _drain(config: Config, lanes: list[Lane], health: Health) -> None:
    """Stop every lane that started, within the shutdown grace period."""
    running = [lane for lane in lanes if lane.work is not None]
    if not running:
        return
    deadline = time.monotonic() + config.shutdown_grace_seconds
    health.set_draining()
    log.info("draining: taking no new messages, waiting for kafka to confirm in-flight ones")
    await asyncio.gather(*(lane.stop(deadline) for lane in running))


async def _watch(lanes: list[Lane], stopped: asyncio.Future[Any]) -> BaseException | None:
    """Wait for the stop signal or a lane's failure. A lane's pipeline that ends, or the only
    lane's source that fails, stops the bridge (returned); one failed source of several is left
    failed (unready) while the others go on."""
    fatal = {lane.listener.fatal: lane for lane in lanes}
    watched: set[asyncio.Future[Any]] = {
        stopped,
        *fatal,
        *(lane.work for lane in lanes if lane.work),
    }
    while True:
        done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            if future is stopped:
                return None
            lane = fatal.get(future)
            if lane is None or len(lanes) == 1:
                return future.exception()
            log.error(
                "source %s failed: %s; the others go on", lane.name, describe(future.exception())
            )
            watched.discard(future)


async def until_stopped(coro: Any, stop: asyncio.Event) -> bool:
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
