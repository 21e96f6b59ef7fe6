"""The rules file with a real worker: secrets never reach Kafka, routes and drops match what the
workers sent (the witness queue)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.support import (
    KafkaRecord,
    Names,
    Rabbit,
    events_of,
    poll,
    read_topic,
)
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import client_app
from tests.test_schemas import header_errors

pytestmark = pytest.mark.slow

SECRET = "hunter2-a-secret-of-the-tests"
LOGIN = "tests.celery_app.login"
ADD = "tests.celery_app.add"
FAIL = "tests.celery_app.fail"
FINISHED = {"task-succeeded", "task-failed"}


def witnessed(
    rabbit: Rabbit, witness: str, tasks: int, heartbeat: bool = False
) -> list[dict[str, Any]]:
    """What the workers and the client sent, once every task finished (and, if ``heartbeat``,
    a heartbeat came)."""
    messages: list[Any] = []

    def finished() -> bool:
        messages.extend(rabbit.drain(witness, idle=0.2))
        types = [e.get("type") for e in events_of(messages)]
        beat = not heartbeat or "worker-heartbeat" in types
        return beat and sum(t in FINISHED for t in types) >= tasks

    poll(finished, 60, what=f"{tasks} tasks to finish")
    return [e for e in events_of(messages) if "type" in e]  # no poison


def identity(event: dict[str, Any]) -> tuple[Any, ...]:
    """What no rule here changes: which event it is."""
    return event["type"], event.get("uuid"), event.get("hostname"), event.get("timestamp")


def read_all(bootstrap: str, topic: str, expected: int) -> list[KafkaRecord]:
    return read_topic(bootstrap, topic, until=lambda rs: len(rs) >= expected, timeout=60)


def test_a_secret_kwarg_never_reaches_any_topic_and_hashes_stay_joinable(
    start_bridge: BridgeFactory,
    worker: Callable[..., subprocess.Popen[bytes]],
    names: Names,
    rabbit: Rabbit,
    witness: str,
    kafka: EmbeddedKafka,
    tmp_path: Path,
) -> None:
    routed = f"{names.topic}.logins"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "hash_key: {env: TEST_HASH_KEY}\n"
        "rules:\n"
        "  - {name: logins, task_name: 'tests.*.login', route: " + routed + "}\n"
        "  - {name: hide-arguments, event_type: 'task-*', fields: {args: hash, kwargs: hash}}\n"
    )
    bridge = start_bridge(BRIDGE_RULES_FILE=str(rules), TEST_HASH_KEY="k" * 32)
    worker()
    app = client_app(names)
    for password in (SECRET, SECRET, "another-password"):
        app.send_task(LOGIN, kwargs={"user": "ann", "password": password})
    app.send_task(ADD, (1, 2))
    poison = b'{"no-type": "' + SECRET.encode() + b'"}'
    rabbit.publish(names.exchange, "task.poison", poison, "application/json")
    app.close()
    sent = witnessed(rabbit, witness, tasks=4)
    logins = {e["uuid"] for e in sent if e.get("name") == LOGIN}
    in_routed = [e for e in sent if e.get("uuid") in logins]

    records = read_all(kafka.bootstrap_servers, routed, len(in_routed))
    records += read_all(kafka.bootstrap_servers, names.topic, len(sent) - len(in_routed))
    records += read_all(kafka.bootstrap_servers, names.dlq_topic, 1)
    for record in records:
        parts = [record.key or b"", record.value, *record.headers.values()]
        assert not any(SECRET.encode() in part for part in parts), record
    (dead,) = [r for r in records if r.topic == names.dlq_topic]
    assert dead.headers["withheld"] == b"true"

    received = [r.json() for r in records if r.headers.get("event_type") == b"task-received"]
    kwargs = Counter(e["kwargs"] for e in received if e["uuid"] in logins)
    assert sorted(kwargs.values()) == [1, 2]  # equal secrets hash equal, others not
    assert all(len(k) == 64 for k in kwargs)
    assert bridge.metric(
        "celery_kafka_bridge_rule_applied_total", rule="hide-arguments", action="hash"
    ) >= 2 * len(received)


def test_dropped_and_routed_events_match_the_witness_per_topic(
    start_bridge: BridgeFactory,
    worker: Callable[..., subprocess.Popen[bytes]],
    names: Names,
    rabbit: Rabbit,
    witness: str,
    kafka: EmbeddedKafka,
    tmp_path: Path,
) -> None:
    routed = f"{names.topic}.failures"
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - {name: no-heartbeats, event_type: worker-heartbeat, drop: true}\n"
        "  - {name: failures, task_name: " + FAIL + ", route: " + routed + "}\n"
    )
    bridge = start_bridge(BRIDGE_RULES_FILE=str(rules))
    worker()
    app = client_app(names)
    for i in range(6):
        if i % 3:
            app.send_task(ADD, (i, i))
        else:
            app.send_task(FAIL, ("boom",))
    app.close()
    sent = witnessed(rabbit, witness, tasks=6, heartbeat=True)
    failing = {e["uuid"] for e in sent if e.get("name") == FAIL}
    kept = [e for e in sent if e["type"] != "worker-heartbeat"]
    to_routed = Counter(identity(e) for e in kept if e.get("uuid") in failing)
    to_main = Counter(identity(e) for e in kept if e.get("uuid") not in failing)
    assert len(failing) == 2 and to_routed and to_main

    in_routed = read_all(kafka.bootstrap_servers, routed, sum(to_routed.values()))
    in_main = read_all(kafka.bootstrap_servers, names.topic, sum(to_main.values()))
    assert Counter(identity(r.json()) for r in in_routed) == to_routed
    assert Counter(identity(r.json()) for r in in_main) == to_main
    assert all(r.headers["shaped_by"] == b"failures" for r in in_routed)
    assert all(r.headers["task_name"] == FAIL.encode() for r in in_routed)
    assert [e for r in in_routed + in_main for e in header_errors(r)] == []
    beats = sum(e["type"] == "worker-heartbeat" for e in sent)
    metric = "celery_kafka_bridge_rule_applied_total"
    poll(
        lambda: bridge.metric(metric, rule="no-heartbeats", action="drop") >= beats,
        30,
        what=f"{beats} heartbeats dropped",
    )
