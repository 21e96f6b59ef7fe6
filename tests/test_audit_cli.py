"""The audit commands against a topic filled by a real worker through the real bridge."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from celery import Celery
from celery.events.receiver import EventReceiver
from celery.events.state import State
from click.testing import CliRunner

from celery_kafka_bridge.cli import main
from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.support import KafkaRecord, Names, Rabbit, events_of, read_topic
from harness.topic_writer import encode, task_events, write_records
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import client_app, run_task_mix

FINAL = {"task-succeeded", "task-failed", "task-revoked"}


def invoke(kafka: EmbeddedKafka, topic: str, *args: str) -> Any:
    result = CliRunner().invoke(
        main, [*args, "--kafka-bootstrap-servers", kafka.bootstrap_servers, "--topic", topic]
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def witness_state(events: list[dict[str, Any]]) -> State:
    """A State fed by Celery's own receiver, from what the witness queue saw."""
    state = State()
    receiver = EventReceiver(None, handlers={"*": state.event}, app=Celery(set_as_current=False))
    for event in events:
        receiver.process(*receiver.event_from_message(dict(event)))
    return state


@pytest.mark.slow
def test_timeline_and_state_agree_with_what_the_witness_queue_saw(
    *,
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    start_bridge()
    worker()
    app = client_app(names)
    task_ids = run_task_mix(app)

    def every_task_finished(records: list[KafkaRecord]) -> bool:
        done = {r.headers["task_id"] for r in records if r.headers["event_type"].decode() in FINAL}
        return {t.encode() for t in task_ids} <= done

    read_topic(kafka.bootstrap_servers, names.topic, until=every_task_finished, timeout=60)
    app.close()
    seen = events_of(
        m for m in rabbit.drain(witness) if m.properties["content_type"] == "application/json"
    )

    for task_id in task_ids:
        timeline = orjson.loads(invoke(kafka, names.topic, "timeline", task_id, "--json"))
        expected = sorted(
            (e for e in seen if e.get("uuid") == task_id), key=lambda e: e["timestamp"]
        )
        assert [step["event"] for step in timeline["steps"]] == expected
        assert timeline["state"] == witness_state(expected).tasks[task_id].state

    summary = orjson.loads(invoke(kafka, names.topic, "state", "--json"))
    reference = witness_state(seen)
    tasks = list(reference.tasks.values())
    assert summary["by_state"] == dict(Counter(t.state for t in tasks))
    assert {(f["task_id"], f["exception"]) for f in summary["failures"]} == {
        (t.uuid, t.exception) for t in tasks if t.state == "FAILURE"
    }
    assert summary["by_state"]["FAILURE"] == 1
    assert {w["hostname"] for w in summary["workers"]} == set(reference.workers)
    assert summary["stuck"] == []


def test_tail_filters_and_prints_one_json_event_per_line(
    kafka: EmbeddedKafka, names: Names
) -> None:
    events = task_events("t1", name="app.add") + task_events("t2", name="app.mul")
    write_records(kafka.bootstrap_servers, names.topic, [encode(e) for e in events])
    out = invoke(
        kafka,
        names.topic,
        "tail",
        "--since",
        "-1h",
        "--task-name",
        "app.mul",
        "--type",
        "task-s*",
        "--json",
        "--count",
        "3",
    )
    got = [orjson.loads(line) for line in out.splitlines()]
    wanted = [e for e in events if e["uuid"] == "t2" and e["type"].startswith("task-s")]
    assert sorted(got, key=lambda e: e["clock"]) == wanted
    text = invoke(kafka, names.topic, "tail", "--since", "-1h", "--task-id", "t1", "--count", "4")
    assert sum(" w1@h task-" in line and "[t1]" in line for line in text.splitlines()) == 4


def test_timeline_of_an_unknown_task_says_so(kafka: EmbeddedKafka, names: Names) -> None:
    write_records(kafka.bootstrap_servers, names.topic, [encode(task_events("t1")[0])])
    result = CliRunner().invoke(
        main,
        [
            "timeline",
            "nope",
            "--kafka-bootstrap-servers",
            kafka.bootstrap_servers,
            "--topic",
            names.topic,
        ],
    )
    assert result.exit_code == 1
    assert f"no events for task nope in {names.topic}" in result.stderr
