"""A real worker's events go through the bridge into Kafka: every one, keyed, unchanged."""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from celery import Celery

from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.support import KafkaRecord, Names, Rabbit, amqp_url, events_of, poll, read_topic
from tests.conftest import BridgeFactory

TASK_EVENTS = {
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-progress",
}


def client_app(names: Names) -> Celery:
    app = Celery(broker=amqp_url(), set_as_current=False)
    app.conf.update(
        event_exchange=names.exchange,
        task_default_queue=names.task_queue,
        task_send_sent_event=True,
    )
    return app


def run_task_mix(app: Celery) -> list[str]:
    """Tasks that succeed, fail, retry, get revoked and send a custom event; their ids."""
    results = [
        app.send_task("tests.celery_app.add", (2, 3)),
        app.send_task("tests.celery_app.fail", ("boom",)),
        app.send_task("tests.celery_app.flaky"),
        app.send_task("tests.celery_app.report", (42,)),
    ]
    revoked = app.send_task("tests.celery_app.add", (1, 1), countdown=3)
    app.control.revoke(revoked.id)
    return [r.id for r in [*results, revoked]]


@pytest.mark.slow
def test_every_event_a_worker_sends_reaches_kafka_keyed_and_unchanged(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
) -> None:
    bridge = start_bridge()
    celery_worker = worker()
    app = client_app(names)
    task_ids = run_task_mix(app)

    def all_task_events_seen(records: list[KafkaRecord]) -> bool:
        types = {r.headers["event_type"].decode() for r in records}
        return types >= TASK_EVENTS

    records = read_topic(
        kafka.bootstrap_servers, names.topic, until=all_task_events_seen, timeout=60
    )
    celery_worker.send_signal(signal.SIGTERM)  # no more events, not even heartbeats
    assert celery_worker.wait(30) == 0
    app.close()
    poll(lambda: rabbit.queue_state(names.queue) == (0, 1), 30, what="bridge queue empty")
    bridge.signal(signal.SIGTERM)
    assert bridge.wait(30) == 0
    records = read_topic(kafka.bootstrap_servers, names.topic, idle=1.0)

    sent = rabbit.drain(witness)
    expected = events_of(m for m in sent if m.properties["content_type"] == "application/json")
    assert any(m.delivery_info["routing_key"] == "task.multi" for m in sent), "no list was sent"
    by_id: dict[str, KafkaRecord] = {r.headers["event_id"].decode(): r for r in records}
    missing = [e for e in expected if event_id(e) not in by_id]
    assert not missing, f"{len(missing)} of {len(expected)} events missing, e.g. {missing[:2]}"
    for event in expected:
        record = by_id[event_id(event)]
        assert record.json() == event
        assert record.key == (event.get("uuid") or event["hostname"]).encode()
        assert record.headers["event_type"] == event["type"].encode()
        assert record.headers["hostname"] == event["hostname"].encode()
        assert record.headers["content_type"] == b"application/json"
        assert int(record.headers["received_at"]) > 0
        if "uuid" in event:
            assert record.headers["task_id"] == event["uuid"].encode()
    seen_task_ids = {r.headers.get("task_id", b"").decode() for r in records}
    assert set(task_ids) <= seen_task_ids
    assert {e["type"] for e in expected} >= TASK_EVENTS
    assert rabbit.queue_state(names.queue) == (0, 0), "unacked messages went back to the queue"


def test_a_single_event_message_is_passed_through_byte_for_byte(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, start_bridge: BridgeFactory
) -> None:
    start_bridge()
    body = b'{"type": "worker-heartbeat", "hostname": "w@h",  "freq": 2.0, "clock": 7}'
    rabbit.publish(names.exchange, "worker.heartbeat", body, "application/json")
    (record,) = read_topic(kafka.bootstrap_servers, names.topic, until=bool, timeout=30, idle=0.5)
    assert record.value == body
    assert record.key == b"w@h"
    assert record.headers["event_id"].decode() == event_id(orjson.loads(body))
    assert "task_id" not in record.headers
    poll(lambda: rabbit.queue_state(names.queue)[0] == 0, 10, what="queue empty")
