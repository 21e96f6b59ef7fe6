"""How the bridge's queue is declared and bound to Celery's event exchange.

Kept apart from the consumer so the way replicas share the stream can be swapped.
"""

from __future__ import annotations

from typing import Any, Protocol, get_args

from kombu.entity import Exchange, Queue

from bridge.config import Config
from bridge.config import Topology as TopologyName


class Topology(Protocol):
    """Declares what the bridge consumes and returns the queue names to consume from."""

    def declare(self, channel: Any, server_version: str) -> list[str]: ...


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


def other_topology_queues(config: Config) -> list[str]:
    """Queues of the topologies not in use: they are drained and deleted on a switch."""
    others = [t for t in get_args(TopologyName) if t != config.topology]
    return [config.model_copy(update={"topology": t}).queue_name for t in others]


def topology_for(config: Config) -> Topology:
    """The topology named by the configuration."""
    return SharedQueueTopology(config)
