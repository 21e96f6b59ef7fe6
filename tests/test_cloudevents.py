"""CloudEvents binary mode: the CloudEvents SDK's Kafka binding reads every record as a valid
CloudEvent; with the mode off, records carry no ce_ header."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event

from celery_kafka_bridge.codec import Envelope, EventRecord, decode
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.kafka.cloudevents import cloudevent_headers
from harness.support import KafkaRecord, Names, Rabbit, read_topic
from tests.conftest import BridgeFactory

STAMP = 1_764_806_400.25  # 2025-12-04T00:00:00.25Z


def record_of(event: dict[str, Any]) -> EventRecord:
    body = orjson.dumps(event)
    (record,) = decode(Envelope(body, "application/json", "utf-8", "task.x", 1), 10_000)
    assert isinstance(record, EventRecord)
    return record


def test_a_task_event_gets_every_attribute_from_its_own_fields() -> None:
    record = record_of(
        {"type": "task-started", "uuid": "u-1", "hostname": "celery@w 1", "timestamp": STAMP}
    )
    assert dict(cloudevent_headers(record)) == {
        "ce_specversion": b"1.0",
        "ce_id": dict(record.headers)["event_id"],
        "ce_source": b"celery://celery@w%201",
        "ce_type": b"celery.task-started",
        "ce_time": b"2025-12-04T00:00:00.250000Z",
        "ce_subject": b"u-1",
        "content-type": b"application/json",
    }


def test_an_event_without_task_hostname_or_time_still_has_the_required_attributes() -> None:
    headers = dict(cloudevent_headers(record_of({"type": "worker-heartbeat", "timestamp": 1e300})))
    assert headers["ce_source"] == b"celery://unknown"
    assert "ce_subject" not in headers
    assert "ce_time" not in headers, "a timestamp out of range has no RFC 3339 form"
    event = from_binary_event(KafkaMessage(headers, None, b'{"type": "worker-heartbeat"}'))
    assert event.get_type() == "celery.worker-heartbeat"


def cloudevent(record: KafkaRecord) -> Any:
    return from_binary_event(KafkaMessage(record.headers, record.key, record.value))


def test_binary_mode_records_read_back_as_cloudevents_with_the_value_unchanged(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, start_bridge: BridgeFactory
) -> None:
    start_bridge(BRIDGE_CLOUDEVENTS="binary")
    single = b'{"type": "task-succeeded", "uuid": "u-1", "hostname": "w@h", "timestamp": %r}' % (
        STAMP
    )
    listed = [
        {"type": "task-received", "uuid": "u-2", "hostname": "w@h", "timestamp": STAMP + 1},
        {"type": "worker-heartbeat", "hostname": "w@h", "timestamp": STAMP + 2, "freq": 2.0},
    ]
    rabbit.publish(names.exchange, "task.succeeded", single, "application/json")
    rabbit.publish(names.exchange, "task.multi", orjson.dumps(listed), "application/json")
    records = read_topic(
        kafka.bootstrap_servers, names.topic, until=lambda rs: len(rs) >= 3, timeout=30, idle=0.5
    )
    by_type = {r.headers["event_type"].decode(): r for r in records}
    assert by_type["task-succeeded"].value == single
    for record in records:
        event, data = cloudevent(record), orjson.loads(record.value)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == record.headers["event_id"].decode()
        assert event.get_source() == "celery://w@h"
        assert event.get_type() == f"celery.{data['type']}"
        assert event.get_time() == datetime.fromtimestamp(data["timestamp"], tz=UTC)
        assert event.get_subject() == data.get("uuid")
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == data
        assert record.headers["content_type"] == b"application/json", "own headers stay"


def test_with_cloudevents_off_records_carry_no_ce_header(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, start_bridge: BridgeFactory
) -> None:
    start_bridge()
    body = b'{"type": "task-started", "uuid": "u-1", "hostname": "w@h", "timestamp": 1.5}'
    rabbit.publish(names.exchange, "task.started", body, "application/json")
    (record,) = read_topic(kafka.bootstrap_servers, names.topic, until=bool, timeout=30, idle=0.5)
    assert set(record.headers) == {
        "event_type",
        "hostname",
        "task_id",
        "event_id",
        "content_type",
        "received_at",
    }
