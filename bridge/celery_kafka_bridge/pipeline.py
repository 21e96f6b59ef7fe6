"""From deliveries to Kafka and back to acks: the at-least-once core.

Each delivery is decoded into records; it is acked only when Kafka confirmed every one of them
(dead letters included). With a rules file, the `shaper.Shaper` shapes each event as it is
decoded, and a delivery whose events the rules all dropped is complete at once. Failed sends
are retried by kind (`kafka.errors`), never dropped: a
record Kafka refuses for good is dead-lettered in its place, and while Kafka refuses the bridge's
principal the bridge is unready. Acks leave in batches, as the contiguous prefix of completed
deliveries of the current channel::

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
from celery_kafka_bridge.codec import DeadLetter, Outcome, decode, kafka_rejected
from celery_kafka_bridge.kafka.batches import Listener
from celery_kafka_bridge.kafka.errors import RETRIABLE, TOO_LARGE, Kind, missing_permission
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.retry import retried
from celery_kafka_bridge.shaper import Shaper
from celery_kafka_bridge.source import Delivery
from celery_kafka_bridge.workers import WorkerActivity

log = logging.getLogger(__name__)


_Token = tuple["_Pending", Outcome]


class Sender(Protocol):
    async def refresh_partitions(self) -> None: ...
    def writer(self, listener: Listener[_Token]) -> Callable[[Outcome, _Token], None]: ...


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
    kafka_denied: Callable[[str | None], None] = lambda _reason: None
    """Told why Kafka refuses the bridge's writes (not authorized), and None once it takes
    them again (the bridge is unready meanwhile)."""
    shaper: Shaper | None = None
    """The rules file's drops, routes and redactions; None: every event as sent."""

    def __post_init__(self) -> None:
        self._inbox: asyncio.Queue[list[Delivery] | None] = asyncio.Queue()
        self._generation = 0
        self._tracker = AckTracker()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._ack_scheduled = False
        self._kafka_failing: Kind | None = None
        self._denied: set[str] = set()
        """Topics Kafka refuses the bridge's writes to (not authorized)."""
        self.metrics.watch_in_flight(lambda: self._in_flight)
        self._write = self.sink.writer(self)

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
            await retried("kafka metadata", self.sink.refresh_partitions, RETRIABLE)
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
        outcomes = decode(delivery.envelope, self.max_message_bytes, self.shaper)
        received_at = delivery.envelope.received_at_ms / 1000
        if self.shaper is not None:
            outcomes = self._settle(self.shaper, outcomes, received_at)
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
        if not outcomes:  # the rules dropped every event: nothing to wait for
            self._completed(pending)

    def _settle(self, shaper: Shaper, outcomes: list[Outcome], received_at: float) -> list[Outcome]:
        """The outcomes the rules keep; the events they drop still count as consumed and as
        signs of life of their worker (the watchdog reads heartbeats)."""
        kept, dropped = shaper.settle(outcomes)
        for record in dropped:
            self.metrics.consumed(record)
            self.workers.observe(record, received_at)
        return kept

    def written(self, topic: str, tokens: list[_Token]) -> None:
        """A batch is in ``topic``."""
        if self._kafka_failing is not None:
            self._kafka_failing = None
            log.info("kafka sends succeed again")
        if topic in self._denied:
            self._granted(topic)
        now = time.time()
        for pending, outcome in tokens:
            self._confirmed(pending, outcome, now)

    def failed(self, topic: str, records: int, exc: BaseException, kind: Kind) -> None:
        """Kafka did not take a batch; it is sent again (after a backoff, or a new producer)."""
        self.metrics.failed_send(kind, records)
        if kind is Kind.DENIED:
            if topic not in self._denied:
                self._deny(topic, exc)
        elif self._kafka_failing is not kind:  # one line per state change, not per batch
            self._kafka_failing = kind
            log.warning("kafka send failed (%s, %s); retrying", describe(exc), kind)

    def _deny(self, topic: str, exc: BaseException) -> None:
        """Kafka refuses the bridge's principal: unready, and one loud line per topic."""
        self._denied.add(topic)
        reason = f"kafka refuses writes to {topic}: {describe(exc)}"
        log.error(
            "%s; the bridge's principal needs %s; retrying slowly, nothing is lost",
            reason,
            missing_permission(exc, topic),
        )
        self.kafka_denied(reason)

    def _granted(self, topic: str) -> None:
        self._denied.discard(topic)
        log.info("kafka takes writes to %s again", topic)
        if not self._denied:
            self.kafka_denied(None)

    def rejected(self, token: _Token, exc: BaseException) -> bool:
        """Kafka will never take this record: a dead letter takes its place in the delivery."""
        pending, outcome = token
        dead = kafka_rejected(outcome, describe(exc), shrink=isinstance(exc, TOO_LARGE))
        if dead is None:
            return False
        log.warning(
            "kafka refused a record for good (%s); dead-lettered as %s", describe(exc), dead.reason
        )
        self._write(dead, (pending, dead))
        return True

    def _confirmed(self, pending: _Pending, outcome: Outcome, now: float) -> None:
        if isinstance(outcome, DeadLetter):
            self.stats.dead_letters += 1
            self.metrics.dead_lettered(outcome.reason)
        else:
            self.stats.events += 1
            self.metrics.published(outcome, pending.received_at, now)
        pending.remaining -= 1
        if not pending.remaining:
            self._completed(pending)

    def _completed(self, pending: _Pending) -> None:
        """Every record of the delivery is in Kafka: it may be acked."""
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
