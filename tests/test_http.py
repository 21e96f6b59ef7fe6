"""/livez, /readyz and /metrics of a real bridge; readiness follows a frozen Kafka broker."""

from __future__ import annotations

import json
import socket

import psutil
import pytest

from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.support import BridgeProcess, json_lines, poll
from tests.conftest import BridgeFactory

PREFIX = "celery_kafka_bridge"


def ready(bridge: BridgeProcess) -> bool:
    return bridge.http("/readyz")[0] == 200


@pytest.mark.slow
def test_a_consuming_bridge_is_live_ready_and_serves_its_metrics(
    start_bridge: BridgeFactory,
) -> None:
    bridge = start_bridge()
    poll(lambda: ready(bridge), 15, what="/readyz 200")
    assert bridge.http("/livez") == (200, "ok\n")
    assert json.loads(bridge.http("/readyz")[1]) == {
        "ready": True,
        "amqp": "attached",
        "kafka": "ok",
        "kafka_writes": "ok",
        "topics": "ok",
        "draining": False,
    }
    assert bridge.metric(f"{PREFIX}_ready") == 1
    assert bridge.metric(f"{PREFIX}_connection_up", side="amqp") == 1
    assert bridge.metric(f"{PREFIX}_connection_up", side="kafka") == 1
    poll(lambda: bridge.metric(f"{PREFIX}_queue_consumers") == 1, 15, what="queue polled")
    assert bridge.http("/nothing")[0] == 404
    assert '"state":"ready"' in bridge.log()


@pytest.mark.slow
def test_readiness_drops_while_kafka_is_frozen_and_returns_on_its_own(
    own_kafka: EmbeddedKafka, start_bridge: BridgeFactory
) -> None:
    bridge = start_bridge(BRIDGE_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers)
    poll(lambda: ready(bridge), 15, what="ready before the freeze")
    assert own_kafka.process is not None
    broker = psutil.Process(own_kafka.process.pid)
    broker.suspend()
    try:
        poll(lambda: not ready(bridge), 10, what="unready once Kafka is frozen")
        status, body = bridge.http("/readyz")
        assert status == 503
        assert json.loads(body)["kafka"] != "ok"
        assert bridge.http("/livez")[0] == 200, "a frozen Kafka must not fail liveness"
        assert bridge.metric(f"{PREFIX}_connection_up", side="kafka") == 0
    finally:
        broker.resume()
    poll(lambda: ready(bridge), 20, what="ready again after the thaw")
    assert "not ready: kafka" in bridge.log()


def test_a_port_already_taken_stops_the_bridge_with_one_line_naming_it_and_exit_2(
    start_bridge: BridgeFactory,
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # the bridge listens on every interface
        taken.listen()
        port = taken.getsockname()[1]
        bridge = start_bridge(wait=False, BRIDGE_HTTP_PORT=str(port))
        assert bridge.wait(30) == 2
    (line,) = [ln for ln in json_lines(bridge.log()) if ln["level"] == "CRITICAL"]
    assert f"BRIDGE_HTTP_PORT: cannot listen on {port}" in str(line["message"])
