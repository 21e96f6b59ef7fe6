"""The sharded topology: workers hashed over shard queues whose active consumers are spread."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from amqp.exceptions import InvalidCommand

from celery_kafka_bridge.amqp.shards import PLUGIN_MISSING, ShardedTopology
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.errors import ConfigError
from harness.ordering import count_inversions
from harness.support import (
    Names,
    Rabbit,
    assert_witnessed_in_kafka,
    in_topic_order,
    poll,
    publish_events,
)
from tests.conftest import BridgeFactory
from tests.test_topology import TASKS, final_states, run_scenario

SHARDS = 4


@pytest.fixture
def shards(names: Names) -> list[str]:
    """The shard queues of the test's sharded bridge."""
    config = Config.load(event_exchange=names.exchange, node_id=names.node_id, shards=SHARDS)
    return config.shard_queues


def active_shards_per_replica(vhost: str, queues: list[str]) -> list[int]:
    """How many of ``queues`` each connection (a replica; every shard on a channel of its own)
    is the active consumer of, most first."""

    def listing(*args: str) -> list[list[str]]:
        lines = subprocess.run(
            ["rabbitmqctl", *args, "-q", "-p", vhost],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        return [line.split("\t") for line in lines]

    connection_of = dict(listing("list_channels", "pid", "connection"))
    rows = listing("list_consumers", "queue_name", "channel_pid", "active")
    active = Counter(
        connection_of.get(pid, pid)
        for queue, pid, flag in rows
        if queue in queues and flag == "true"
    )
    return sorted(active.values(), reverse=True)


def test_a_missing_plugin_fails_with_one_line_saying_how_to_enable_it() -> None:
    class NoPlugin:
        def exchange_declare(self, *_args: Any, **_kwargs: Any) -> None:
            raise InvalidCommand("unknown exchange type 'x-consistent-hash'")

    with pytest.raises(ConfigError, match="rabbitmq-plugins enable") as info:
        ShardedTopology(Config.load(topology="sharded")).declare(NoPlugin(), "3.10.8")
    assert str(info.value) == PLUGIN_MISSING


def test_events_of_many_workers_spread_over_every_shard(
    names: Names, rabbit: Rabbit, witness: str, start_bridge: BridgeFactory, shards: list[str]
) -> None:
    replica = start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS=str(SHARDS))
    replica.kill()  # the shards now keep what they get
    for i in range(24):
        publish_events(names.exchange, 10, hostname=f"worker-{i}@{names.suffix}")
    sent = rabbit.queue_state(witness)[0]

    def depths() -> list[int]:
        return [rabbit.queue_state(queue)[0] for queue in shards]

    # Quorum queue counts can trail the publisher for a moment: every message in one shard.
    poll(lambda: sum(depths()) == sent, 10, what="every message in a shard")
    print(f"\nsharded: events per shard {depths()}")
    assert all(depths()), "a shard got no worker"


@pytest.mark.slow
def test_three_sharded_replicas_keep_every_worker_in_order_through_a_kill(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
    shards: list[str],
    tmp_path: Path,
) -> None:
    """No record of a worker out of order, though the kill leaves the survivors to share its
    shards out (hand-ons while tasks run, printed: most runs have some, none when the workers'
    hostnames hash to no more shards than a survivor's share)."""
    records, witness_events, _ = run_scenario(
        names, kafka, rabbit, witness, start_bridge, worker, "sharded", workers=3
    )
    topic_events = in_topic_order(records)
    report = count_inversions(topic_events)
    hand_ons = sum(log.read_text().count("handed on") for log in tmp_path.glob("bridge-*.log"))
    print(
        f"\nsharded: {report.inversions} of {report.records} task records out of order; "
        f"{hand_ons} hand-ons"
    )
    assert report.records >= 3 * TASKS
    assert report.inversions == 0
    assert len({e["hostname"] for e in topic_events if e["type"] == "task-started"}) == 3
    one_worker = tasks_of_one_worker(witness_events)
    assert len(one_worker) > TASKS // 2
    assert subset(final_states(topic_events), one_worker) == subset(
        final_states(witness_events), one_worker
    )


def tasks_of_one_worker(events: list[dict[str, Any]]) -> set[str]:
    """Tasks whose worker events all came from one worker: a retry run by another worker sits
    in another shard, and order across shards is not kept."""
    workers: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event["type"] != "task-sent" and isinstance(event.get("uuid"), str):
            workers[event["uuid"]].add(event["hostname"])
    return {uuid for uuid, hostnames in workers.items() if len(hostnames) == 1}


def subset(states: dict[str, str], tasks: set[str]) -> dict[str, str]:
    return {uuid: state for uuid, state in states.items() if uuid in tasks}


@pytest.mark.slow
def test_replicas_share_the_active_shards_and_take_over_those_of_a_dead_or_new_one(
    names: Names, rabbit: Rabbit, start_bridge: BridgeFactory, shards: list[str]
) -> None:
    stop = threading.Event()

    def active() -> list[int]:
        return active_shards_per_replica(names.vhost, shards)

    def keep_publishing() -> None:  # deliveries on every shard tell replicas where they are active
        i = 0
        while not stop.is_set():
            publish_events(names.exchange, 2, hostname=f"worker-{i % 24}@{names.suffix}")
            i += 1

    publisher = threading.Thread(target=keep_publishing, daemon=True)
    publisher.start()
    try:
        first = start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS=str(SHARDS))
        poll(lambda: active() == [4], 30, what="one replica on all")
        start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS=str(SHARDS))
        poll(lambda: active() == [2, 2], 30, what="shards shared")
        first.kill()
        poll(lambda: active() == [4], 30, what="the survivor on all")
        start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS=str(SHARDS))
        poll(lambda: active() == [2, 2], 30, what="a newcomer's share")
        start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS=str(SHARDS))
        poll(lambda: active() == [2, 1, 1], 30, what="within one of 3")
    finally:
        stop.set()
        publisher.join(10)


def sharded_backlog(
    start_bridge: BridgeFactory, names: Names, hostnames: list[str], per_host: int
) -> None:
    """A sharded replica declares the shards and stops; then events of ``hostnames`` wait."""
    old = start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS=str(SHARDS))
    old.signal(signal.SIGTERM)
    assert old.wait(20) == 0
    for hostname in hostnames:
        publish_events(names.exchange, per_host, hostname=hostname)


@pytest.mark.slow
def test_switching_from_sharded_retires_the_shards_and_the_hash_exchange_and_loses_nothing(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    shards: list[str],
) -> None:
    sharded_backlog(start_bridge, names, [f"worker-{i}@{names.suffix}" for i in range(8)], 100)
    start_bridge(BRIDGE_SHUTDOWN_GRACE_SECONDS="2")  # ordered
    publish_events(names.exchange, 500)
    poll(lambda: not any(rabbit.queue_exists(q) for q in shards), 60, what="the shards retired")
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness, 60)


@pytest.mark.slow
def test_fewer_shards_retires_the_extra_ones_and_loses_nothing(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    shards: list[str],
) -> None:
    workers = [f"worker-{i}@{names.suffix}" for i in range(16)]
    sharded_backlog(start_bridge, names, workers, 50)
    assert sum(rabbit.queue_state(q)[0] for q in shards[2:]) > 0, "nothing waits in the extras"
    start_bridge(BRIDGE_TOPOLOGY="sharded", BRIDGE_SHARDS="2", BRIDGE_SHUTDOWN_GRACE_SECONDS="2")
    for hostname in workers:
        publish_events(names.exchange, 50, hostname=hostname)
    extras = shards[2:]
    poll(lambda: not any(rabbit.queue_exists(q) for q in extras), 60, what="extras retired")
    assert all(rabbit.queue_exists(q) for q in shards[:2])
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness, 60)
