"""Knowing when Celery is silent: workers alive and working, yet no task events arrive.

Workers started without ``-E`` (or ``worker_send_task_events``) still send worker-* events, and
their heartbeats count the tasks they processed; so heartbeats showing work with no task event
for a while mean the task events are switched off, not that the cluster is idle.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import orjson
from celery import Celery

from bridge.config import Config
from bridge.logs import describe
from bridge.metrics import Metrics
from bridge.tls import amqp_ssl

log = logging.getLogger(__name__)

MAX_CHECK_INTERVAL = 5.0


class Watchdog:
    """Raises the silent-Celery warning and metric; optionally wakes the workers at start."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._quiet_since = time.time()
        self._last_task_event_at = 0.0
        self._baseline: dict[str, int] = {}
        self.silent = False

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
            self._metrics.forget_workers(now)

    def check(self, now: float) -> None:
        """Update the silent state from what the pipeline recorded; log each change once."""
        beats = self._beats()
        for host, (processed, _) in beats.items():
            self._baseline.setdefault(host, processed)
        hosts = self._silent_hosts(beats, now)
        if bool(hosts) == self.silent:
            return
        self.silent = bool(hosts)
        self._metrics.task_events_silent.set(int(self.silent))
        if self.silent:
            log.warning(
                "workers %s send heartbeats and process tasks, but no task event arrived for "
                "%.0fs: they were likely started without -E (worker_send_task_events off); "
                "restart them with -E, run `celery control enable_events`, or set "
                "BRIDGE_ENABLE_EVENTS_ON_START=true",
                ", ".join(hosts),
                now - self._quiet_since,
                extra={"state": "task_events_silent"},
            )
        else:
            log.info("task events are arriving again", extra={"state": "task_events_arriving"})

    def _silent_hosts(self, beats: dict[str, tuple[int, int]], now: float) -> list[str]:
        """Workers heard from lately whose heartbeats show work, while no task event came."""
        last_task_event_at = self._metrics.last_task_event_at
        if last_task_event_at > self._last_task_event_at:
            self._last_task_event_at = self._quiet_since = last_task_event_at
            self._baseline = {host: processed for host, (processed, _) in beats.items()}
            return []
        window = self._config.silent_task_events_seconds
        if now - self._quiet_since < window:
            return []
        seen = self._metrics.last_seen
        return sorted(
            host
            for host, (processed, active) in beats.items()
            if now - seen.get(host, 0.0) < window
            and (processed > self._baseline[host] or active > 0)
        )

    def _beats(self) -> dict[str, tuple[int, int]]:
        """(processed, active) from each worker's latest heartbeat."""
        beats = {}
        for host, body in list(self._metrics.heartbeats.items()):
            try:
                beat = orjson.loads(body)
                beats[host] = (int(beat.get("processed", 0)), int(beat.get("active", 0)))
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
