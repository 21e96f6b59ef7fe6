"""How the bridge's queues and Celery's event exchange are declared and consumed, whatever the
topology."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from amqp.exceptions import NotFound, ResourceLocked
from kombu.connection import Connection
from kombu.entity import Exchange
from kombu.exceptions import OperationalError

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.tls import amqp_ssl

log = logging.getLogger(__name__)


def event_exchange(name: str) -> Exchange:
    """Celery's event exchange, declared exactly as Celery declares it (topic, durable)."""
    return Exchange(name, type="topic", durable=True, auto_delete=False)


def queue_arguments(config: Config, server_version: str) -> dict[str, Any]:
    """Arguments of the bridge queue: durable type, optional length bound, delivery limit."""
    args: dict[str, Any] = {"x-queue-type": config.queue_type}
    if config.queue_max_length is not None:
        args["x-max-length"] = config.queue_max_length
        args["x-overflow"] = config.queue_overflow
    if config.dead_letter_exchange is not None:
        args["x-dead-letter-exchange"] = config.dead_letter_exchange
    if config.queue_type == "quorum":
        if config.delivery_limit is not None:
            args["x-delivery-limit"] = config.delivery_limit
        elif _major(server_version) >= 4:
            # 4.0+ defaults quorum queues to 20 deliveries and then drops; -1 is unlimited there.
            # On 3.x the limit is unlimited when absent, and -1 would drop after one delivery.
            args["x-delivery-limit"] = -1
    return args


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def queue_state(conn: Any, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of a queue, or None if it does not exist.

    Asked on a channel of its own, because a failed passive declare closes its channel.
    """
    channel = conn.channel()
    try:
        _, ready, consumers = channel.queue_declare(queue, passive=True)
    except NotFound:
        return None
    channel.close()
    return int(ready), int(consumers)


class QueueDepth:
    """Ready messages and consumers of the bridge's queues, on a kombu connection of its own kept
    open between polls (blocking calls, each on some worker thread)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._conn: Any = None
        # A poll still connecting when the poller is cancelled must not leave a connection behind.
        self._lock = threading.Lock()
        self._closed = False

    def poll(self) -> tuple[int, int] | None:
        """Ready messages of every queue and the consumers of the busiest-attached one; None if
        RabbitMQ is away, no queue exists yet (the consumer side reports those) or closed."""
        config = self._config
        with self._lock:
            if self._closed:
                return None
            if self._conn is None:
                self._conn = Connection(config.amqp_url, connect_timeout=5, ssl=amqp_ssl(config))
            conn = self._conn
            try:
                states = [queue_state(conn.connection, queue) for queue in config.event_queues]
            except (OSError, OperationalError, *conn.connection_errors, *conn.channel_errors) as e:
                log.debug("polling the queue depth failed: %s", describe(e))
                self._release()
                return None
        found = [state for state in states if state is not None]
        if not found:
            return None
        return sum(ready for ready, _ in found), max(consumers for _, consumers in found)

    def close(self) -> None:
        """Release the connection; later polls return None."""
        with self._lock:
            self._closed = True
            self._release()

    def _release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            close_quietly(conn)


class ConsumerChannel:
    """A channel holding one consumer, closed to stop it.

    Closing, unlike ``basic.cancel``, is what RabbitMQ handles as the consumer gone: in one step
    it takes back every message it had sent the channel and not had acked, those still on their
    way included, and puts them at the head of the queue, ahead of anything the next consumer
    (under single-active-consumer, the next active one) gets. A cancelled quorum-queue consumer
    keeps them until its channel sends them back, after the next consumer started with later
    messages. Deliveries that reach a closing channel are dropped (`amqp.frames`): RabbitMQ
    sends them again.
    """

    def __init__(
        self, conn: Any, prefetch: int, queue: str, callback: Callable[[Any], None]
    ) -> None:
        self.queue = queue
        self.channel = conn.channel()
        self.channel.auto_decode = False  # keep bodies as the exact bytes the worker sent
        self.channel.basic_qos(0, prefetch, False)
        self.tag: str = self.channel.basic_consume(queue, no_ack=False, callback=callback)

    def close(self) -> None:
        self.channel.close()


def close_quietly(conn: Any) -> None:
    """Release a kombu connection, logging (at DEBUG) rather than raising if that fails."""
    try:
        conn.release()
    except (OSError, *conn.connection_errors):
        log.debug("closing an amqp connection failed", exc_info=True)


def take_exclusive(conn: Any, queue: str) -> bool:
    """Declare ``queue`` exclusive to this connection, unless another one holds it: a lock
    that RabbitMQ releases when the holder's connection goes."""
    channel = conn.channel()  # a refused declare closes its channel
    try:
        channel.queue_declare(queue, exclusive=True)
    except ResourceLocked:
        return False
    channel.close()
    return True


def held_elsewhere(conn: Any, queue: str) -> bool:
    """Whether another connection holds the exclusive ``queue``."""
    channel = conn.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except ResourceLocked:
        return True
    except NotFound:
        return False
    channel.close()
    return False  # only this connection's own exclusive queue answers a passive declare
