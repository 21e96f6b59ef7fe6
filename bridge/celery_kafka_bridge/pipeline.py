"""From deliveries to Kafka and back to acks: the at-least-once core.

Each delivery is decoded into records; it is acked only when Kafka confirmed every one of them
(dead letters included). Failed sends are retried with backoff, never dropped. Acks leave in
batches, as the contiguous prefix of completed deliveries of the current channel::

    AMQP thread (amqp.source)          event loop (this module)                  Kafka
    delivery ──hand-off batch──▶ accept ─▶ codec.decode ─▶ records ─▶ kafka.batches ─▶ broker
                                                                                     │ acks=all
    basic_ack ◀── post_acks ◀── AckTracker.take_acks ◀── delivery complete ◀── batch confirmed
    (multiple over the           (contiguous prefix;        (all its records in Kafka)
     unbroken prefix)             acked_through)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from celery_kafka_bridge.acks import AckOp, AckTracker
from celery_kafka_bridge.amqp.source import Delivery
from celery_kafka_bridge.codec import DeadLetter, Outcome, decode
from celery_kafka_bridge.kafka.batches import OnDone, OnFailed
from celery_kafka_bridge.kafka.sink import retried
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.workers import WorkerActivity

log = logging.getLogger(__name__)


_Token = tuple["_Pending", Outcome]


class Sender(Protocol):
    async def refresh_partitions(self) -> None: ...
    def writer(
        self, on_done: OnDone[_Token], on_failed: OnFailed
    ) -> Callable[[Outcome, _Token], None]: ...


@dataclass
class Stats:
    """Running totals, for the status and shutdown log lines."""

    messages: int = 0
    events: int = 0
    dead_letters: int = 0
    acked: int = 0

    def __str__(self) -> str:
        return (
            f"{self.messages} messages, {self.events} events, "
            f"{self.dead_letters} dead letters, {self.acked} acked"
        )


@dataclass(slots=True)
class _Pending:
    generation: int
    tag: int
    remaining: int
    received_at: float


@dataclass
class Pipeline:
    """Publishes each delivery's records and acks the delivery once Kafka has them all."""

    sink: Sender
    max_message_bytes: int
    post_acks: Callable[[int, list[AckOp], int], None]
    """Told (generation, acks, acked through) whenever deliveries may be acked."""
    batch_processed: Callable[[], None] = lambda: None
    """Told after each accepted batch is published, so the source hands off the next at once."""
    stats: Stats = field(default_factory=Stats)
    metrics: Metrics = field(default_factory=Metrics)
    workers: WorkerActivity = field(default_factory=WorkerActivity)

    def __post_init__(self) -> None:
        self._inbox: asyncio.Queue[list[Delivery] | None] = asyncio.Queue()
        self._generation = 0
        self._tracker = AckTracker()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._ack_scheduled = False
        self._kafka_failing = False
        self.metrics.watch_in_flight(lambda: self._in_flight)
        self._write = self.sink.writer(self._written, self._failed)

    @property
    def in_flight(self) -> int:
        """Deliveries taken but not yet fully confirmed by Kafka."""
        return self._in_flight

    def attach(self, generation: int) -> None:
        """A new channel is consuming; tags of earlier channels can no longer be acked."""
        self._generation = generation
        self._tracker = AckTracker()

    def detach(self, generation: int) -> None:
        if generation == self._generation:
            self._tracker = AckTracker()

    def accept(self, batch: list[Delivery]) -> None:
        self._inbox.put_nowait(batch)

    async def run(self) -> None:
        """Publish deliveries in arrival order until `drain` is called."""
        while not self._closing:
            batch = await self._inbox.get()
            if batch is None:
                return
            await retried("kafka metadata", self.sink.refresh_partitions)
            if self._closing:  # drain began while waiting: leave the batch unacked
                return
            for delivery in batch:
                self._publish(delivery)
            self.batch_processed()

    async def drain(self, timeout: float) -> bool:
        """Take nothing new; wait up to ``timeout`` for Kafka to confirm what is in flight."""
        self._closing = True
        self._inbox.put_nowait(None)
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "%d messages still unconfirmed; RabbitMQ will redeliver them", self._in_flight
            )
        self._flush_acks()
        return self._in_flight == 0

    def _publish(self, delivery: Delivery) -> None:
        outcomes = decode(delivery.envelope, self.max_message_bytes)
        received_at = delivery.envelope.received_at_ms / 1000
        pending = _Pending(delivery.generation, delivery.tag, len(outcomes), received_at)
        if delivery.generation == self._generation:
            self._tracker.add(delivery.tag)
        self._in_flight += 1
        self._idle.clear()
        self.stats.messages += 1
        self.metrics.message(delivery.redelivered)
        write = self._write
        for outcome in outcomes:
            if not isinstance(outcome, DeadLetter):
                self.metrics.consumed(outcome)
                self.workers.observe(outcome, received_at)
            write(outcome, (pending, outcome))

    def _written(self, tokens: list[_Token]) -> None:
        """A batch is in Kafka."""
        if self._kafka_failing:
            self._kafka_failing = False
            log.info("kafka sends succeed again")
        now = time.time()
        for pending, outcome in tokens:
            self._confirmed(pending, outcome, now)

    def _failed(self, records: int, exc: BaseException) -> None:
        """Kafka did not take a batch; it is sent again after a backoff."""
        if not self._kafka_failing:  # one line per state change, not one per batch
            self._kafka_failing = True
            log.warning("kafka send failed (%s); retrying with backoff", describe(exc))
        self.metrics.retried_send(records)

    def _confirmed(self, pending: _Pending, outcome: Outcome, now: float) -> None:
        if isinstance(outcome, DeadLetter):
            self.stats.dead_letters += 1
            self.metrics.dead_lettered(outcome.reason)
        else:
            self.stats.events += 1
            self.metrics.published(outcome, pending.received_at, now)
        pending.remaining -= 1
        if pending.remaining:
            return
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()
        if pending.generation == self._generation:
            self._tracker.complete(pending.tag)
            if not self._ack_scheduled:
                self._ack_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        ops, count = self._tracker.take_acks()
        if ops:
            self.stats.acked += count
            self.metrics.acked(count)
            self.post_acks(self._generation, ops, self._tracker.acked_through)
