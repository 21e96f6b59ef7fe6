"""Knowing when Celery is silent: workers alive and working, yet sending no task events.

Workers started without ``-E`` (or ``worker_send_task_events``) still send worker-* events, and
their heartbeats count the tasks they processed. A worker whose processed count grew after its
last task event, with no task event for a while, has its task events switched off; an idle
worker, or one busy with a long task, is not flagged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import orjson
from celery import Celery

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.tls import amqp_ssl
from celery_kafka_bridge.workers import WorkerActivity

log = logging.getLogger(__name__)

MAX_CHECK_INTERVAL = 5.0


@dataclass
class _Worker:
    processed: int
    """The processed count of the first heartbeat after its last task event (or first seen)."""
    baseline_at: float
    """When that heartbeat arrived."""
    quiet_since: float
    last_task_event: float = float("-inf")


class Watchdog:
    """Warns about, and counts, workers without task events; optionally wakes them at start."""

    def __init__(self, config: Config, metrics: Metrics, workers: WorkerActivity) -> None:
        self._config = config
        self._metrics = metrics
        self._activity = workers
        self._workers: dict[str, _Worker] = {}
        self.silent: set[str] = set()

    async def run(self, attached: asyncio.Event) -> None:
        """Forever: check for silence; once the bridge queue exists, wake workers if asked."""
        await attached.wait()  # the queue is declared: the workers' answers have somewhere to go
        if self._config.enable_events_on_start:
            # A daemon thread: a broker that hangs must not hold up the shutdown.
            threading.Thread(target=wake_workers, args=(self._config,), daemon=True).start()
        interval = min(MAX_CHECK_INTERVAL, self._config.silent_task_events_seconds / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            self.check(now)
            self._activity.forget(now)

    def check(self, now: float) -> None:
        """Update the silent workers from their recorded activity; log each change once."""
        beats = self._beats()
        for gone in self._workers.keys() - beats.keys():
            del self._workers[gone]
        silent = {host for host, beat in beats.items() if self._is_silent(host, beat, now)}
        for host in sorted(silent - self.silent):
            log.warning(
                "worker %s sends heartbeats and processes tasks, but sent no task event for "
                "%.0fs: it was likely started without -E (worker_send_task_events off); "
                "restart it with -E, run `celery control enable_events`, or set "
                "BRIDGE_ENABLE_EVENTS_ON_START=true",
                host,
                now - self._workers[host].quiet_since,
                extra={"state": "task_events_silent", "hostname": host},
            )
        for host in sorted(self.silent - silent):
            log.info(
                "worker %s sends task events again or went quiet",
                host,
                extra={"state": "task_events_arriving", "hostname": host},
            )
        self.silent = silent
        self._metrics.silent_workers.set(len(silent))

    def _is_silent(self, host: str, beat: tuple[float, int], now: float) -> bool:
        beat_at, processed = beat
        worker = self._workers.setdefault(host, _Worker(processed, beat_at, now))
        last_task_event = self._activity.last_task_event.get(host, float("-inf"))
        if last_task_event > worker.last_task_event:
            worker.last_task_event = worker.quiet_since = last_task_event
        if worker.baseline_at <= worker.last_task_event:
            # Work counted up to here had task events: compare later heartbeats with this one.
            worker.processed, worker.baseline_at = processed, beat_at
            return False
        window = self._config.silent_task_events_seconds
        return (
            now - worker.quiet_since >= window
            and now - beat_at < window
            and processed > worker.processed
        )

    def _beats(self) -> dict[str, tuple[float, int]]:
        """(received at, processed count) of each worker's latest heartbeat."""
        beats = {}
        for host, (received_at, body) in list(self._activity.heartbeats.items()):
            try:
                beats[host] = (received_at, int(orjson.loads(body).get("processed", 0)))
            except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
                continue
        return beats


def wake_workers(config: Config) -> None:
    """Tell every worker to send task events and a heartbeat now (``celery control``)."""
    app = Celery(broker=config.amqp_url, set_as_current=False)
    app.conf.update(
        broker_use_ssl=amqp_ssl(config),
        control_exchange=config.control_exchange,
        broker_connection_timeout=5,
        broker_connection_max_retries=3,
    )
    try:
        app.control.enable_events()
        app.control.heartbeat()
        log.info("asked every worker to send task events and a heartbeat")
    except Exception as exc:  # best effort: the watchdog still warns if it matters
        log.warning("could not broadcast enable_events to the workers: %s", describe(exc))
    finally:
        app.close()
