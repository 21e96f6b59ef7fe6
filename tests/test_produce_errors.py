"""Produce errors by kind: transient ones retried in order, a refused record dead-lettered alone,
a denied principal unready without loss, a lost producer replaced without a restart.

Tansu returns none of these errors, so most tests put `harness.kafka_faults` between the bridge
and Tansu: a Kafka-protocol proxy that answers chosen Produce requests with the error code a
real Kafka would send, and forwards everything else.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownError,
    UnknownProducerId,
)

from celery_kafka_bridge.codec import EventRecord, Reason, event_id, kafka_rejected
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.kafka.batches import BatchWriter
from celery_kafka_bridge.kafka.errors import InvalidRecordError, Kind, classify
from celery_kafka_bridge.kafka.producer import Producer
from harness.kafka_faults import HOLD, Fault, KafkaFaults, faulty_kafka
from harness.ordering import count_inversions
from harness.support import (
    BridgeProcess,
    Names,
    Rabbit,
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

PREFIX = "celery_kafka_bridge"
MESSAGE_TOO_LARGE, NOT_LEADER, NOT_ENOUGH_REPLICAS = 10, 6, 19
TOPIC_AUTHORIZATION_FAILED, OUT_OF_ORDER_SEQUENCE, INVALID_PRODUCER_EPOCH = 29, 45, 47
INVALID_RECORD = 87


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[KafkaFaults]:
    """A Tansu broker of the test's own behind the fault-injecting proxy."""
    with faulty_kafka(tmp_path / "tansu.log") as (_broker, proxy):
        yield proxy


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (NotLeaderForPartitionError(), Kind.TRANSIENT),
        (RequestTimedOutError(), Kind.TRANSIENT),
        (KafkaConnectionError(), Kind.TRANSIENT),
        (UnknownError(), Kind.TRANSIENT),
        (MessageSizeTooLargeError(), Kind.RECORD),
        (InvalidRecordError(), Kind.RECORD),
        (TopicAuthorizationFailedError("t"), Kind.DENIED),
        (OutOfOrderSequenceNumber(), Kind.STATE),
        (UnknownProducerId(), Kind.STATE),
        (ProducerFenced(), Kind.STATE),
        (TimeoutError(), Kind.STATE),
    ],
)
def test_each_kafka_error_has_its_kind(exc: BaseException, kind: Kind) -> None:
    assert classify(exc) is kind


def test_a_refused_record_becomes_a_dead_letter_that_shrinks_until_it_fits() -> None:
    record = EventRecord(b"u1", b"x" * 100, [("event_type", b"task-sent"), ("task_id", b"u1")], "")
    too_large = kafka_rejected(record, "MessageSizeTooLargeError", shrink=True)
    assert too_large is not None
    headers = dict(too_large.headers)
    assert (too_large.reason, len(too_large.value)) == (Reason.KAFKA_REJECTED, 50)
    assert headers["truncated"] == b"true"
    assert headers["original_size"] == b"100"
    assert headers["task_id"] == b"u1", "the record's own headers are kept"
    again = kafka_rejected(too_large, "MessageSizeTooLargeError", shrink=False)
    assert again is not None
    assert len(again.value) == 25, "a dead letter refused again is halved again"
    assert dict(again.headers)["original_size"] == b"100"
    assert [name for name, _ in again.headers].count("reason") == 1
    invalid = kafka_rejected(record, "InvalidRecordError", shrink=False)
    assert invalid is not None
    assert (invalid.value, dict(invalid.headers)["truncated"]) == (record.value, b"false")


class Recorder:
    """A `batches.Listener` that keeps what it heard, and dead-letters nothing itself."""

    def __init__(self) -> None:
        self.written_tokens: list[int] = []
        self.rejected_tokens: list[int] = []
        self.failures: list[BaseException] = []

    def written(self, topic: str, tokens: list[int]) -> None:
        self.written_tokens.extend(tokens)

    def failed(self, topic: str, records: int, exc: BaseException, kind: Kind) -> None:
        self.failures.append(exc)

    def rejected(self, token: int, exc: BaseException) -> bool:
        assert isinstance(exc, MessageSizeTooLargeError)
        self.rejected_tokens.append(token)
        return True


async def test_a_refused_batch_is_bisected_down_to_its_one_bad_record(
    faults: KafkaFaults, names: Names
) -> None:
    """The proxy refuses (MessageSizeTooLarge) every batch holding record 5: the writer halves
    the batch until record 5 is alone, and writes the others in their order."""
    producer = Producer(
        {
            "bootstrap_servers": faults.bootstrap_servers,
            "acks": "all",
            "enable_idempotence": False,
            "request_timeout_ms": 5000,
        },
        on_reset=lambda: None,
    )
    await producer.start()
    recorder = Recorder()
    try:
        await producer.partitions_for(names.topic)  # the topic exists (auto-created)
        faults.add(Fault(names.topic, MESSAGE_TOO_LARGE, marker=b"record-5"))
        writer = BatchWriter[int](producer, 100, recorder)
        for i in range(9):
            writer.append(names.topic, 0, key=None, value=b"record-%d" % i, headers=[], token=i)
        while len(recorder.written_tokens) + len(recorder.rejected_tokens) < 9:
            assert not recorder.failures, "only a refused record was expected"
            await asyncio.sleep(0.01)
        await writer.close()
    finally:
        await producer.stop()
    assert recorder.rejected_tokens == [5]
    assert recorder.written_tokens == [0, 1, 2, 3, 4, 6, 7, 8]
    assert faults.count(MESSAGE_TOO_LARGE) == 4, "9 records, then 5, then 2, then record 5 alone"
    records = await asyncio.to_thread(
        read_topic, faults.bootstrap_servers, names.topic, lambda rs: len(rs) >= 8
    )
    assert [r.value for r in records] == [b"record-%d" % i for i in (0, 1, 2, 3, 4, 6, 7, 8)]


def start_behind(start_bridge: BridgeFactory, faults: KafkaFaults) -> BridgeProcess:
    """A bridge writing through the proxy; a short request timeout, so aiokafka's own retries
    give up quickly and the bridge's policy is what is tested."""
    return start_bridge(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=faults.bootstrap_servers,
        BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="1000",
    )


@pytest.mark.slow
def test_a_record_the_topic_refuses_is_dead_lettered_alone_and_the_stream_goes_on(
    names: Names,
    rabbit: Rabbit,
    witness: str,
    faults: KafkaFaults,
    start_bridge: BridgeFactory,
) -> None:
    """The proxy refuses every batch holding task 10's event with MessageSizeTooLarge and task
    21's (sent in a list) with InvalidRecord, as a topic with a small max.message.bytes or a
    validating broker would: those two records alone go to the dead-letter topic."""
    bridge = start_behind(start_bridge, faults)
    host = f"loadgen-{names.suffix}@test"
    faults.add(Fault(names.topic, MESSAGE_TOO_LARGE, marker=f'{host}-10"'.encode()))
    faults.add(Fault(names.topic, INVALID_RECORD, marker=f'{host}-21"'.encode()))
    publish_events(names.exchange, 200, hostname=host)
    witnessed = events_of(rabbit.drain(witness))
    refused = {e["uuid"]: e for e in witnessed if e["uuid"] in (f"{host}-10", f"{host}-21")}
    expected = {event_id(e) for e in witnessed} - {event_id(e) for e in refused.values()}
    records = read_topic(
        faults.bootstrap_servers, names.topic, until=lambda rs: expected <= event_ids(rs)
    )
    assert event_ids(records) == expected, "every other event written, the refused ones not"
    dead = read_topic(faults.bootstrap_servers, names.dlq_topic, until=lambda rs: len(rs) >= 2)
    by_task = {r.headers["task_id"].decode(): r for r in dead}
    assert set(by_task) == set(refused) and len(dead) == 2
    too_large, invalid = by_task[f"{host}-10"], by_task[f"{host}-21"]
    for record in dead:
        assert record.headers["reason"] == Reason.KAFKA_REJECTED.value.encode()
    assert b"MessageSizeTooLarge" in too_large.headers["error"]
    assert too_large.headers["truncated"] == b"true"
    assert int(too_large.headers["original_size"]) // 2 == len(too_large.value), "halved"
    assert b"InvalidRecord" in invalid.headers["error"]
    assert json.loads(invalid.value) == refused[f"{host}-21"], "kept whole: not a size problem"
    poll(lambda: rabbit.queue_state(names.queue)[0] == 0, 30, what="bridge queue drained")
    poll(
        lambda: bridge.metric(f"{PREFIX}_dead_letters_total", reason="kafka_rejected") == 2,
        15,
        what="the dead letters counted",
    )
    assert bridge.alive()


@pytest.mark.slow
def test_a_denied_topic_makes_the_bridge_unready_loses_nothing_and_resumes_once_granted(
    names: Names,
    rabbit: Rabbit,
    witness: str,
    faults: KafkaFaults,
    start_bridge: BridgeFactory,
) -> None:
    """The proxy answers TopicAuthorizationFailed for the events topic, as Kafka does for a
    principal without Write on it, until the test "grants" it by removing the fault."""
    bridge = start_behind(start_bridge, faults)
    pid = bridge.pid
    denied = faults.add(Fault(names.topic, TOPIC_AUTHORIZATION_FAILED))
    publish_events(names.exchange, 100)
    _, body = poll(lambda: _unready(bridge), 30, what="/readyz 503")
    assert names.topic in json.loads(body)["kafka_writes"]
    errors = [line for line in json_lines(bridge.log()) if line["level"] == "ERROR"]
    assert len(errors) == 1, errors
    assert names.topic in str(errors[0]["message"]) and "Write" in str(errors[0]["message"])
    assert bridge.metric(f"{PREFIX}_amqp_messages_acked_total") == 0, "nothing acked meanwhile"
    faults.remove(denied)
    poll(lambda: bridge.http("/readyz")[0] == 200, 45, what="ready again once granted")
    after_error = bridge.log().split(str(errors[0]["message"]))[-1]
    assert '"state":"ready"' in after_error
    assert f"kafka takes writes to {names.topic} again" in after_error
    assert_witnessed(faults, names, rabbit, witness)
    assert bridge.pid == pid and bridge.alive()
    assert len([line for line in json_lines(bridge.log()) if line["level"] == "ERROR"]) == 1


def _unready(bridge: BridgeProcess) -> tuple[int, str] | None:
    status, body = bridge.http("/readyz")
    return (status, body) if status == 503 and "kafka_writes" in body else None


TASKS = 300


def tasks_in_background(names: Names, rabbit: Rabbit, witness: str) -> threading.Thread:
    """TASKS tasks at 150/s for a real worker, returned once their events flow."""
    sender = threading.Thread(
        target=send_tasks, args=(names.exchange, names.task_queue, TASKS, 150.0), daemon=True
    )
    sender.start()
    poll(lambda: rabbit.queue_state(witness)[0] > 100, 60, what="events under way")
    return sender


def assert_witnessed(
    faults: KafkaFaults, names: Names, rabbit: Rabbit, witness: str
) -> list[dict[str, Any]]:
    """Every witnessed event is in the topic; the topic's events, per partition in order."""
    expected = {event_id(e) for e in events_of(rabbit.drain(witness))}
    records = read_topic(
        faults.bootstrap_servers, names.topic, until=lambda rs: expected <= event_ids(rs)
    )
    assert not expected - event_ids(records), f"lost {len(expected - event_ids(records))}"
    poll(lambda: rabbit.queue_state(names.queue)[0] == 0, 30, what="bridge queue drained")
    return in_topic_order(records)


def assert_in_order(events: list[dict[str, Any]]) -> None:
    report = count_inversions(events)
    assert report.records > TASKS, report
    assert report.inversions == 0, report


@pytest.mark.slow
def test_transient_errors_are_retried_in_order_and_lose_nothing(
    names: Names,
    rabbit: Rabbit,
    witness: str,
    faults: KafkaFaults,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    """The proxy answers NotLeaderForPartition and NotEnoughReplicas for two partitions for a
    while, and drops connections, as a cluster moving leaders or losing a broker would."""
    bridge = start_behind(start_bridge, faults)
    worker()
    sender = tasks_in_background(names, rabbit, witness)
    outage = [
        faults.add(Fault(names.topic, NOT_LEADER, partitions=frozenset({0}))),
        faults.add(Fault(names.topic, NOT_ENOUGH_REPLICAS, partitions=frozenset({1}))),
        faults.add(Fault(names.topic, None, partitions=frozenset({2, 3}), times=3)),
    ]
    poll(
        lambda: bridge.metric(f"{PREFIX}_kafka_send_retries_total", kind="transient") > 0,
        30,
        what="sends failing and retried",
    )
    for fault in outage:
        faults.remove(fault)
    sender.join(60)
    assert faults.count(NOT_LEADER) and faults.count(NOT_ENOUGH_REPLICAS) and faults.count(None)
    assert_in_order(assert_witnessed(faults, names, rabbit, witness))
    assert bridge.alive()


def start_idempotent(start_bridge: BridgeFactory, faults: KafkaFaults) -> BridgeProcess:
    """A bridge with an idempotent producer, the production setting: the proxy hands out the
    producer ids Tansu cannot (and strips them from the batches it forwards)."""
    faults.producer_ids = True
    return start_bridge(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=faults.bootstrap_servers,
        BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="1000",
        BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="true",
    )


@pytest.mark.slow
def test_lost_producer_state_replaces_the_producer_without_a_restart(
    names: Names,
    rabbit: Rabbit,
    witness: str,
    faults: KafkaFaults,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    """The proxy answers OutOfOrderSequenceNumber once, later InvalidProducerEpoch once: what
    Kafka sends an idempotent producer whose sequence or epoch it no longer accepts (aiokafka
    #1017); Tansu checks neither."""
    bridge = start_idempotent(start_bridge, faults)
    pid = bridge.pid
    worker()
    sender = tasks_in_background(names, rabbit, witness)
    faults.add(Fault(names.topic, OUT_OF_ORDER_SEQUENCE, times=1))
    resets = f"{PREFIX}_kafka_producer_resets_total"
    poll(lambda: "kafka producer replaced" in bridge.log(), 30, what="the producer replaced")
    # Only the new producer's batches: the old one's last request may still be on its way.
    new = faults.last_producer_id
    faults.add(Fault(names.topic, INVALID_PRODUCER_EPOCH, times=1, producer_id=new))
    poll(lambda: bridge.metric(resets) >= 2, 30, what="the producer replaced again")
    sender.join(60)
    assert_in_order(assert_witnessed(faults, names, rabbit, witness))
    assert bridge.pid == pid and bridge.alive()
    assert bridge.log().count("kafka producer replaced") == bridge.metric(resets)
    assert [line for line in json_lines(bridge.log()) if line["level"] == "ERROR"] == []


@pytest.mark.slow
def test_a_producer_stuck_on_a_silent_broker_is_replaced_after_the_outer_timeout(
    names: Names,
    rabbit: Rabbit,
    witness: str,
    faults: KafkaFaults,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    """The proxy never answers Produce requests for partition 0 (and so nothing after them on
    that connection), as a broker that stopped answering: the idempotent producer retries them
    forever (aiokafka #1101), so the bridge's outer timeout (2 x 1 s + 5 s here) replaces it."""
    bridge = start_idempotent(start_bridge, faults)
    pid = bridge.pid
    worker()
    sender = tasks_in_background(names, rabbit, witness)
    silent = faults.add(Fault(names.topic, HOLD, partitions=frozenset({0})))
    resets = f"{PREFIX}_kafka_producer_resets_total"
    poll(lambda: bridge.metric(resets) >= 1, 30, what="the stuck producer replaced")
    faults.remove(silent)
    sender.join(60)
    assert_in_order(assert_witnessed(faults, names, rabbit, witness))
    assert bridge.pid == pid and bridge.alive()
    assert "TimeoutError" in bridge.log()


def test_a_broker_that_refuses_idempotence_stops_the_bridge_with_one_line(
    start_bridge: BridgeFactory, kafka: EmbeddedKafka
) -> None:
    """Tansu answers InitProducerId with an error, as a broker that does not allow idempotent
    producers does: no fault injected here."""
    bridge = start_bridge(wait=False, BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="true")
    assert bridge.wait(30) == 2
    (line,) = json_lines(bridge.log())
    assert "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=false" in str(line["message"])
    assert "idempotent producers" in str(line["message"])
