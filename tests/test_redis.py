"""The Redis source: channels, claims and gaps as pure logic and against the real Redis; then
replicas, real workers (-E) on Redis and Kafka end to end."""

from __future__ import annotations

import base64
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import Popen

import orjson
import pytest
import redis

from celery_kafka_bridge.codec import Reason, decode, event_id
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.redis.channels import Subscription, envelope, message_id, subscription
from celery_kafka_bridge.redis.claims import Claims, Lease, Standby, State
from celery_kafka_bridge.redis.gaps import Gap, gap_between
from celery_kafka_bridge.redis.options import TransportOptions
from celery_kafka_bridge.redis.source import RedisSource
from celery_kafka_bridge.source import Delivery
from harness.pubsub import Witness, own_redis_db
from harness.support import (
    KafkaRecord,
    Names,
    event_ids,
    poll,
    read_topic,
    send_tasks,
    start_worker,
    stop_worker,
)
from tests.conftest import BridgeFactory


@pytest.fixture
def redis_url() -> Iterator[str]:
    with own_redis_db() as url:
        yield url


@pytest.fixture
def witness(names: Names, redis_url: str) -> Iterator[Witness]:
    seen = Witness(redis_url, names.exchange)
    yield seen
    seen.close()


def kombu_wrapper(body: bytes, routing_key: str) -> bytes:
    """A message as kombu's Redis transport publishes it."""
    return orjson.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                "body_encoding": "base64",
                "delivery_tag": "5f0c",
            },
        }
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (TransportOptions(), Subscription("/3.celeryev/*", pattern=True)),
        (TransportOptions(fanout_patterns=False), Subscription("/3.celeryev", pattern=False)),
        (TransportOptions(fanout_prefix=False), Subscription("celeryev/*", pattern=True)),
        (TransportOptions(fanout_prefix="app:"), Subscription("app:celeryev/*", pattern=True)),
        (TransportOptions(global_keyprefix="p_"), Subscription("p_/3.celeryev/*", pattern=True)),
    ],
)
def test_the_channel_is_the_one_kombu_publishes_on(
    options: TransportOptions, expected: Subscription
) -> None:
    assert subscription("celeryev", 3, options) == expected


def test_glob_characters_of_the_exchange_are_matched_literally() -> None:
    assert subscription("ev[1]*", 0, TransportOptions()).name == r"/0.ev\[1\]\*/*"


def test_a_kombu_message_becomes_the_envelope_of_its_body() -> None:
    body = b'{"type": "task-started", "uuid": "u1", "hostname": "w@h"}'
    got = envelope(b"/0.celeryev/task.started", kombu_wrapper(body, "task.started"), 5)
    assert (got.body, got.content_type, got.routing_key, got.received_at_ms) == (
        body,
        "application/json",
        "task.started",
        5,
    )


def test_a_publish_that_is_no_kombu_message_is_dead_lettered_with_its_bytes() -> None:
    got = envelope(b"/0.celeryev/task.started", b"not json", 5)
    (dead,) = decode(got, 1_000_000)
    assert dead.reason == Reason.UNSUPPORTED_CONTENT_TYPE  # type: ignore[union-attr]
    assert dead.value == b"not json"
    assert got.routing_key == "task.started"


def test_every_replica_computes_the_same_message_id_and_publishes_differ() -> None:
    one = kombu_wrapper(b"{}", "task.started")
    assert message_id(one) == message_id(bytes(one))
    assert message_id(one) != message_id(one.replace(b"5f0c", b"5f0d"))


@pytest.mark.parametrize(
    ("previous", "now", "processed", "expected"),
    [
        (b"100.0 5", 102.1, 6, None),  # on time
        (b"100.0 5", 112.0, 30, Gap(12.0, 5, 25)),  # 12 s unheard: 5 heartbeats missed
        (b"100.0 50", 112.0, 3, None),  # the worker restarted
        (b"garbage", 112.0, 3, None),
    ],
)
def test_a_heartbeat_gap_counts_missed_heartbeats_and_unheard_tasks(
    previous: bytes, now: float, processed: int, expected: Gap | None
) -> None:
    assert gap_between(previous, now, 2.0, processed) == expected


def test_standby_gives_back_messages_once_their_claims_could_have_expired() -> None:
    standby: Standby[str] = Standby(ttl_seconds=1.0)
    standby.keep(b"a", "first", now=10.0)
    standby.keep(b"b", "second", now=10.0)
    assert standby.due(11.4) == []
    assert standby.due(11.5) == [(b"a", "first"), (b"b", "second")]
    assert len(standby) == 0


def test_one_replica_wins_each_claim_and_a_confirmed_claim_is_done(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    a = Claims(client, "ns", "a", ttl_seconds=0.2)
    b = Claims(client, "ns", "b", ttl_seconds=0.2)
    assert a.claim([b"m1", b"m2"]) == [True, True]
    assert b.claim([b"m1", b"m2", b"m3"]) == [False, False, True]
    a.confirm([b"m1"])
    assert b.states([b"m1", b"m2"]) == [State.DONE, State.HELD]
    poll(lambda: b.states([b"m2"]) == [State.FREE], 5, what="the unconfirmed claim to expire")
    assert b.claim([b"m2"]) == [True]
    client.close()


def test_one_replica_holds_the_lease_until_it_lets_go_or_stops_renewing(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    a = Lease(client, "ns", "a", ttl_seconds=0.3)
    b = Lease(client, "ns", "b", ttl_seconds=0.3)
    assert (a.hold(), b.hold(), a.hold()) == (True, False, True)
    a.release()
    assert (b.hold(), a.hold()) == (True, False)
    poll(a.hold, 5, what="b's lease to expire unrenewed")
    client.close()


def test_the_broker_url_is_read_from_its_old_name_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AMQP_URL", "redis://127.0.0.1:6379/4")
    config = Config.load()
    assert (config.broker_url, config.broker_kind) == ("redis://127.0.0.1:6379/4", "redis")
    monkeypatch.setenv("BRIDGE_BROKER_URL", "amqp://guest:guest@rabbit//")
    assert Config.load().broker_kind == "amqp"


def test_transport_options_that_are_not_json_name_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting BRIDGE_BROKER_TRANSPORT_OPTIONS: "):
        Config.load(broker_transport_options="{fanout_prefix: yes")


def test_events_published_on_redis_are_records_and_garbage_is_a_dead_letter(
    names: Names,
    kafka: EmbeddedKafka,
    redis_url: str,
    start_bridge: BridgeFactory,
    witness: Witness,
) -> None:
    start_bridge(BRIDGE_BROKER_URL=redis_url)
    body = b'{"type": "task-started", "uuid": "u1", "hostname": "w@h", "timestamp": 1.5}'
    client = redis.Redis.from_url(redis_url)
    channel = subscription(names.exchange, int(redis_url.rsplit("/", 1)[1]), TransportOptions())
    topic = channel.name.removesuffix("*")
    client.publish(topic + "task.started", kombu_wrapper(body, "task.started"))
    client.publish(topic + "task.started", b"\x80garbage")
    client.close()
    (record,) = read_topic(kafka.bootstrap_servers, names.topic, until=bool, timeout=30, idle=0.5)
    (dead,) = read_topic(kafka.bootstrap_servers, names.dlq_topic, until=bool, timeout=30, idle=0.5)
    assert (record.value, record.key) == (body, b"u1")
    assert record.headers["event_id"].decode() == event_id(orjson.loads(body))
    assert "source" not in record.headers, "one broker URL: no source header"
    assert dead.value == b"\x80garbage"


def test_a_cut_redis_connection_is_reconnected_and_the_stream_goes_on(
    names: Names, kafka: EmbeddedKafka, redis_url: str, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(BRIDGE_BROKER_URL=redis_url)
    client = redis.Redis.from_url(redis_url)
    (subscriber,) = [
        c
        for c in client.client_list()
        if c["name"].startswith("celery-kafka-bridge:") and c["cmd"] in ("psubscribe", "subscribe")
    ]
    client.client_kill_filter(_id=subscriber["id"])
    poll(lambda: bridge.log().count("redis subscribed") == 2, 30, what="subscribed again")
    assert "redis disconnected" in bridge.log()
    channel = subscription(names.exchange, int(redis_url.rsplit("/", 1)[1]), TransportOptions())
    body = b'{"type": "task-started", "uuid": "u2", "hostname": "w@h"}'
    client.publish(
        channel.name.removesuffix("*") + "task.started", kombu_wrapper(body, "task.started")
    )
    client.close()
    (record,) = read_topic(kafka.bootstrap_servers, names.topic, until=bool, timeout=30, idle=0.5)
    assert record.value == body


@pytest.fixture
def redis_worker(names: Names, redis_url: str, tmp_path: Path) -> Callable[[], Popen[bytes]]:
    """Starts a real worker (-E, hostname ``<suffix>@test``) on the test's Redis database."""

    def start() -> Popen[bytes]:
        log, host = tmp_path / "worker.log", f"{names.suffix}@test"
        return start_worker(
            names.exchange, names.task_queue, log, hostname=host, broker_url=redis_url
        )

    return start


def sending(names: Names, redis_url: str, count: int, per_second: float) -> threading.Thread:
    """Tasks sent to the Redis worker at a steady pace, from a thread."""
    args = (names.exchange, names.task_queue, count, per_second, redis_url)
    thread = threading.Thread(target=send_tasks, args=args)
    thread.start()
    return thread


def duplicates(records: list[KafkaRecord]) -> int:
    counts = Counter(r.headers["event_id"] for r in records)
    return sum(n - 1 for n in counts.values())


@pytest.mark.slow
def test_a_replica_killed_mid_stream_loses_no_event_the_witness_saw(
    names: Names,
    kafka: EmbeddedKafka,
    redis_url: str,
    start_bridge: BridgeFactory,
    witness: Witness,
    redis_worker: Callable[[], Popen[bytes]],
) -> None:
    doomed = start_bridge(BRIDGE_BROKER_URL=redis_url)  # first, so it takes the lease
    survivor = start_bridge(BRIDGE_BROKER_URL=redis_url)
    worker = redis_worker()
    sender = sending(names, redis_url, 300, 100.0)
    try:
        claimed = "celery_kafka_bridge_redis_messages_claimed_total"
        poll(lambda: doomed.metric(claimed) > 100, 30, what="the leaseholder writing")
        doomed.kill()
        sender.join()
        poll(lambda: len(witness.seen) >= 300 * 3, 60, what="the tasks to run")  # ~4 events each
        expected = witness.event_ids()
        records = read_topic(
            kafka.bootstrap_servers,
            names.topic,
            until=lambda rs: expected <= event_ids(rs),
            timeout=60,
        )
    finally:
        stop_worker(worker)
    missing = expected - event_ids(records)
    assert not missing, f"lost {len(missing)} of {len(expected)} events"
    taken_over = survivor.metric("celery_kafka_bridge_redis_messages_taken_over_total")
    assert taken_over > 0, "the survivor wrote nothing the dead replica left"
    assert survivor.metric("celery_kafka_bridge_redis_leaseholder") == 1
    # Duplicates come only from claims the dead replica never confirmed.
    assert duplicates(records) <= taken_over


@pytest.mark.slow
def test_with_every_replica_stopped_what_was_published_meanwhile_is_lost_and_counted(
    names: Names,
    kafka: EmbeddedKafka,
    redis_url: str,
    start_bridge: BridgeFactory,
    witness: Witness,
    redis_worker: Callable[[], Popen[bytes]],
) -> None:
    first = start_bridge(BRIDGE_BROKER_URL=redis_url)
    worker = redis_worker()
    client = redis.Redis.from_url(redis_url)
    sender = sending(names, redis_url, 320, 20.0)
    try:
        beat = f"celery-kafka-bridge/{names.node_id}/heartbeat/{names.suffix}@test"
        poll(lambda: client.exists(beat), 30, what="a heartbeat written")
        stopped_at = time.time()
        first.signal(signal.SIGTERM)
        assert first.wait(30) == 0
        time.sleep(10)  # the outage itself, not a wait for anything
        second = start_bridge(BRIDGE_BROKER_URL=redis_url)
        resumed_at = time.time()
        gaps = "celery_kafka_bridge_heartbeat_gaps_total"
        poll(lambda: second.metric(gaps) >= 1, 30, what="the gap reported")
        sender.join()
        poll(lambda: len(witness.seen) >= 320 * 3, 60, what="the tasks to run")
    finally:
        stop_worker(worker)
        client.close()
    saw = witness.event_ids()
    outside = saw - witness.event_ids(stopped_at, resumed_at)
    records = read_topic(
        kafka.bootstrap_servers, names.topic, until=lambda rs: outside <= event_ids(rs), timeout=60
    )
    lost = saw - event_ids(records)
    assert outside <= event_ids(records), "lost an event published while a replica listened"
    assert lost, "nothing published during the outage was lost: the test saw no outage"
    lost_received = {
        s.event_id
        for s in witness.seen
        if s.event_id in lost and s.event["type"] == "task-received"
    }
    assert second.metric("celery_kafka_bridge_tasks_unheard_total") >= len(lost_received)
    assert second.metric("celery_kafka_bridge_heartbeats_missed_total") >= 3


class Collecting:
    """A source listener that keeps every delivery and, if told to, acks it at once."""

    def __init__(self, source: RedisSource, acks: bool) -> None:
        self.source, self.acks = source, acks
        self.deliveries: list[Delivery] = []
        self.attached = False

    def on_attached(self, generation: int) -> None:
        self.attached = True

    def on_detached(self, generation: int) -> None: ...
    def on_fatal(self, exc: BaseException) -> None:
        raise AssertionError(exc)

    def on_deliveries(self, batch: list[Delivery]) -> None:
        self.deliveries.extend(batch)
        self.source.batch_processed()
        if self.acks:
            self.source.post_acks(batch[0].generation, [(batch[-1].tag, True)], batch[-1].tag)


def test_a_replica_writes_what_another_claimed_and_never_confirmed(
    names: Names, redis_url: str
) -> None:
    config = Config.load(
        broker_url=redis_url,
        event_exchange=names.exchange,
        node_id=names.node_id,
        redis_claim_seconds=0.3,
    )
    silent, confirming = RedisSource(config), RedisSource(config)
    dead = Collecting(silent, acks=False)  # claims, never confirms: a replica that died
    alive = Collecting(confirming, acks=True)
    silent.start(dead)
    try:
        poll(lambda: silent.leading, 10, what="the silent replica leading")
        confirming.start(alive)
        poll(lambda: alive.attached, 10, what="the other subscribed")
        client = redis.Redis.from_url(redis_url)
        channel = subscription(names.exchange, int(redis_url.rsplit("/", 1)[1]), TransportOptions())
        bodies = [
            b'{"type": "task-started", "uuid": "u%d", "hostname": "w@h"}' % i for i in range(200)
        ]
        for body in bodies:
            client.publish(
                channel.name.removesuffix("*") + "task.started", kombu_wrapper(body, "task.started")
            )
        client.close()
        poll(lambda: len(alive.deliveries) == len(bodies), 10, what="every event written")
    finally:
        silent.close(5)
        confirming.close(5)
    assert sorted(d.envelope.body for d in alive.deliveries) == sorted(bodies)
    assert silent.counts.claimed > 0, "the silent replica claimed nothing: nothing to take over"
    assert confirming.counts.taken_over == silent.counts.claimed
    assert all(d.redelivered for d in alive.deliveries[-confirming.counts.taken_over :])
