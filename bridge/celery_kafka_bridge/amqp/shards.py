"""The sharded topology: events hashed by worker into shard queues, spread over the replicas.

A consistent-hash exchange (RabbitMQ plugin) bound to the event exchange hashes the ``hostname``
header every Celery event carries, so one worker's events always land in the same shard. Each
shard is a single-active-consumer queue: one replica consumes it, in order, the others wait.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from amqp.exceptions import InvalidCommand

from celery_kafka_bridge.amqp.queues import (
    ConsumerChannel,
    event_exchange,
    held_elsewhere,
    queue_arguments,
    queue_state,
    take_exclusive,
)
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.errors import ConfigError

log = logging.getLogger(__name__)

PLUGIN_MISSING = (
    "sharded topology needs the RabbitMQ plugin: "
    "rabbitmq-plugins enable rabbitmq_consistent_hash_exchange"
)
_BALANCE_SECONDS = 2.0
_REPLICAS_QUEUE_EXPIRES_MS = 60_000


class ShardedTopology:
    """Declares the hash exchange, its binding to the event exchange, and the shard queues."""

    def __init__(self, config: Config) -> None:
        self._config = config

    def declare(self, channel: Any, server_version: str) -> list[str]:
        config = self._config
        try:
            channel.exchange_declare(
                config.shard_exchange,
                "x-consistent-hash",
                durable=True,
                auto_delete=False,
                arguments={"hash-header": "hostname"},
            )
        except InvalidCommand as exc:  # "unknown exchange type": the plugin is off
            raise ConfigError(PLUGIN_MISSING) from exc
        event_exchange(config.event_exchange)(channel).declare()
        channel.exchange_bind(config.shard_exchange, config.event_exchange, "#")
        arguments = {
            **queue_arguments(config, server_version),
            "x-single-active-consumer": True,
        }
        for queue in config.shard_queues:
            channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
            channel.queue_bind(queue, config.shard_exchange, "1")  # routing key = ring weight
        # Durable with an expiry, as RabbitMQ 4.3 refuses transient non-exclusive queues.
        channel.queue_declare(
            config.replicas_queue,
            durable=True,
            auto_delete=False,
            arguments={"x-queue-type": "classic", "x-expires": _REPLICAS_QUEUE_EXPIRES_MS},
        )
        return config.shard_queues


class ShardBalancer:
    """Consumes every shard, and keeps this replica active on at most its share of them.

    Under single-active-consumer RabbitMQ (3.10) makes the longest-waiting consumer active and
    tells nobody. A replica learns it is active on a shard from the first delivery there, and
    stays so until it lets go. Every few seconds it counts the replicas R (consumers of the
    replicas queue) and works out its share: K // R, plus one for the first K % R replicas in
    slot order (each replica holds an exclusive slot queue, the lowest free one, which RabbitMQ
    drops with its connection), so the shares add up to K and differ by at most one. Active on
    more than its share, it closes the extra shards' channels and consumes them again: that
    moves it to the back of their lines, and the next replica takes them; a shard so passes
    along until a replica below its share keeps it. It does so only while nothing it took is
    unacked, and closes rather than cancels (`ConsumerChannel`), so what RabbitMQ had sent it
    meanwhile goes to the next replica first: a shard's events stay in order across the move.
    """

    def __init__(
        self, conn: Any, channel: Any, config: Config, on_message: Callable[[Any], None]
    ) -> None:
        self._conn = conn
        self._channel = channel
        self._config = config
        self._on_message = on_message
        self._consumers: dict[str, ConsumerChannel] = {}  # by consumer tag
        self._active: set[str] = set()  # consumer tags that have had a delivery
        self._presence = ""
        self._slot = 0
        self._next_check = 0.0

    def start(self, queues: list[str]) -> None:
        # Start at a different shard in each replica, so replicas starting together interleave.
        first = os.getpid() % len(queues)
        for queue in queues[first:] + queues[:first]:
            self._consume(queue)
        self._slot = next(
            i for i in itertools.count() if take_exclusive(self._conn, self._slot_queue(i))
        )
        # Counted as a replica only once in every shard's line.
        self._presence = self._channel.basic_consume(
            self._config.replicas_queue, no_ack=True, callback=_ignore
        )

    def check(self) -> None:
        """Give up the shards beyond this replica's share (at most every few seconds)."""
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + _BALANCE_SECONDS
        replicas = max(self._replicas(), 1)
        shards = len(self._config.shard_queues)
        ahead = sum(held_elsewhere(self._conn, self._slot_queue(i)) for i in range(self._slot))
        share = shards // replicas + (ahead < shards % replicas)
        active = sorted(self._active, key=lambda tag: self._consumers[tag].queue)
        for tag in active[share:]:
            consumer = self._consumers.pop(tag)
            self._active.discard(tag)
            consumer.close()
            self._consume(consumer.queue)
            log.info(
                "shard %s handed on: active on %d shards, share %d of %d replicas",
                consumer.queue,
                len(active),
                share,
                replicas,
            )

    def stop(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
        self._channel.basic_cancel(self._presence)
        self._consumers.clear()
        self._active.clear()

    def _consume(self, queue: str) -> None:
        consumer = ConsumerChannel(self._conn, self._config.prefetch, queue, self._deliver)
        self._consumers[consumer.tag] = consumer

    def _deliver(self, message: Any) -> None:
        self._active.add(message.delivery_info["consumer_tag"])
        self._on_message(message)

    def _slot_queue(self, index: int) -> str:
        return f"{self._config.replicas_queue}.slot-{index}"

    def _replicas(self) -> int:
        """How many replicas are attached: the consumers of the replicas queue."""
        state = queue_state(self._conn, self._config.replicas_queue)
        return state[1] if state else 0


def _ignore(_message: Any) -> None:
    """Nothing is published to the replicas queue; were anything, it is not an event."""
