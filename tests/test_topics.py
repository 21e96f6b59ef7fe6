"""Durable topics: created with the configured settings, audited, and a bridge that holds while a
topic falls short (BRIDGE_REQUIRE_DURABLE_TOPICS), against a real Tansu and RabbitMQ."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.kafka.sink import KafkaSink
from celery_kafka_bridge.kafka.topics import (
    SETTINGS,
    Expectation,
    Shortfall,
    TopicAdmin,
    TopicAudit,
    TopicState,
    creation_configs,
    shortfalls,
)
from harness.kafka_admin import KafkaAdmin
from harness.support import (
    BridgeProcess,
    Names,
    Rabbit,
    assert_witnessed_in_kafka,
    bridge_env,
    poll,
    publish_events,
    run_cli,
)
from tests.conftest import BridgeFactory

DAY_MS = 24 * 3600 * 1000
EXPECTED = Expectation(
    partitions=12,
    replication_factor=3,
    min_insync_replicas=2,
    retention_ms=30 * DAY_MS,
    max_message_bytes=1_065_536,
)
AS_EXPECTED = {
    "min.insync.replicas": "2",
    "retention.ms": str(30 * DAY_MS),
    "cleanup.policy": "delete",
    "max.message.bytes": "1065536",
}
SHORT = "celery_kafka_bridge_topic_setting_shortfall"
AUDITS = "celery_kafka_bridge_topic_audits_total"


def state(partitions: int = 12, replication: int = 3, **configs: str) -> TopicState:
    """A topic as expected, but for the settings given (dots as underscores)."""
    changed = {name.replace("_", "."): value for name, value in configs.items()}
    return TopicState(partitions, replication, {**AS_EXPECTED, **changed})


def test_a_topic_as_expected_or_better_falls_short_in_nothing() -> None:
    assert shortfalls("t", state(), EXPECTED) == []
    better = state(24, 5, min_insync_replicas="3", retention_ms="-1", max_message_bytes="9000000")
    assert shortfalls("t", better, EXPECTED) == []


@pytest.mark.parametrize(
    ("topic", "setting", "found", "expected"),
    [
        (state(partitions=1), "partitions", "1", "12"),
        (state(replication=1), "replication_factor", "1", "3"),
        (state(min_insync_replicas="1"), "min.insync.replicas", "1", "2"),
        (state(retention_ms="3600000"), "retention.ms", "3600000", str(30 * DAY_MS)),
        (state(cleanup_policy="compact"), "cleanup.policy", "compact", "delete"),
        (state(cleanup_policy="compact,delete"), "cleanup.policy", "compact,delete", "delete"),
        (state(max_message_bytes="1048588"), "max.message.bytes", "1048588", "1065536"),
        (state(max_message_bytes="lots"), "max.message.bytes", "lots", "1065536"),
    ],
)
def test_each_setting_below_the_expectation_is_one_shortfall(
    topic: TopicState, setting: str, found: str, expected: str
) -> None:
    assert shortfalls("t", topic, EXPECTED) == [Shortfall("t", setting, found, expected)]


def test_infinite_retention_is_the_longest() -> None:
    forever = Expectation(12, 3, 2, -1, 1_065_536)
    assert shortfalls("t", state(retention_ms="-1"), forever) == []
    (short,) = shortfalls("t", state(retention_ms=str(3650 * DAY_MS)), forever)
    assert (short.setting, short.expected) == ("retention.ms", "-1")


def test_settings_the_broker_does_not_report_are_not_judged() -> None:
    """Tansu reports only the settings a topic was created with; Kafka reports them all."""
    assert shortfalls("t", TopicState(12, 3, {}), EXPECTED) == []


def test_created_topics_get_the_durability_settings_over_further_ones() -> None:
    config = Config.load(
        topic_retention_ms=-1,
        topic_config="cleanup.policy=compact,segment.ms=3600000",
        kafka_batch_bytes=4_000_000,
    )
    assert creation_configs(config) == {
        "cleanup.policy": "compact",
        "max.message.bytes": "4000000",  # a full batch is larger than the largest record
        "segment.ms": "3600000",
        "min.insync.replicas": "2",
        "retention.ms": "-1",
    }


class Exported:
    """The audit's gauge and counter in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauge = Gauge("short", "", ["topic", "setting"], registry=self.registry)
        self.audits = Counter("audits", "", registry=self.registry)

    def short(self, topic: str, setting: str) -> float | None:
        return self.registry.get_sample_value("short", {"topic": topic, "setting": setting})

    def audited(self) -> float | None:
        return self.registry.get_sample_value("audits_total")


def test_the_audit_warns_once_per_change_and_keeps_the_gauge(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exported, changes = Exported(), list[str | None]()
    audit = TopicAudit(["a", "b"], EXPECTED, exported.gauge, exported.audits, changes.append)
    assert {exported.short(t, s) for t in "ab" for s in SETTINGS} == {0}
    with caplog.at_level(logging.INFO, "celery_kafka_bridge.kafka.topics"):
        for _ in range(3):  # the same shortfall every period: said once
            audit.record({"a": state(partitions=1), "b": state()})
        audit.record({"a": state(partitions=2)})  # changed: said again; b keeps its state
        audit.record({"a": state(), "b": state()})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "topic a has partitions=1, expected 12",
        "topic a has partitions=2, expected 12",
        "topic a has partitions as expected now",
    ]
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "INFO"]
    assert changes == [
        "topic a has partitions=1, expected 12",
        "topic a has partitions=2, expected 12",
        None,
    ]
    assert (exported.short("a", "partitions"), exported.audited()) == (0, 5)


def test_the_gauge_is_1_while_a_setting_falls_short() -> None:
    exported = Exported()
    audit = TopicAudit(["a"], EXPECTED, exported.gauge, exported.audits)
    audit.record({"a": state(partitions=1, retention_ms="1")})
    assert exported.short("a", "partitions") == 1
    assert exported.short("a", "retention.ms") == 1
    assert exported.short("a", "min.insync.replicas") == 0
    assert audit.reason == (
        f"topic a has partitions=1, expected 12; topic a has retention.ms=1, expected {30 * DAY_MS}"
    )


@pytest.fixture
def admin(kafka: EmbeddedKafka, names: Names) -> Iterator[KafkaAdmin]:
    """Deletes the test's topics at the end: ask for it before `start_bridge`, so the bridges
    are gone by then (their watchers would create the topics again)."""
    client = KafkaAdmin(kafka.bootstrap_servers)
    yield client
    client.delete(*(t for t in (names.topic, names.dlq_topic) if client.exists(t)))


def test_created_topics_carry_the_configured_settings(
    admin: KafkaAdmin, start_bridge: BridgeFactory, names: Names
) -> None:
    bridge = start_bridge(
        BRIDGE_TOPIC_RETENTION_MS=str(90 * DAY_MS),
        BRIDGE_TOPIC_CONFIG="segment.ms=3600000, compression.type=producer",
    )
    for topic in (names.topic, names.dlq_topic):
        described = admin.describe(topic)
        assert described.partitions == 4 and len(described.replicas) == 1
        assert described.configs == {
            "min.insync.replicas": "1",
            "retention.ms": str(90 * DAY_MS),
            "cleanup.policy": "delete",
            "max.message.bytes": "1065536",
            "segment.ms": "3600000",
            "compression.type": "producer",
        }
        for setting in SETTINGS:
            assert bridge.metric(SHORT, topic=topic, setting=setting) == 0
    assert bridge.metric(AUDITS) >= 1  # before the first message was taken


def audited(bridge: BridgeProcess, times: int) -> None:
    """Wait until the bridge has audited its topics ``times`` more times."""
    audits = bridge.metric(AUDITS)
    poll(lambda: bridge.metric(AUDITS) >= audits + times, 20, what=f"{times} audits")


@pytest.mark.slow
def test_a_short_topic_warns_per_setting_and_holds_the_events_until_it_is_recreated(
    admin: KafkaAdmin,
    start_bridge: BridgeFactory,
    names: Names,
    rabbit: Rabbit,
    witness: str,
    kafka: EmbeddedKafka,
) -> None:
    """Pre-created as a broker's auto-creation or another team might: 1 partition, 1 hour,
    compacted, small records. Tansu cannot add partitions, so the fix is a new topic."""
    short = {
        "retention.ms": "3600000",
        "min.insync.replicas": "1",
        "cleanup.policy": "compact",
        "max.message.bytes": "1024",
    }
    admin.create(names.topic, 1, short)
    bridge = start_bridge(
        wait=False, BRIDGE_REQUIRE_DURABLE_TOPICS="true", BRIDGE_TOPIC_AUDIT_SECONDS="0.5"
    )
    poll(lambda: rabbit.queue_exists(names.queue), 30, what="the queue declared")
    status, body = bridge.http("/readyz")
    assert status == 503 and f"topic {names.topic} has partitions=1, expected 4" in body
    publish_events(names.exchange, 200)
    audited(bridge, 3)
    sent, _ = rabbit.queue_state(witness)
    assert rabbit.queue_state(names.queue) == (sent, 0)  # held: RabbitMQ keeps every message
    log = bridge.log()
    found = {"partitions": "1", **{s: v for s, v in short.items() if s != "min.insync.replicas"}}
    for setting, value in found.items():
        assert log.count(f"topic {names.topic} has {setting}={value}, expected") == 1
        assert bridge.metric(SHORT, topic=names.topic, setting=setting) == 1
    assert bridge.metric(SHORT, topic=names.topic, setting="min.insync.replicas") == 0
    assert bridge.metric(SHORT, topic=names.dlq_topic) == 0

    admin.delete(names.topic)  # the bridge's own watcher may create it first: as configured
    admin.create(names.topic, 4, {"retention.ms": str(30 * DAY_MS), "min.insync.replicas": "1"})
    poll(lambda: bridge.http("/readyz")[0] == 200, 30, what="ready once the topic is fixed")
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness)
    assert bridge.metric(SHORT, topic=names.topic) == 0
    assert f"topic {names.topic} has partitions as expected now" in bridge.log()


@pytest.mark.slow
def test_a_topic_that_falls_short_while_consumed_stops_the_consumer_until_it_is_fixed(
    admin: KafkaAdmin,
    start_bridge: BridgeFactory,
    names: Names,
    rabbit: Rabbit,
    witness: str,
    kafka: EmbeddedKafka,
) -> None:
    bridge = start_bridge(BRIDGE_REQUIRE_DURABLE_TOPICS="true", BRIDGE_TOPIC_AUDIT_SECONDS="0.5")
    publish_events(names.exchange, 50, hostname="before@test")
    poll(lambda: rabbit.queue_state(names.queue) == (0, 1), 20, what="the first events taken")
    admin.alter(names.dlq_topic, {"retention.ms": "3600000"})
    poll(lambda: bridge.http("/readyz")[0] == 503, 20, what="unready")
    poll(lambda: rabbit.queue_state(names.queue)[1] == 0, 20, what="the consumer gone")
    witnessed, _ = rabbit.queue_state(witness)
    publish_events(names.exchange, 50, hostname="held@test")
    held = rabbit.queue_state(witness)[0] - witnessed
    audited(bridge, 3)
    assert rabbit.queue_state(names.queue) == (held, 0)
    assert bridge.metric(SHORT, topic=names.dlq_topic, setting="retention.ms") == 1

    admin.alter(names.dlq_topic, {"retention.ms": "-1"})  # forever: longer than expected
    poll(lambda: bridge.http("/readyz")[0] == 200, 20, what="ready once the topic is fixed")
    assert_witnessed_in_kafka(kafka.bootstrap_servers, names.topic, rabbit, witness)
    assert rabbit.queue_state(names.queue) == (0, 1)
    assert bridge.log().count("amqp consuming") == 2  # a fresh session after the hold


def test_a_replication_factor_above_the_brokers_exits_2_naming_the_setting(
    kafka: EmbeddedKafka, names: Names
) -> None:
    env = bridge_env(
        names,
        kafka.bootstrap_servers,
        BRIDGE_TOPIC_REPLICATION_FACTOR="3",
        BRIDGE_TOPIC_MIN_INSYNC_REPLICAS="2",
        BRIDGE_LOG_FORMAT="text",
    )
    result = run_cli("run", env={**os.environ, **env}, timeout=60)
    assert result.returncode == 2, result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "REPLICATION_FACTOR" in x]
    assert "BRIDGE_TOPIC_REPLICATION_FACTOR=3: the Kafka cluster has 1 broker(s)" in line
    assert not KafkaAdmin(kafka.bootstrap_servers).exists(names.topic)


async def test_a_sink_that_cannot_create_its_topics_raises_and_closes_its_producer(
    kafka: EmbeddedKafka, names: Names
) -> None:
    """What `run_bridge` raises for the CLI's exit 2; an unclosed producer would warn when
    collected (warnings are errors)."""
    config = Config.load(
        kafka_bootstrap_servers=kafka.bootstrap_servers,
        kafka_enable_idempotence=False,
        topic=names.topic,
        dlq_topic=names.dlq_topic,
        topic_replication_factor=2,
        topic_min_insync_replicas=1,
    )
    with pytest.raises(ConfigError, match="BRIDGE_TOPIC_REPLICATION_FACTOR=2"):
        await KafkaSink(config).start()
    gc.collect()


def test_bad_topic_config_exits_2_with_one_line(kafka: EmbeddedKafka, names: Names) -> None:
    env = bridge_env(names, kafka.bootstrap_servers, BRIDGE_TOPIC_CONFIG="retention.ms")
    result = run_cli("run", env={**os.environ, **env}, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "BRIDGE_TOPIC_CONFIG" in line and "'retention.ms' is not key=value" in line


def test_a_topic_whose_settings_cannot_be_read_is_said_once_per_change(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = TopicAdmin(Config.load(), ["a", "b"])
    with caplog.at_level(logging.WARNING, "celery_kafka_bridge.kafka.topics"):
        for errors in ({"a": 29}, {"a": 29}, {}, {"a": 29, "b": 29}):
            admin._report_unreadable(errors)
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read the settings of topic a (Kafka error 29): not audited",
        "cannot read the settings of topic a (Kafka error 29): not audited",
        "cannot read the settings of topic b (Kafka error 29): not audited",
    ]
