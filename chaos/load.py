"""Load generators and their own log: the witness every scenario counts against.

Every event carries a unique task uuid ``<prefix>-<index>``, so the log is just which indices
the broker accepted and when; Kafka is then checked for those uuids.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import amqp
import orjson

from harness.support import publish_events

log = logging.getLogger(__name__)

_RECONNECT_SECONDS = 0.2


@dataclass
class LoadLog:
    """Which events the broker accepted (index -> monotonic time), and publishes that failed."""

    prefix: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:8]}@load")
    accepted: dict[int, float] = field(default_factory=dict)
    refused: int = 0

    def mark(self, index: int) -> None:
        self.accepted[index] = time.monotonic()

    def task_id(self, index: int) -> bytes:
        return f"{self.prefix}-{index}".encode()

    def task_ids(self, since: float = 0.0) -> set[bytes]:
        """Task ids of the events accepted at or after monotonic time ``since``."""
        return {self.task_id(i) for i, at in list(self.accepted.items()) if at >= since}

    def first_after(self, moment: float, count: int = 20) -> list[bytes]:
        """Task ids of the first ``count`` events accepted after ``moment``."""
        later = sorted((at, i) for i, at in list(self.accepted.items()) if at > moment)
        return [self.task_id(i) for _, i in later[:count]]


def celery_event(prefix: str, index: int) -> dict[str, Any]:
    """A ``task-received`` event with every field Celery's dispatcher sets."""
    return {
        "hostname": prefix,
        "utcoffset": 0,
        "pid": 4242,
        "clock": index + 1,
        "uuid": f"{prefix}-{index}",
        "name": "tests.add",
        "args": "(1, 2)",
        "kwargs": "{}",
        "root_id": None,
        "parent_id": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timestamp": time.time(),
        "type": "task-received",
    }


class ConfirmedPublisher:
    """Publishes Celery-shaped events with publisher confirms, so 'accepted' is exact.

    A publish that fails or is not confirmed is retried on a new connection under the next
    index; its event may or may not have reached the queue, so it counts as refused, never as
    accepted.
    """

    def __init__(self, exchange: str, load: LoadLog, per_message: int = 1) -> None:
        self.exchange = exchange
        self.load = load
        self.per_message = per_message
        self._conn: amqp.Connection | None = None
        self._chan: Any = None
        self._next = 0

    def run(self, events: int, rate: float, stop: threading.Event | None = None) -> None:
        """Publish ``events`` events at ``rate`` events/s, then close with a round trip."""
        started = time.monotonic()
        while self._next < events and not (stop and stop.is_set()):
            self.publish_batch()
            ahead = self._next / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        self.close()

    def publish_batch(self) -> None:
        indices = list(range(self._next, self._next + self.per_message))
        self._next += self.per_message
        events = [celery_event(self.load.prefix, i) for i in indices]
        body, routing_key = (
            (orjson.dumps(events[0]), "task.received")
            if len(events) == 1
            else (orjson.dumps(events), "task.multi")
        )
        if self.send(body, "application/json", routing_key):
            for i in indices:
                self.load.mark(i)
        else:
            self.load.refused += len(indices)

    def send(self, body: bytes, content_type: str | None, routing_key: str) -> bool:
        """One confirmed publish; False if the broker did not confirm it."""
        try:
            channel = self._channel()
            channel.basic_publish(
                amqp.Message(body, content_type=content_type, content_encoding="utf-8"),
                self.exchange,
                routing_key,
            )
        except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked) as exc:
            log.info("publish failed (%s); reconnecting", type(exc).__name__)
            self._drop()
            time.sleep(_RECONNECT_SECONDS)
            return False
        return True

    def _channel(self) -> Any:
        if self._conn is None:
            conn = amqp.Connection(
                "127.0.0.1:5672",
                userid="guest",
                password="guest",
                confirm_publish=True,
                connect_timeout=2,
            )
            conn.connect()
            self._conn, self._chan = conn, conn.channel()
        return self._chan

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # the connection is already broken
                log.debug("dropping the publisher connection failed", exc_info=True)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def celery_load(exchange: str, load: LoadLog, events: int, rate: float) -> threading.Thread:
    """Real Celery events (Celery's own dispatcher) in a background thread, logged to ``load``."""
    return background(publish_events, exchange, events, rate, load.prefix, load.mark)


def background(target: Callable[..., Any], *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread
