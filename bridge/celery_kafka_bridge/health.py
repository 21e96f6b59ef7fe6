"""Readiness and broker probes: is the consumer attached, does Kafka answer, how deep is the queue.

`/readyz` must never block on a broker, so the probes run on their own schedule and `Health`
keeps their last result with its time; a result older than a few probe periods counts as failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from celery_kafka_bridge.amqp.queues import QueueDepth
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

KAFKA_PROBE_INTERVAL = 1.0
KAFKA_PROBE_TIMEOUT = 2.0
STALE_AFTER = KAFKA_PROBE_INTERVAL + KAFKA_PROBE_TIMEOUT + 2.0
"""A Kafka answer older than this no longer counts (the probe loop itself may be stuck)."""
QUEUE_POLL_INTERVAL = 5.0


class Health:
    """What the bridge knows about both sides; the source of /readyz and the state metrics."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._side = config.broker_kind  # the source's name in checks and metrics
        self.source_attached = asyncio.Event()
        self.draining = False
        self._kafka_answered_at: float | None = None
        self._kafka_error = "not probed yet"
        self._kafka_denied: str | None = None
        self._ready = False
        metrics.connection_up.labels(self._side).set(0)
        metrics.connection_up.labels("kafka").set(0)

    def set_attached(self, attached: bool) -> None:
        """The source is consuming (an AMQP consumer registered, Redis subscribed), or not."""
        if attached:
            self.source_attached.set()
        else:
            self.source_attached.clear()
        self._metrics.connection_up.labels(self._side).set(int(attached))
        self._update()

    def set_kafka_denied(self, reason: str | None) -> None:
        """Kafka refuses the bridge's writes (not authorized), or (None) takes them again."""
        self._kafka_denied = reason
        self._update()

    def set_draining(self) -> None:
        """Shutting down: no longer ready, so traffic and rollouts move on."""
        self.draining = True
        self._update()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Ready or not, and each check's state, from cached results only."""
        answered = self._kafka_answered_at
        kafka_ok = answered is not None and time.monotonic() - answered < STALE_AFTER
        checks: dict[str, Any] = {
            self._side: "attached" if self.source_attached.is_set() else "not attached",
            "kafka": "ok" if kafka_ok else self._kafka_error,
            "kafka_writes": self._kafka_denied or "ok",
            "draining": self.draining,
        }
        ready = self.source_attached.is_set() and kafka_ok and not self._kafka_denied
        return ready and not self.draining, checks

    def _update(self) -> None:
        ready, checks = self.status()
        self._metrics.ready.set(int(ready))
        if ready == self._ready:
            return
        self._ready = ready
        if ready:
            log.info("ready", extra={"state": "ready"})
        else:
            reasons = [
                name if value is True else f"{name} {value}"
                for name, value in checks.items()
                if value not in ("ok", "attached", False)
            ]
            log.warning("not ready: %s", ", ".join(reasons), extra={"state": "not_ready"})

    async def probe_kafka(self) -> None:
        """Forever: a metadata round trip to Kafka every second, on a client of its own.

        Its own client, so a probe cancelled by its timeout never disturbs the producer's
        connections; a real request, because a frozen broker keeps its sockets open.
        """
        client: AIOKafkaClient | None = None
        try:
            while True:
                try:
                    async with asyncio.timeout(KAFKA_PROBE_TIMEOUT):
                        if client is None:
                            client = self._kafka_client()
                            await client.bootstrap()
                        await client.fetch_all_metadata()
                except (KafkaError, OSError, TimeoutError) as exc:
                    self._kafka_failed(exc)
                    if client is not None:
                        await _close_quietly(client)
                        client = None
                else:
                    self._kafka_answered_at = time.monotonic()
                    self._metrics.connection_up.labels("kafka").set(1)
                self._update()
                await asyncio.sleep(KAFKA_PROBE_INTERVAL)
        finally:
            if client is not None:
                await _close_quietly(client)

    def _kafka_client(self) -> AIOKafkaClient:
        config = self._config
        return AIOKafkaClient(
            bootstrap_servers=config.bootstrap_servers,
            client_id="celery-kafka-bridge-health",
            request_timeout_ms=int(KAFKA_PROBE_TIMEOUT * 1000),
            **kafka_security(config),
        )

    def _kafka_failed(self, exc: BaseException) -> None:
        if isinstance(exc, TimeoutError):
            self._kafka_error = f"no answer within {KAFKA_PROBE_TIMEOUT:.0f}s"
        else:
            self._kafka_error = describe(exc)
        self._kafka_answered_at = None
        self._metrics.connection_up.labels("kafka").set(0)

    async def poll_queue(self) -> None:
        """Forever: the bridge queue's depth and consumers, on a connection of its own."""
        poller = QueueDepth(self._config)
        try:
            while True:
                state = await asyncio.to_thread(poller.poll)
                if state is not None:
                    self._metrics.queue_messages.set(state[0])
                    self._metrics.queue_consumers.set(state[1])
                await asyncio.sleep(QUEUE_POLL_INTERVAL)
        finally:
            await asyncio.to_thread(poller.close)


async def _close_quietly(client: AIOKafkaClient) -> None:
    try:
        await client.close()
    except (KafkaError, OSError):
        log.debug("closing the kafka health client failed", exc_info=True)
