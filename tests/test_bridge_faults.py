"""Nothing is lost: replicas killed or all down, Kafka frozen, poison input, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import psutil
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from celery_kafka_bridge.codec import Reason
from celery_kafka_bridge.embedded import EmbeddedKafka, free_port
from harness.support import (
    Names,
    Rabbit,
    assert_witnessed_in_kafka,
    event_ids,
    json_lines,
    poll,
    publish_events,
    read_topic,
    sent_event_ids,
)
from tests.conftest import BridgeFactory


def in_background(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def assert_nothing_lost(kafka: EmbeddedKafka, names: Names, rabbit: Rabbit, witness: str) -> None:
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness)
    poll(lambda: rabbit.queue_state(names.queue)[0] == 0, 30, what="bridge queue drained")


@pytest.mark.slow
def test_killing_one_of_three_replicas_mid_stream_loses_nothing(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, witness: str, start_bridge: BridgeFactory
) -> None:
    replicas = [start_bridge() for _ in range(3)]
    publisher = in_background(publish_events, names.exchange, 24_000, 6_000.0)
    poll(
        lambda: "status" in replicas[0].log() or rabbit.queue_state(witness)[0] > 6_000,
        30,
        what="stream under way",
    )
    replicas[0].kill()
    publisher.join(60)
    assert_nothing_lost(kafka, names, rabbit, witness)
    assert all(r.alive() for r in replicas[1:])


@pytest.mark.slow
def test_events_sent_while_every_replica_is_down_are_delivered_after_restart(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, witness: str, start_bridge: BridgeFactory
) -> None:
    replicas = [start_bridge() for _ in range(2)]
    publish_events(names.exchange, 500)
    for replica in replicas:
        replica.signal(signal.SIGTERM)
        assert replica.wait(20) == 0
    publish_events(names.exchange, 5_000, rate=500.0)  # ten seconds with nobody consuming
    assert rabbit.queue_state(names.queue)[0] > 0, "the queue did not buffer"
    start_bridge()
    start_bridge()
    assert_nothing_lost(kafka, names, rabbit, witness)


@pytest.mark.slow
def test_a_frozen_kafka_loses_nothing_and_memory_stays_bounded(
    names: Names,
    own_kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
) -> None:
    bridge = start_bridge(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers,
        BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="2000",
        BRIDGE_PREFETCH="200",
    )
    publisher = in_background(publish_events, names.exchange, 12_000, 800.0)
    poll(lambda: rabbit.queue_state(witness)[0] > 1_000, 20, what="stream under way")
    assert own_kafka.process is not None
    broker = psutil.Process(own_kafka.process.pid)
    bridge_process = psutil.Process(bridge.pid)
    broker.suspend()
    try:
        frozen_until = time.monotonic() + 10
        peak_rss = 0
        while time.monotonic() < frozen_until:  # the scenario's duration, sampled
            peak_rss = max(peak_rss, bridge_process.memory_info().rss)
            time.sleep(0.2)
        assert rabbit.queue_state(names.queue)[0] > 0, "the bridge kept taking messages"
    finally:
        broker.resume()
    publisher.join(60)
    assert bridge.alive()
    assert peak_rss < 250 * 2**20, f"peak RSS {peak_rss / 2**20:.0f} MiB while Kafka was frozen"
    assert_witnessed_in_kafka(own_kafka.bootstrap_servers, names.topic, rabbit, witness, 120)
    assert "kafka send failed" in bridge.log(), "the freeze never reached the retry path"


BAD_MESSAGES: list[tuple[bytes, str | None, Reason]] = [
    (b'{"type": ', "application/json", Reason.UNDECODABLE),
    (b"\xff\xfe", "application/json", Reason.UNDECODABLE),
    (b"[1]", "application/json", Reason.NOT_AN_OBJECT),
    (b'{"uuid": "x"}', "application/json", Reason.MISSING_TYPE),
    (b"\x80\x04K\x01.", "application/x-python-serialize", Reason.UNSUPPORTED_CONTENT_TYPE),
    (b"\x93\x01", "application/x-msgpack", Reason.UNDECODABLE),
    (b"{" + b" " * 1_200_000 + b"}", "application/json", Reason.OVERSIZED),
]


@pytest.mark.slow
def test_poison_messages_go_to_the_dead_letter_topic_and_good_ones_through(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, witness: str, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge()
    rounds = 20
    for _ in range(rounds):
        publish_events(names.exchange, 10)
        for body, content_type, _reason in BAD_MESSAGES:
            rabbit.publish(names.exchange, "task.bad", body, content_type)
    expected_dead = rounds * len(BAD_MESSAGES)
    dead = read_topic(
        kafka.bootstrap_servers,
        names.dlq_topic,
        until=lambda rs: len(rs) >= expected_dead,
        timeout=60,
    )
    reasons = [r.headers["reason"].decode() for r in dead]
    assert sorted(reasons) == sorted([reason.value for *_, reason in BAD_MESSAGES] * rounds)
    pickled = next(r for r in dead if r.headers["reason"] == b"unsupported_content_type")
    assert pickled.value == BAD_MESSAGES[4][0]
    assert pickled.headers["routing_key"] == b"task.bad"
    good = sent_event_ids(
        m for m in rabbit.drain(witness) if m.delivery_info["routing_key"] != "task.bad"
    )
    records = read_topic(
        kafka.bootstrap_servers, names.topic, until=lambda rs: good <= event_ids(rs), timeout=60
    )
    assert good <= event_ids(records)
    assert bridge.alive()
    poll(lambda: rabbit.queue_state(names.queue)[0] == 0, 30, what="bridge queue drained")


@pytest.mark.slow
def test_sigterm_mid_stream_exits_zero_and_loses_nothing(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, witness: str, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(BRIDGE_SHUTDOWN_GRACE_SECONDS="5")
    publisher = in_background(publish_events, names.exchange, 15_000, 5_000.0)
    poll(lambda: rabbit.queue_state(witness)[0] > 3_000, 20, what="stream under way")
    stopped_at = time.monotonic()
    bridge.signal(signal.SIGTERM)
    assert bridge.wait(15) == 0
    assert time.monotonic() - stopped_at < 5 + 2, "shutdown overran its grace period"
    assert "drained=True" in bridge.log()
    publisher.join(60)
    start_bridge()
    assert_nothing_lost(kafka, names, rabbit, witness)


def test_sigterm_while_rabbitmq_is_unreachable_exits_zero(start_bridge: BridgeFactory) -> None:
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    bridge = start_bridge(wait=False, BRIDGE_AMQP_URL=nowhere, BRIDGE_LOG_LEVEL="DEBUG")
    poll(lambda: "retrying in" in bridge.log(), 30, what="a failed connection, retried")
    poll(lambda: "polling the queue depth failed" in bridge.log(), 30, what="a failed poll")
    bridge.signal(signal.SIGTERM)
    assert bridge.wait(15) == 0, bridge.log()[-2_000:]


def test_a_kafka_that_is_away_is_logged_once_per_retry_and_sigterm_exits_zero(
    start_bridge: BridgeFactory,
) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    bridge = start_bridge(wait=False, BRIDGE_KAFKA_BOOTSTRAP_SERVERS=nowhere)
    poll(lambda: bridge.log().count("retrying in") >= 2, 30, what="two failed connections")
    bridge.signal(signal.SIGTERM)
    assert bridge.wait(15) == 0, bridge.log()[-2_000:]
    loggers = {line["logger"] for line in json_lines(bridge.log())}
    assert "aiokafka" not in loggers, "aiokafka repeats what the bridge already said"


@pytest.mark.slow
def test_an_empty_kafka_replacing_the_old_one_gets_the_topics_back_and_the_stream_resumes(
    names: Names,
    own_kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
) -> None:
    bridge = start_bridge(BRIDGE_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers)
    publish_events(names.exchange, 200)
    before = sent_event_ids(rabbit.drain(witness))
    read_topic(own_kafka.bootstrap_servers, names.topic, until=lambda rs: before <= event_ids(rs))
    own_kafka.stop()
    with EmbeddedKafka(port=own_kafka.port) as replacement:
        poll(lambda: names.topic in topics_of(replacement), 30, what="the topic recreated")
        publish_events(names.exchange, 500)
        after = sent_event_ids(rabbit.drain(witness))
        records = read_topic(
            replacement.bootstrap_servers, names.topic, until=lambda rs: after <= event_ids(rs)
        )
        assert not after - event_ids(records)
        assert bridge.alive()
        assert names.dlq_topic in topics_of(replacement)


def topics_of(kafka: EmbeddedKafka) -> set[str]:
    async def listing() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(listing())
