"""Per-task order across replicas: `ordered` keeps it through a failover, `competing` does not."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from celery.events.state import State

from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.ordering import count_inversions
from harness.support import (
    BridgeProcess,
    KafkaRecord,
    Names,
    Rabbit,
    assert_witnessed_in_kafka,
    event_ids,
    events_of,
    in_topic_order,
    json_lines,
    poll,
    publish_events,
    read_topic,
    send_tasks,
)
from tests.conftest import BridgeFactory

TASKS = 1500


def final_states(events: list[dict[str, Any]]) -> dict[str, str]:
    state = State()
    for event in events:
        state.event({**event, "local_received": event["timestamp"]})
    return {uuid: task.state for uuid, task in state.tasks.items()}


def tasks_under_way(names: Names, rabbit: Rabbit, witness: str) -> threading.Thread:
    """TASKS tasks sent at 250/s in the background, returned once their events flow."""
    sender = threading.Thread(
        target=send_tasks,
        args=(names.exchange, names.task_queue, TASKS, 250.0),
        daemon=True,
    )
    sender.start()
    poll(lambda: rabbit.queue_state(witness)[0] > 300, 60, what="events under way")
    return sender


def run_scenario(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
    topology: str,
    workers: int = 1,
    stop: Callable[[BridgeProcess], None] = BridgeProcess.kill,
) -> tuple[list[KafkaRecord], list[dict[str, Any]], float]:
    """Three replicas, real workers, TASKS tasks; the first (active) replica is SIGKILLed (or
    stopped by ``stop``) mid-run.

    Returns the topic's records, the events the witness saw, and when the stopped replica had
    exited.
    """
    replicas = [start_bridge(BRIDGE_TOPOLOGY=topology) for _ in range(3)]
    for i in range(workers):
        worker(hostname=f"w{i}@{names.suffix}")
    sender = tasks_under_way(names, rabbit, witness)
    stop(replicas[0])  # the first to attach: the active one under single-active-consumer
    stopped_at = time.time()  # once it has exited: every record stamped later is another's
    sender.join(60)
    records, witnessed = every_task_written(names, kafka, rabbit, witness)
    assert all(r.alive() for r in replicas[1:])
    return records, witnessed, stopped_at


def every_task_written(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, witness: str
) -> tuple[list[KafkaRecord], list[dict[str, Any]]]:
    """Once the witness saw every task succeed: the topic's records (all it saw, checked) and
    the witness's events."""
    witnessed: list[dict[str, Any]] = []
    succeeded: set[str] = set()

    def tasks_succeeded(at_least: int) -> bool:
        new = events_of(rabbit.drain(witness, idle=0.2))
        witnessed.extend(new)
        succeeded.update(e["uuid"] for e in new if e["type"] == "task-succeeded")
        return len(succeeded) >= at_least

    poll(lambda: tasks_succeeded(TASKS), 120, interval=0.3, what="every task done")
    expected = {event_id(e) for e in witnessed}
    records = read_topic(
        kafka.bootstrap_servers,
        names.topic,
        until=lambda rs: expected <= event_ids(rs),
        timeout=120,
    )
    assert not expected - event_ids(records), "events lost"
    return records, witnessed


def terminate(replica: BridgeProcess) -> None:
    """SIGTERM, and a clean exit."""
    replica.signal(signal.SIGTERM)
    assert replica.wait(30) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [BridgeProcess.kill, terminate], ids=["SIGKILL", "SIGTERM"])
def test_ordered_replicas_keep_every_task_in_order_through_a_failover(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
    stop: Callable[[BridgeProcess], None],
) -> None:
    """The active replica is SIGKILLed, or gets SIGTERM, mid-run. On SIGTERM it stops at a
    moment with nothing unacked, by closing its consumer's channel, so what RabbitMQ had sent
    it meanwhile goes to the standby first (with ``basic.cancel`` those came back after the
    standby's first later messages)."""
    records, witness_events, stopped_at = run_scenario(
        names, kafka, rabbit, witness, start_bridge, worker, "ordered", stop=stop
    )
    topic_events = in_topic_order(records)
    report = count_inversions(topic_events)
    print(f"\nordered: {report.inversions} of {report.records} task records out of order")
    assert report.records >= 3 * TASKS
    assert report.inversions == 0
    assert final_states(topic_events) == final_states(witness_events)
    stamps = sorted(r.timestamp_ms / 1000 for r in records)
    before = [t for t in stamps if t <= stopped_at]
    after = [t for t in stamps if t > stopped_at]
    assert before and len(after) > TASKS, "the stop came before or after the stream"
    print(
        f"ordered: failover {after[0] - before[-1]:.3f} s from the stopped replica's last record "
        f"to the next one's first ({after[0] - stopped_at:.3f} s after it exited); "
        f"{len(after)} records written after"
    )


@pytest.mark.slow
def test_ordered_keeps_every_task_in_order_through_a_kafka_outage(
    names: Names,
    own_kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    bridge = start_bridge(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers,
        BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="1000",
    )
    worker()
    sender = tasks_under_way(names, rabbit, witness)
    assert own_kafka.process is not None
    broker = psutil.Process(own_kafka.process.pid)
    broker.suspend()
    try:
        poll(lambda: "kafka send failed" in bridge.log(), 30, what="sends failing")
        poll(lambda: rabbit.queue_state(names.queue)[0] > 0, 30, what="a backlog in RabbitMQ")
        time.sleep(5)  # the outage's length (several rounds of retries), not synchronisation
    finally:
        broker.resume()
    sender.join(60)
    records, witness_events = every_task_written(names, own_kafka, rabbit, witness)
    topic_events = in_topic_order(records)
    report = count_inversions(topic_events)
    print(f"\nordered, kafka outage: {report.inversions} of {report.records} out of order")
    assert report.inversions == 0
    assert final_states(topic_events) == final_states(witness_events)


@pytest.mark.slow
def test_competing_replicas_lose_nothing_and_their_inversion_rate_is_reported(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    records, _, _ = run_scenario(names, kafka, rabbit, witness, start_bridge, worker, "competing")
    report = count_inversions(in_topic_order(records))
    print(
        f"\ncompeting: {report.inversions} of {report.records} task records out of order "
        f"({report.rate:.1%})"
    )


@pytest.mark.slow
def test_switching_topology_drains_the_old_queue_then_deletes_it_and_loses_nothing(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
) -> None:
    old_queue = f"{names.queue}.competing"
    old = start_bridge(BRIDGE_TOPOLOGY="competing")
    old.signal(signal.SIGTERM)
    assert old.wait(20) == 0
    publish_events(names.exchange, 3_000)  # waiting in the old queue, nobody consuming
    assert rabbit.queue_state(old_queue)[0] > 0
    for _ in range(2):  # two replicas of the default topology, ordered: one retires
        start_bridge(BRIDGE_SHUTDOWN_GRACE_SECONDS="2")
    publish_events(names.exchange, 1_000)
    poll(lambda: not rabbit.queue_exists(old_queue), 60, what="the old queue retired")
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness, 60)
    poll(lambda: rabbit.queue_state(names.queue)[0] == 0, 30, what="new queue drained")


@pytest.mark.slow
def test_an_old_replica_restarting_mid_switch_cannot_leave_the_exchange_feeding_nothing(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
) -> None:
    old_queue = f"{names.queue}.competing"
    start_bridge(BRIDGE_SHUTDOWN_GRACE_SECONDS="2")  # the default topology: ordered
    # A replica still on the old topology restarts during the rollout: it binds the old queue
    # again and unbinds the new one, then goes.
    old = start_bridge(BRIDGE_TOPOLOGY="competing")
    poll(lambda: f"retiring queue {names.queue}," in old.log(), 20, what="the new queue unbound")
    old.signal(signal.SIGTERM)
    assert old.wait(20) == 0
    publish_events(names.exchange, 500)  # into the old queue, the only one bound
    poll(lambda: not rabbit.queue_exists(old_queue), 60, what="the old queue retired")
    publish_events(names.exchange, 500)  # only the new queue can take these
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness, 60)


def test_a_queue_declared_with_other_arguments_stops_the_bridge_with_one_line_and_exit_2(
    names: Names, rabbit: Rabbit, start_bridge: BridgeFactory
) -> None:
    rabbit.channel.queue_declare(names.queue, durable=True, auto_delete=False)  # classic
    bridge = start_bridge(wait=False)  # quorum by default
    assert bridge.wait(60) == 2
    (line,) = [ln for ln in json_lines(bridge.log()) if ln["level"] == "CRITICAL"]
    assert "exists with other arguments" in str(line["message"])
