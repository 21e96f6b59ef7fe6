"""The JSON Schemas of the record: valid 2020-12 schemas, shipped and printed, and every event a
real worker sends (and every header the bridge writes) matches them."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
from jsonschema import Draft202012Validator

from celery_kafka_bridge import jsoncompat
from celery_kafka_bridge.cli import main
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.schemas import CUSTOM, HEADERS, schema_for, schema_names, schema_text
from harness.support import KafkaRecord, Names, Rabbit, events_of, read_topic
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import TASK_EVENTS, client_app, run_task_mix

CELERY_TYPES = {
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-rejected",
    "worker-online",
    "worker-heartbeat",
    "worker-offline",
}


def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(event: dict[str, Any]) -> list[str]:
    return [e.message for e in validator(schema_for(str(event["type"]))).iter_errors(event)]


def test_every_shipped_schema_is_a_valid_2020_12_schema_with_one_per_event_type() -> None:
    assert set(schema_names()) == CELERY_TYPES | {CUSTOM, HEADERS}
    for name in schema_names():
        schema = orjson.loads(schema_text(name))
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema_for("task-progress")["title"] == "Celery custom event"


def test_the_schemas_refuse_fields_of_the_wrong_type_or_missing() -> None:
    good = {"type": "task-succeeded", "uuid": "u", "hostname": "w@h", "timestamp": 1.5,
            "utcoffset": 0, "pid": 7, "clock": 3, "result": "3", "runtime": 0.1}  # fmt: skip
    assert errors(good) == []
    assert errors({**good, "runtime": "fast"})
    assert errors({k: v for k, v in good.items() if k != "uuid"})
    assert errors({"type": "task-progress", "progress": 50}) == []


@pytest.mark.parametrize("name", ["task-failed", "headers", "custom"])
def test_the_schema_command_prints_a_schema_and_lists_them_all(name: str) -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["schema"])
    assert listed.exit_code == 0
    assert listed.output.split() == schema_names()
    printed = runner.invoke(main, ["schema", name])
    assert printed.exit_code == 0
    assert orjson.loads(printed.output) == orjson.loads(schema_text(name))
    unknown = runner.invoke(main, ["schema", "task-nope"])
    assert unknown.exit_code == 2
    assert "no schema 'task-nope'" in unknown.output


def header_errors(record: KafkaRecord) -> list[str]:
    headers = {k: v.decode() for k, v in record.headers.items()}
    schema = orjson.loads(schema_text(HEADERS))
    return [e.message for e in validator(schema).iter_errors(headers)]


@pytest.mark.slow
def test_every_event_a_real_worker_sends_and_every_header_match_the_schemas(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    """A prefork worker runs tasks that succeed, fail, retry, are revoked, are rejected and send a
    custom event; the bridge runs with CloudEvents on, so their headers are checked too."""
    start_bridge(BRIDGE_CLOUDEVENTS="binary")
    celery_worker = worker()
    app = client_app(names)
    run_task_mix(app)
    app.send_task("tests.celery_app.refuse")

    def types_seen(wanted: set[str]) -> Callable[[list[KafkaRecord]], bool]:
        return lambda records: {r.headers["event_type"].decode() for r in records} >= wanted

    everything_but_offline = TASK_EVENTS | CELERY_TYPES - {"worker-offline"}
    read_topic(kafka.bootstrap_servers, names.topic, until=types_seen(everything_but_offline))
    celery_worker.send_signal(signal.SIGTERM)
    assert celery_worker.wait(30) == 0
    app.close()
    records = read_topic(
        kafka.bootstrap_servers, names.topic, until=types_seen(CELERY_TYPES), idle=0.5
    )

    assert {r.headers["event_type"].decode() for r in records} >= CELERY_TYPES | TASK_EVENTS
    for record in records:
        event = jsoncompat.loads(record.value)[0]
        assert errors(event) == [], event
        assert header_errors(record) == [], record.headers
        cloudevent = from_binary_event(KafkaMessage(record.headers, record.key, record.value))
        assert cloudevent.get_type() == f"celery.{event['type']}"
    sent = events_of(rabbit.drain(witness))
    assert {str(e["type"]) for e in sent} >= CELERY_TYPES | {"task-progress"}
    assert [e for e in sent if errors(e)] == []
