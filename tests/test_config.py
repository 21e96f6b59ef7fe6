"""Settings: every BRIDGE_* variable, flags beat variables, secrets from files, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_kafka_bridge.amqp.queues import queue_arguments
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.errors import ConfigError
from harness.support import run_cli


def test_defaults_match_the_documented_ones() -> None:
    config = Config.load()
    assert config.amqp_url == "amqp://guest:guest@localhost:5672//"
    assert config.bootstrap_servers == ["localhost:9092"]
    assert (config.topic, config.dlq_topic) == ("celery.events", "celery.events.dlq")
    assert config.queue_name == "celeryev.kafka-bridge"
    assert (config.topology, config.queue_type, config.kafka_enable_idempotence) == (
        "ordered",
        "quorum",
        True,
    )
    durability = (config.topic_replication_factor, config.topic_min_insync_replicas)
    assert durability == (3, 2)
    assert config.topic_retention_ms == 30 * 24 * 3600 * 1000
    assert (config.require_durable_topics, config.topic_configs) == (False, {})


def test_environment_variables_are_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PREFETCH", "50")
    monkeypatch.setenv("BRIDGE_KAFKA_ENABLE_IDEMPOTENCE", "false")
    assert Config.load().prefetch == 50
    assert Config.load().kafka_enable_idempotence is False
    assert Config.load(prefetch="7").prefetch == 7


def test_a_secret_is_read_from_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "amqp-url"
    secret.write_text("amqp://u:p@rabbit:5672//\n")
    monkeypatch.setenv("BRIDGE_AMQP_URL_FILE", str(secret))
    assert Config.load().amqp_url == "amqp://u:p@rabbit:5672//"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_PREFETCH": "0"}, "BRIDGE_PREFETCH"),
        ({"BRIDGE_QUEUE_TYPE": "stream"}, "BRIDGE_QUEUE_TYPE"),
        ({"BRIDGE_AMQP_URL": "http://x"}, "BRIDGE_AMQP_URL"),
        ({"BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "kafka"}, "BRIDGE_KAFKA_BOOTSTRAP_SERVERS"),
        ({"BRIDGE_AMQP_URL": "amqp://rabbit:notaport//"}, "BRIDGE_AMQP_URL"),
        (
            {"BRIDGE_QUEUE_TYPE": "classic", "BRIDGE_DELIVERY_LIMIT": "5"},
            "BRIDGE_DELIVERY_LIMIT needs BRIDGE_QUEUE_TYPE=quorum",
        ),
        ({"BRIDGE_AMQP_URL_FILE": "/nonexistent"}, "BRIDGE_AMQP_URL_FILE"),
        ({"BRIDGE_NO_SUCH_FILE": "/x"}, "BRIDGE_NO_SUCH_FILE"),
        ({"BRIDGE_TOPIC_CONFIG": "segment.ms"}, "BRIDGE_TOPIC_CONFIG: .*'segment.ms' is not"),
        ({"BRIDGE_TOPIC_CONFIG": "a=1,=2"}, "BRIDGE_TOPIC_CONFIG: .*'=2' is not key=value"),
        ({"BRIDGE_TOPIC_CONFIG": "retention.ms=1"}, "BRIDGE_TOPIC_RETENTION_MS"),
        ({"BRIDGE_TOPIC_RETENTION_MS": "0"}, "BRIDGE_TOPIC_RETENTION_MS"),
        ({"BRIDGE_TOPIC_RETENTION_MS": "-2"}, "BRIDGE_TOPIC_RETENTION_MS"),
        (
            {"BRIDGE_TOPIC_REPLICATION_FACTOR": "1"},
            "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS=2 is above BRIDGE_TOPIC_REPLICATION_FACTOR=1",
        ),
        ({"BRIDGE_STUCK_AFTER": "tasks.*=soon"}, "BRIDGE_STUCK_AFTER"),
        ({"BRIDGE_STUCK_AFTER": "=60"}, "BRIDGE_STUCK_AFTER"),
        ({"BRIDGE_TASKS_TOPIC": "no spaces"}, "BRIDGE_TASKS_TOPIC"),
        ({"BRIDGE_TOMBSTONE_AFTER_SECONDS": "0"}, "BRIDGE_TOMBSTONE_AFTER_SECONDS"),
    ],
)
def test_a_bad_setting_fails_with_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message) as caught:
        Config.load()
    assert "\n" not in str(caught.value)


def test_the_cli_exits_2_with_one_line_naming_the_setting() -> None:
    result = run_cli("run", "--prefetch", "-3", timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "BRIDGE_PREFETCH" in line


def test_every_setting_has_a_documented_flag() -> None:
    result = run_cli("run", "--help", timeout=60)
    assert result.returncode == 0, result.stderr
    for name in Config.model_fields:
        assert f"--{name.replace('_', '-')}" in result.stdout
        assert f"BRIDGE_{name.upper()}" in result.stdout.replace("\n", "").replace(" ", "")


def test_quorum_queues_get_an_explicit_unlimited_delivery_limit_only_where_it_means_that() -> None:
    config = Config.load()
    assert "x-delivery-limit" not in queue_arguments(config, "3.10.8")  # -1 drops there
    assert queue_arguments(config, "4.0.5")["x-delivery-limit"] == -1
    limited = Config.load(delivery_limit=5, dead_letter_exchange="dlx")
    assert queue_arguments(limited, "3.10.8")["x-delivery-limit"] == 5
    assert queue_arguments(limited, "3.10.8")["x-dead-letter-exchange"] == "dlx"
    assert "x-max-length" not in queue_arguments(config, "3.10.8")
    bounded = Config.load(queue_max_length=100)
    assert queue_arguments(bounded, "3.10.8")["x-overflow"] == "reject-publish"
