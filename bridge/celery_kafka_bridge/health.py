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
from celery_kafka_bridge.sources import Source
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

KAFKA_PROBE_INTERVAL = 1.0
KAFKA_PROBE_TIMEOUT = 2.0
STALE_AFTER = KAFKA_PROBE_INTERVAL + KAFKA_PROBE_TIMEOUT + 2.0
"""A Kafka answer older than this no longer counts (the probe loop itself may be stuck)."""
QUEUE_POLL_INTERVAL = 5.0


class Health:
    """What the bridge knows about both sides; the source of /readyz and the state metrics."""

    def __init__(self, config: Config, metrics: Metrics, sources: list[Source]) -> None:
        self._config = config
        self._metrics = metrics
        self._named = sources[0].name is not None
        self._kinds = {source.label: source.config.broker_kind for source in sources}
        self._sources = dict.fromkeys(self._kinds, "not attached")
        """Each source's state: attached, or why not."""
        self.source_attached = asyncio.Event()
        """Set while any source consumes."""
        self.draining = False
        self._kafka_answered_at: float | None = None
        self._kafka_error = "not probed yet"
        self._kafka_denied: str | None = None
        self._topics_short: str | None = None
        self._ready = False
        for kind in {*self._kinds.values(), "kafka"}:
            metrics.connection_up.labels(kind).set(0)
        for label in self._kinds:
            metrics.source_up.labels(label).set(0)

    def set_attached(self, attached: bool, source: str = "default", reason: str = "") -> None:
        """The source is consuming (an AMQP consumer registered, Redis subscribed), or not
        (``reason``: why, if known)."""
        self._sources[source] = "attached" if attached else reason or "not attached"
        up = {label for label, state in self._sources.items() if state == "attached"}
        if up:
            self.source_attached.set()
        else:
            self.source_attached.clear()
        kind = self._kinds[source]
        same_kind = [label for label, k in self._kinds.items() if k == kind]
        self._metrics.connection_up.labels(kind).set(int(set(same_kind) <= up))
        self._metrics.source_up.labels(source).set(int(attached))
        self._update()

    def set_kafka_denied(self, reason: str | None) -> None:
        """Kafka refuses the bridge's writes (not authorized), or (None) takes them again."""
        self._kafka_denied = reason
        self._update()

    def set_topics_short(self, reason: str | None) -> None:
        """A topic falls short of the expected durability (BRIDGE_REQUIRE_DURABLE_TOPICS), or
        (None) no longer does."""
        self._topics_short = reason
        self._update()

    def set_draining(self) -> None:
        """Shutting down: no longer ready, so traffic and rollouts move on."""
        self.draining = True
        self._update()

    def status(self) -> tuple[bool, dict[str, Any]]:
        """Ready or not, and each check's state, from cached results only."""
        answered = self._kafka_answered_at
        kafka_ok = answered is not None and time.monotonic() - answered < STALE_AFTER
        checks: dict[str, Any] = (
            {"sources": dict(self._sources)}
            if self._named
            else {self._kinds["default"]: self._sources["default"]}
        )
        checks |= {
            "kafka": "ok" if kafka_ok else self._kafka_error,
            "kafka_writes": self._kafka_denied or "ok",
            "topics": self._topics_short or "ok",
            "draining": self.draining,
        }
        attached = all(state == "attached" for state in self._sources.values())
        ready = attached and kafka_ok and not self._kafka_denied and not self._topics_short
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
            failing = {f"source {n}": v for n, v in checks.pop("sources", {}).items()}
            reasons = [
                name if value is True else f"{name} {value}"
                for name, value in (checks | failing).items()
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
            # Blocking, once, at the end: an await here could be cancelled in turn and leave the
            # connection open (it waits for a poll still running on its thread).
            poller.close()


async def _close_quietly(client: AIOKafkaClient) -> None:
    try:
        await client.close()
    except (KafkaError, OSError):
        log.debug("closing the kafka health client failed", exc_info=True)
