"""How the bridge's queue is declared and bound to Celery's event exchange.

Kept apart from the consumer so the way replicas share the stream can be swapped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from kombu.entity import Queue

from celery_kafka_bridge.amqp.queues import ConsumerChannel, event_exchange, queue_arguments
from celery_kafka_bridge.amqp.shards import ShardBalancer, ShardedTopology
from celery_kafka_bridge.config import Config, TopologyName


class Topology(Protocol):
    """Declares what the bridge consumes and returns the queue names to consume from."""

    def declare(self, channel: Any, server_version: str) -> list[str]: ...


class Consumers(Protocol):
    """The consumers of a session on the declared queues; called on the source thread, and
    `check` and `stop` only at moments when every delivery so far is acked."""

    def start(self, queues: list[str]) -> None: ...
    def check(self) -> None: ...
    def stop(self) -> None: ...


class PlainConsumers:
    """One consumer per queue, each on a channel of its own, kept for the whole session."""

    def __init__(self, conn: Any, config: Config, on_message: Callable[[Any], None]) -> None:
        self._conn = conn
        self._prefetch = config.prefetch
        self._on_message = on_message
        self._consumers: list[ConsumerChannel] = []

    def start(self, queues: list[str]) -> None:
        self._consumers = [
            ConsumerChannel(self._conn, self._prefetch, queue, self._on_message) for queue in queues
        ]

    def check(self) -> None:
        """Nothing to rebalance."""

    def stop(self) -> None:
        for consumer in self._consumers:
            consumer.close()
        self._consumers = []


class SharedQueueTopology:
    """One shared durable queue bound with ``#``; every replica attaches to it.

    ``ordered``: single active consumer, so RabbitMQ delivers to one replica at a time, in
    queue order, and hands over to a standby when it goes. ``competing``: round-robin.
    """

    def __init__(self, config: Config) -> None:
        self._config = config

    def declare(self, channel: Any, server_version: str) -> list[str]:
        config = self._config
        arguments = queue_arguments(config, server_version)
        if config.topology == "ordered":
            arguments["x-single-active-consumer"] = True
        queue = Queue(
            config.queue_name,
            event_exchange(config.event_exchange),
            routing_key="#",
            durable=True,
            auto_delete=False,
            queue_arguments=arguments,
        )
        queue(channel).declare()
        return [config.queue_name]


@dataclass(frozen=True)
class Leftovers:
    """What other topologies, or a larger shard count, may have left in RabbitMQ: drained
    and deleted on a switch (`celery_kafka_bridge.amqp.retire`)."""

    queues: list[str]
    """Shared queues of the other topologies, bound to the event exchange with ``#``."""
    exchanges: list[str]
    """Deleted first: each feeds some of the queues (the hash exchange, unless sharded)."""
    shard: Callable[[int], str]
    """The name of shard queue i; shards from `first_shard` on, while they exist, are left over."""
    first_shard: int
    shard_exchange: str | None
    """What left-over shards are still bound to (sharded: the hash exchange, which stays)."""
    lock: str
    """An exclusive queue: the one replica holding it does the retiring."""


def leftovers(config: Config) -> Leftovers:
    """What the configured topology does not use."""
    shared = [t for t in get_args(TopologyName) if t not in {config.topology, "sharded"}]
    sharded = config.topology == "sharded"
    return Leftovers(
        queues=[config.model_copy(update={"topology": t}).queue_name for t in shared],
        exchanges=[] if sharded else [config.shard_exchange],
        shard=config.shard_queue,
        first_shard=config.shards if sharded else 0,
        shard_exchange=config.shard_exchange if sharded else None,
        lock=config.retiring_lock,
    )


def topology_for(config: Config) -> Topology:
    """The topology named by the configuration."""
    if config.topology == "sharded":
        return ShardedTopology(config)
    return SharedQueueTopology(config)


def consumers_for(
    config: Config, conn: Any, channel: Any, on_message: Callable[[Any], None]
) -> Consumers:
    """How a session consumes the topology's queues (``channel``: the session's own)."""
    if config.topology == "sharded":
        return ShardBalancer(conn, channel, config, on_message)
    return PlainConsumers(conn, config, on_message)
