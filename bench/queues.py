"""The RabbitMQ side of the benchmark: capture a generated stream once, replay it into queues.

Every consumer drains a queue holding the same messages: the generated stream is captured
from a holding queue (bodies, properties and routing keys exactly as Celery published them)
and published again, unchanged, into each consumer's own queue through its own exchange.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import amqp
import orjson

from bench.loadgen import Workers, event_app
from harness import support


@dataclass(frozen=True, slots=True)
class Captured:
    routing_key: str
    body: bytes
    properties: dict[str, Any]


class Rabbit(support.Rabbit):
    """The tests' py-amqp client, plus capturing, replaying and watching queues."""

    def __init__(self, amqp_url: str) -> None:
        super().__init__(amqp_url)
        self.channel.auto_decode = False

    def exchange(self, name: str) -> str:
        """Declare ``name`` as Celery declares its event exchange (topic, durable)."""
        self.channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
        return name

    def bind(self, queue: str, exchange: str) -> None:
        self.channel.queue_bind(queue, self.exchange(exchange), "#")

    def depth(self, queue: str) -> int:
        """Ready messages of ``queue`` (unacked ones are not counted)."""
        return int(self.channel.queue_declare(queue, passive=True)[1])

    def settled_depth(
        self, queue: str, expected: int | None = None, settle: float = 0.5, timeout: float = 60
    ) -> int:
        """``queue``'s depth once it reached ``expected``, or held a non-zero value unchanged
        for ``settle`` seconds (quorum queue counts trail the publisher)."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            depth = self.depth(queue)
            if expected is not None and depth >= expected:
                return depth
            if depth != last:
                last, since = depth, time.monotonic()
            elif depth and time.monotonic() - since >= settle:
                return depth
            time.sleep(0.1)
        return self.depth(queue)

    def capture(self, queue: str, count: int, timeout: float = 120.0) -> list[Captured]:
        """Take ``count`` messages off ``queue`` (no ack), exactly as they were published."""
        captured: list[Captured] = []

        def keep(message: amqp.Message) -> None:
            props = {k: v for k, v in message.properties.items() if v is not None}
            captured.append(Captured(message.delivery_info["routing_key"], message.body, props))

        self.channel.basic_qos(0, 5000, False)
        tag = self.channel.basic_consume(queue, no_ack=True, callback=keep)
        deadline = time.monotonic() + timeout
        while len(captured) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"captured {len(captured)} of {count} messages from {queue}")
            try:
                self.conn.drain_events(timeout=1)
            except TimeoutError:
                continue
        self.channel.basic_cancel(tag)
        return captured


def replay(channel: Any, messages: list[Captured], exchange: str, queue: str) -> None:
    """Publish ``messages`` to ``exchange`` and wait until ``queue`` holds them all.

    ``channel`` is a py-amqp channel (kombu's default channel is one), so an exclusive queue
    can be filled on the connection that will consume it.
    """
    for m in messages:
        channel.basic_publish(amqp.Message(m.body, **m.properties), exchange, m.routing_key)
    deadline = time.monotonic() + 120
    while (depth := channel.queue_declare(queue, passive=True)[1]) < len(messages):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{queue} holds {depth} of {len(messages)}")
        time.sleep(0.05)


def generate(rabbit: Rabbit, amqp_url: str, prefix: str, events: int) -> list[Captured]:
    """``events`` events sent by Celery's dispatcher, captured as the messages that carry them."""
    exchange, holding = rabbit.exchange(f"{prefix}-gen"), f"{prefix}-holding"
    rabbit.channel.queue_declare(holding, durable=True, auto_delete=False)
    rabbit.bind(holding, exchange)
    workers = Workers(event_app(amqp_url, exchange), prefix)
    try:
        workers.send(events)
    finally:
        workers.close()
    messages = rabbit.capture(holding, rabbit.settled_depth(holding))
    rabbit.delete([holding], [exchange])
    return messages


def event_count(messages: list[Captured], of_type: str | None = None) -> int:
    """Events carried by ``messages`` (a ``task.multi`` body holds a list); only those of
    type ``of_type`` if given."""
    total = 0
    for m in messages:
        payload = orjson.loads(m.body)
        events = payload if isinstance(payload, list) else [payload]
        total += sum(of_type is None or e.get("type") == of_type for e in events)
    return total
