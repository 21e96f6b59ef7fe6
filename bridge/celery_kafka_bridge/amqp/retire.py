"""Retiring the queue of a topology the bridge no longer uses, without losing what it holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from itertools import count, takewhile
from typing import Any

from amqp.exceptions import NotFound

from celery_kafka_bridge.amqp.queues import queue_state, take_exclusive
from celery_kafka_bridge.amqp.topology import Leftovers

log = logging.getLogger(__name__)


_RESCAN_SECONDS = 5.0


class QueueRetirer:
    """Drains the queues of other topologies and deletes each once nothing in it can be lost.

    On a topology switch the old queue is first unbound from the event exchange, so new events
    reach only the new queue. It is consumed alongside until it holds no ready message and no
    other replica is attached; then its consumer is cancelled. It is deleted once every delivery
    taken from it is acked and it has stayed empty, with no consumer, for ``settle_seconds``
    (longer than a replica's shutdown grace, so a stopping replica's unacked messages have come
    back by then). Quorum queues cannot be deleted with if-empty, hence the settling. Anything
    that comes back resumes the draining.

    A replica still on an old topology that (re)starts during a rollout declares its queue
    again and unbinds this replica's. So the other topologies' queues and exchanges are looked
    for again every few seconds, and whenever one is found, and just before a delete,
    ``reassert`` declares and binds this replica's own topology again: the events always have a
    queue that some replica drains.
    """

    def __init__(
        self,
        conn: Any,
        channel: Any,
        exchange: str,
        on_message: Callable[[Any], None],
        leftovers: Leftovers,
        *,
        reassert: Callable[[], object],
        settle_seconds: float,
    ) -> None:
        self._conn = conn
        self._channel = channel
        self._exchange = exchange
        self._on_message = on_message
        self._reassert = reassert
        self._settle_seconds = settle_seconds
        self._leftovers = leftovers
        self._next_scan = 0.0
        self._lead = False
        self._draining: dict[str, str] = {}
        self._cancelled: dict[str, tuple[int, float]] = {}

    def start(self) -> None:
        self._scan()

    def _scan(self) -> None:
        self._next_scan = time.monotonic() + _RESCAN_SECONDS
        found = self._leftovers
        exchanges = [e for e in found.exchanges if self._exchange_exists(e)]
        queues = [q for q in found.queues if self._exists(q)]
        shards = list(takewhile(self._exists, map(found.shard, count(found.first_shard))))
        if not (exchanges or queues or shards) or not self._leading():
            return
        self._reassert()
        for exchange in exchanges:
            self._channel.exchange_delete(exchange)
            log.info("retired exchange %s of another topology: its queues get no more", exchange)
        for queue in queues:
            self._channel.queue_unbind(queue, self._exchange, "#")
        if found.shard_exchange:  # shards past K: the hash ring shrinks to the K in use
            for queue in shards:
                self._channel.queue_unbind(queue, found.shard_exchange, "1")
        for queue in queues + shards:
            if queue not in self._draining and queue not in self._cancelled:
                log.info("retiring queue %s, no longer used: unbound, draining it", queue)
                self._consume(queue)

    def _leading(self) -> bool:
        """Whether this replica is the one that retires: the holder of an exclusive queue, which
        RabbitMQ drops with its connection, so another replica takes over. (Two retirers would
        each see the other as a consumer and never let the queue go.)"""
        if not self._lead and take_exclusive(self._conn, self._leftovers.lock):
            self._lead = True
            log.info("this replica retires what other topologies left")
        return self._lead

    def _exists(self, queue: str) -> bool:
        return queue_state(self._conn, queue) is not None

    def check(self, last_delivered_tag: int, acked_through: int) -> None:
        """Advance each retiring queue: stop consuming when drained, delete when settled."""
        now = time.monotonic()
        if now >= self._next_scan:
            self._scan()
        for queue, tag in list(self._draining.items()):
            state = queue_state(self._conn, queue)
            if state is None or state == (0, 1):
                self._channel.basic_cancel(tag)
                del self._draining[queue]
                if state is not None:
                    self._cancelled[queue] = (last_delivered_tag, now)
        for queue, (through, since) in list(self._cancelled.items()):
            if acked_through < through:
                continue
            state = queue_state(self._conn, queue)
            if state == (0, 0) and now - since < self._settle_seconds:
                continue
            del self._cancelled[queue]
            if state == (0, 0):
                self._reassert()
                self._channel.queue_delete(queue)
                log.info("retired queue %s: drained and deleted", queue)
            elif state is not None:
                self._consume(queue)

    def stop(self) -> None:
        for tag in self._draining.values():
            self._channel.basic_cancel(tag)
        self._draining.clear()

    def _consume(self, queue: str) -> None:
        self._draining[queue] = self._channel.basic_consume(
            queue, no_ack=False, callback=self._on_message
        )

    def _exchange_exists(self, exchange: str) -> bool:
        channel = self._conn.channel()
        try:
            channel.exchange_declare(exchange, "x-consistent-hash", passive=True)
        except NotFound:
            return False
        channel.close()
        return True
