"""RabbitMQ 4.3's rules, checked on every declaration the bridge and the test workers make.

RabbitMQ 4.3 cannot run here (3.10.8 does), so the rules are checked where they apply: each
queue declaration and QoS call the bridge makes in every topology, recorded on its way to the
real broker, and every queue a real Celery worker of the tests' app leaves in the vhost. The
rules (deprecated features denied by default in 4.3): no transient queue that is not exclusive
(`transient_nonexcl_queues`), no global QoS (`global_qos`), no classic queue version 1
(`classic_queue_mirroring` and `x-queue-version=1`), no removed queue arguments.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import amqp
import pytest

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.runner import run_bridge
from harness.support import (
    Names,
    Rabbit,
    amqp_url,
    event_ids,
    management,
    poll,
    publish_events,
    read_topic,
)

REMOVED_ARGUMENTS = {"x-queue-master-locator", "x-queue-mode", "x-ha-policy"}


@dataclass(frozen=True)
class Declared:
    queue: str
    durable: bool
    exclusive: bool
    arguments: dict[str, Any]


@dataclass
class Spy:
    """What the bridge asked of RabbitMQ, recorded on the way (the calls still go through)."""

    queues: list[Declared]
    global_qos: list[int]
    lock: threading.Lock


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    recorded = Spy([], [], threading.Lock())
    declare, qos = amqp.Channel.queue_declare, amqp.Channel.basic_qos

    def queue_declare(
        self: amqp.Channel,
        queue: str = "",
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = True,
        nowait: bool = False,
        arguments: dict[str, Any] | None = None,
        argsig: str = "BsbbbbbF",
    ) -> Any:
        if not passive:
            with recorded.lock:
                recorded.queues.append(Declared(queue, durable, exclusive, dict(arguments or {})))
        return declare(
            self, queue, passive, durable, exclusive, auto_delete, nowait, arguments, argsig
        )

    def basic_qos(self: amqp.Channel, prefetch_size: int, prefetch_count: int, a_global: bool,
                  argsig: str = "lBb") -> Any:  # fmt: skip
        if a_global:
            with recorded.lock:
                recorded.global_qos.append(prefetch_count)
        return qos(self, prefetch_size, prefetch_count, a_global, argsig)

    monkeypatch.setattr(amqp.Channel, "queue_declare", queue_declare)
    monkeypatch.setattr(amqp.Channel, "basic_qos", basic_qos)
    return recorded


def broken_rules(
    queue: str, durable: bool, exclusive: bool, arguments: dict[str, Any]
) -> list[str]:
    """What RabbitMQ 4.3 refuses about one queue declaration."""
    broken = []
    if not durable and not exclusive:
        broken.append(f"{queue} is transient and not exclusive")
    if arguments.get("x-queue-version") == 1:
        broken.append(f"{queue} asks for classic queue version 1")
    broken += [f"{queue} has the removed argument {a}" for a in REMOVED_ARGUMENTS & set(arguments)]
    return broken


@pytest.fixture
def bridge_config(names: Names, kafka: EmbeddedKafka) -> Callable[..., Config]:
    def config(**overrides: Any) -> Config:
        return Config.load(
            amqp_url=amqp_url(),
            kafka_bootstrap_servers=kafka.bootstrap_servers,
            kafka_enable_idempotence=False,  # Tansu cannot do InitProducerId
            event_exchange=names.exchange,
            node_id=names.node_id,
            topic=names.topic,
            dlq_topic=names.dlq_topic,
            topic_partitions=4,
            topic_replication_factor=1,  # a single broker
            topic_min_insync_replicas=1,
            http_port=0,
            shutdown_grace_seconds=2,
            **overrides,
        )

    return config


def run_until_written(config: Config, names: Names, rabbit: Rabbit, kafka: EmbeddedKafka) -> None:
    """Run a bridge in this process until 20 new events are in Kafka, then stop it."""

    async def main() -> None:
        stop = asyncio.Event()
        bridge = asyncio.ensure_future(run_bridge(config, stop))
        await asyncio.to_thread(
            poll,
            lambda: all(rabbit.queue_exists(q) for q in config.event_queues) or bridge.done(),
            30,
            what="the bridge's queues",
        )
        assert not bridge.done(), bridge.result()
        old = await asyncio.to_thread(read_topic, kafka.bootstrap_servers, names.topic, idle=0.5)
        before = event_ids(old)
        await asyncio.to_thread(publish_events, names.exchange, 20)
        await asyncio.to_thread(
            read_topic,
            kafka.bootstrap_servers,
            names.topic,
            until=lambda records: len(event_ids(records) - before) >= 20,
            idle=0.1,
        )
        stop.set()
        await bridge

    asyncio.run(main())


@pytest.mark.slow
def test_no_declaration_or_qos_of_the_bridge_breaks_a_rabbitmq_43_rule_in_any_topology(
    names: Names,
    rabbit: Rabbit,
    kafka: EmbeddedKafka,
    spy: Spy,
    bridge_config: Callable[..., Config],
) -> None:
    # Every topology, and switches between them, so the retirer's lock queues are declared too.
    for topology in ("ordered", "competing", "sharded", "ordered"):
        run_until_written(bridge_config(topology=topology), names, rabbit, kafka)
    declared = {d.queue for d in spy.queues}
    assert {f"celeryev.{names.node_id}", f"celeryev.{names.node_id}.competing"} <= declared
    assert any(".shard-" in q for q in declared) and any(".retiring." in q for q in declared)
    broken = [
        rule
        for d in spy.queues
        for rule in broken_rules(d.queue, d.durable, d.exclusive, d.arguments)
    ]
    assert broken == []
    assert spy.global_qos == [], "global QoS is denied in RabbitMQ 4.3"


def test_the_rules_catch_what_rabbitmq_43_refuses() -> None:
    assert broken_rules("q", False, False, {}) == ["q is transient and not exclusive"]
    assert broken_rules("q", True, False, {"x-queue-version": 1})
    assert broken_rules("q", True, False, {"x-queue-mode": "lazy"})
    assert broken_rules("q", False, True, {"x-expires": 1000}) == []


@pytest.mark.slow
def test_a_worker_of_the_tests_app_leaves_only_queues_rabbitmq_43_accepts(
    names: Names, worker: Callable[..., Any]
) -> None:
    worker()
    queues: list[dict[str, Any]] = management("GET", f"queues/{quote(names.vhost, safe='')}")
    assert any(q["name"].endswith(".celery.pidbox") for q in queues), "no control queue seen"
    broken = [
        rule
        for q in queues
        for rule in broken_rules(q["name"], q["durable"], q["exclusive"], q["arguments"])
    ]
    assert broken == []
