"""Replaying a time range: to JSON lines, and onto a Celery event exchange in another vhost."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.events.receiver import EventReceiver
from click.testing import CliRunner
from kombu.connection import Connection

from celery_kafka_bridge.cli import main
from celery_kafka_bridge.codec import EventRecord
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.reader.replay import RateLimiter
from harness.support import Names, new_vhost, poll, vhost_url
from harness.topic_writer import encode, task_events, write_records

ODD_BODY = b'{"type": "worker-heartbeat",  "hostname": "w1@h", "freq": 2.0, "timestamp": 1.5e9,\
 "utcoffset": 0, "pid": 7, "clock": 9, "active": 0, "processed": 3, "loadavg": [0.1, 0, 0]}'


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_rate_limiter_allows_a_burst_then_paces_to_the_rate() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=3, clock=lambda: clock.now, sleep=clock.sleep)
    for _ in range(3):
        limiter.acquire()
    assert clock.slept == []
    for _ in range(5):
        limiter.acquire()
    assert clock.slept == pytest.approx([0.1] * 5)
    clock.now += 10
    for _ in range(3):
        limiter.acquire()
    assert len(clock.slept) == 5, "an idle bucket refills, up to its burst"


def stored_records(kafka: EmbeddedKafka, topic: str) -> list[EventRecord]:
    events: list[dict[str, Any] | bytes] = [
        *task_events("t1"),
        *task_events("t2", name="app.mul"),
        ODD_BODY,
        {
            "type": "task-progress",
            "uuid": "t1",
            "hostname": "w1@h",
            "progress": 50,
            "timestamp": 1.5e9,
            "clock": 3,
        },
    ]
    records = [encode(e) for e in events]
    write_records(kafka.bootstrap_servers, topic, records)
    return records


def replay(kafka: EmbeddedKafka, topic: str, *args: str) -> str:
    result = CliRunner().invoke(
        main,
        [
            "replay",
            "--kafka-bootstrap-servers",
            kafka.bootstrap_servers,
            "--topic",
            topic,
            "--since",
            "-1h",
            "--rate",
            "0",
            *args,
        ],
    )
    assert result.exit_code == 0, result.output
    return result.stderr


def test_a_time_range_exports_to_json_lines_filtered_by_type(
    kafka: EmbeddedKafka, names: Names, tmp_path: Path
) -> None:
    records = stored_records(kafka, names.topic)
    path = tmp_path / "out.jsonl"
    stderr = replay(
        kafka, names.topic, "--type", "task-s*", "--type", "worker-*", "--to", f"jsonl:{path}"
    )
    lines = path.read_bytes().splitlines()
    expected = [r.value for r in records if r.event_type.startswith(("task-s", "worker-"))]
    assert sorted(lines) == sorted(expected)
    assert ODD_BODY in lines
    assert "replayed 7 events" in stderr


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A RabbitMQ vhost of its own, so the replayed exchange is seen by nobody else."""
    name = f"replay-{uuid.uuid4().hex[:8]}"
    with new_vhost(name):
        yield name


class RecordingReceiver(EventReceiver):  # type: ignore[misc]
    """Celery's own event receiver, also keeping each raw message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[Any] = []

    def _receive(self, body: Any, message: Any) -> None:
        self.messages.append(message)
        super()._receive(body, message)


def test_replay_to_amqp_feeds_a_celery_receiver_every_event_byte_for_byte(
    kafka: EmbeddedKafka, names: Names, vhost: str
) -> None:
    records = stored_records(kafka, names.topic)
    url = vhost_url(vhost)
    received: list[dict[str, Any]] = []
    ready = threading.Event()

    with Connection(url) as connection:
        app = Celery(set_as_current=False)
        receiver = RecordingReceiver(connection, handlers={"*": received.append}, app=app)
        receiver.on_consume_ready = lambda *args, **kwargs: ready.set()

        def stop_when_all_arrived(event: dict[str, Any]) -> None:
            received.append(event)
            receiver.should_stop = len(received) >= len(records)

        receiver.handlers = {"*": stop_when_all_arrived}
        capture = threading.Thread(target=receiver.capture, kwargs={"timeout": 30, "wakeup": False})
        capture.start()
        try:
            poll(ready.is_set, 10, what="the receiver to consume")
            stderr = replay(kafka, names.topic, "--to", url)
            capture.join(30)
        finally:
            receiver.should_stop = True
            capture.join(5)

    assert f"replayed {len(records)} events" in stderr
    # py-amqp hands over the body decoded by its content_encoding (utf-8): encode it back.
    by_body = {m.body.encode() if isinstance(m.body, str) else m.body: m for m in receiver.messages}
    assert sorted(by_body) == sorted(r.value for r in records)
    for record in records:
        message = by_body[record.value]
        assert message.delivery_info["exchange"] == "celeryev"
        assert message.delivery_info["routing_key"] == record.event_type.replace("-", ".")
        assert message.content_type == "application/json"
        assert message.headers == {"hostname": "w1@h"}
    assert sorted(e["type"] for e in received) == sorted(r.event_type for r in records)
