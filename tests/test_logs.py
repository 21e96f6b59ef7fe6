"""Logs are JSON lines with one line per state change, and never carry the AMQP password."""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator

import pytest

from celery_kafka_bridge.config import Config
from harness.support import Names, json_lines, poll, publish_events, vhost_url
from tests.conftest import BridgeFactory


@pytest.fixture
def amqp_user(names: Names) -> Iterator[tuple[str, str]]:
    """A RabbitMQ user with a password found nowhere else (guest's equals its user name)."""
    user, password = f"bridge-{names.suffix}", secrets.token_hex(12)
    subprocess.run(["rabbitmqctl", "-q", "add_user", user, password], check=True)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", names.vhost, user, ".*", ".*", ".*"],
        check=True,
    )
    yield user, password
    subprocess.run(["rabbitmqctl", "-q", "delete_user", user], check=True)


def test_a_bridge_run_logs_json_lines_for_each_state_and_never_the_password(
    names: Names, amqp_user: tuple[str, str], start_bridge: BridgeFactory
) -> None:
    user, password = amqp_user
    bridge = start_bridge(
        BRIDGE_AMQP_URL=vhost_url(names.vhost, f"amqp://{user}:{password}@127.0.0.1:5672")
    )
    poll(lambda: bridge.http("/readyz")[0] == 200, 15, what="ready")
    publish_events(names.exchange, 50)
    poll(
        lambda: bridge.metric("celery_kafka_bridge_amqp_messages_acked_total") > 0,
        15,
        what="events through",
    )
    bridge.signal(signal.SIGTERM)
    assert bridge.wait(20) == 0
    text = bridge.log()
    assert password not in text
    lines = json_lines(text)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    messages = [str(line["message"]) for line in lines]
    assert any(m.startswith("amqp consuming") and f"{user}:***@" in m for m in messages)
    assert any(line.get("state") == "ready" for line in lines)
    assert any(
        line.get("state") == "not_ready" and "draining" in str(line["message"]) for line in lines
    )
    assert any(m.startswith("draining") for m in messages)


def test_a_refused_login_is_retried_and_logged_without_the_password(
    names: Names, amqp_user: tuple[str, str], start_bridge: BridgeFactory
) -> None:
    user, _ = amqp_user
    wrong = secrets.token_hex(12)
    url = vhost_url(names.vhost, f"amqp://{user}:{wrong}@127.0.0.1:5672")
    bridge = start_bridge(wait=False, BRIDGE_AMQP_URL=url)
    poll(lambda: "retrying in" in bridge.log(), 20, what="a failed login")
    assert bridge.http("/readyz")[0] == 503
    text = bridge.log()
    assert wrong not in text
    retries = [line for line in json_lines(text) if "retrying in" in str(line["message"])]
    assert retries and all(f"{user}:***@" in str(line["message"]) for line in retries)


def test_settings_never_show_secrets_in_their_repr() -> None:
    config = Config.load(
        amqp_url="amqps://u:amqp-secret@rabbit:5671//",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="u",
        kafka_sasl_password="kafka-secret",
    )
    assert "amqp-secret" not in repr(config)
    assert "kafka-secret" not in repr(config)
    assert "u:***@rabbit" in repr(config)
