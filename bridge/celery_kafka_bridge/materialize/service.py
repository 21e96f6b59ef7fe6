"""The materializer's lifecycle: take a slice's lease, rebuild the slice's state from the
tables, then apply the events topic and flush the changes until SIGTERM/SIGINT.

At-least-once: a flush writes the changed table records and the derived events, waits until
Kafka confirmed every one, and only then writes the input positions it covers. A replica that
dies between the two is replaced by one that re-applies the events after the last positions
on top of the tables, which already hold their effect: the tables come out the same, and a
derived event may be reported twice (with the same id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

import orjson

from celery_kafka_bridge import http
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.materialize.engine import MARKS_HEADER, Engine
from celery_kafka_bridge.materialize.lease import Lease
from celery_kafka_bridge.materialize.monitor import MaterializeHealth, MaterializeMetrics
from celery_kafka_bridge.materialize.store import (
    TableWriter,
    ensure_topics,
    position_prefix,
    read_table,
)
from celery_kafka_bridge.reader.stream import EventStream, Scan
from celery_kafka_bridge.runner import until_stopped

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.2
CAUGHT_UP_SECONDS = 3.0
"""The input counts as caught up when idle for a second or its last event is this recent."""


async def run_materialize(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT); raise what stopped it otherwise."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = MaterializeMetrics()
    metrics.slices.set(config.materialize_slices)
    health = MaterializeHealth(metrics)
    server = await http.serve(config.http_port, metrics, health) if config.http_port else None
    lease = Lease(config)
    try:
        if await until_stopped(lease.acquire(), stop):
            health.slice = lease.slice
            await _materialize(config, stop, lease, metrics, health)
    finally:
        health.draining = True
        lease.release()
        if server is not None:
            await server.cleanup()


async def load(config: Config, engine: Engine, partitions: list[int]) -> dict[int, int]:
    """Rebuild ``engine``'s state from the tables (the tasks of its slice: their keys map to
    its share of the events topic's ``partitions``); the input positions they cover."""
    tasks, workers, offsets = await asyncio.gather(
        *(
            read_table(config, t)
            for t in (config.tasks_topic, config.workers_topic, config.offsets_topic)
        )
    )
    for uuid, (value, headers) in tasks.items():
        if value is not None and engine.slice.owns(partition_for(uuid.encode(), partitions)):
            marks = headers.get(MARKS_HEADER, b"").decode()
            engine.restore_task(uuid, orjson.loads(value), set(filter(None, marks.split(","))))
    for value, _ in workers.values():
        if value is not None:
            engine.restore_worker(orjson.loads(value))
    positions = {}
    prefix = position_prefix(config.topic, engine.slice)
    for key, (value, _) in offsets.items():
        if key.startswith(prefix) and value is not None:
            positions[int(key.removeprefix(prefix))] = int(value)
    engine.positions.update(positions)
    return positions


async def _materialize(
    config: Config,
    stop: asyncio.Event,
    lease: Lease,
    metrics: MaterializeMetrics,
    health: MaterializeHealth,
) -> None:
    slice_ = lease.slice
    assert slice_ is not None
    await ensure_topics(config)
    engine = Engine(
        config.stuck_thresholds,
        config.tombstone_after_seconds,
        config.completeness_grace_seconds,
        config.max_tasks,
        slice_,
    )
    writer = TableWriter(config, metrics, slice_)
    await writer.start()
    try:
        positions = await load(config, engine, await writer.partitions(config.topic))
        log.info(
            "materialize state loaded: slice %s, %d tasks, %d workers, positions %s",
            slice_,
            len(engine.state.tasks),
            len(engine.books),
            positions,
        )
        scan = Scan(
            config.bootstrap_servers,
            config.topic,
            follow=True,
            start_offsets=positions,
            reads=slice_.reads,
        )
        health.loaded = True
        async with EventStream(scan) as stream:
            apply = _Applier(engine, metrics)
            work = asyncio.gather(
                apply.run(stream), _flushes(engine, writer, apply, health, metrics)
            )
            assert lease.lost is not None
            stopped = asyncio.ensure_future(stop.wait())
            watched: set[asyncio.Future[Any]] = {work, stopped, lease.lost}
            await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if work.done():
                work.result()  # reading or writing failed for good
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            if lease.lost.done():
                lease.lost.result()  # another replica may be writing: write nothing more
            health.draining = True
            await writer.write(engine.take(time.time()))  # what was applied, before exiting
    finally:
        await writer.stop()


class _Applier:
    """Applies the events as they come; knows whether the input is caught up."""

    def __init__(self, engine: Engine, metrics: MaterializeMetrics) -> None:
        self._engine = engine
        self._metrics = metrics
        self._last_applied = time.monotonic()
        self._last_event_at = 0.0

    async def run(self, stream: EventStream) -> None:
        engine, read = self._engine, self._metrics.events
        scanned = stream.stats.scanned
        async for batch in stream.batches():
            for event in batch:
                engine.apply(event)
            engine.advance(stream.read_through)
            read.inc(stream.stats.scanned - scanned)
            scanned = stream.stats.scanned
            self._last_applied = time.monotonic()
            self._last_event_at = (
                max((ms for _, ms in stream.read_through.values()), default=0) / 1000
            )

    @property
    def caught_up(self) -> bool:
        idle = time.monotonic() - self._last_applied > 1.0
        return idle or time.time() - self._last_event_at < CAUGHT_UP_SECONDS

    @property
    def lag(self) -> float:
        if time.monotonic() - self._last_applied > 1.0:
            return 0.0
        return max(0.0, time.time() - self._last_event_at)


async def _flushes(
    engine: Engine,
    writer: TableWriter,
    apply: _Applier,
    health: MaterializeHealth,
    metrics: MaterializeMetrics,
) -> None:
    """Forever: derive, take the changes, write them, commit."""
    while True:
        metrics.tasks.set(len(engine.state.tasks))
        metrics.lag.set(apply.lag)
        await asyncio.sleep(FLUSH_SECONDS)
        now = time.time()
        engine.check(now, apply.caught_up)
        flush = engine.take(now)
        health.writes_pending(True)
        await writer.write(flush)
        health.writes_pending(False)
