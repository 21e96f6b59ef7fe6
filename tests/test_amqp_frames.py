"""The fast basic.deliver path hands consumers what py-amqp's own decoding would (real RabbitMQ)."""

from __future__ import annotations

import contextlib
from typing import Any

import amqp
import pytest

from celery_kafka_bridge.amqp.frames import Delivered, fast_frame_handler
from harness.support import Names, Rabbit, amqp_connection, poll

# (body, properties) covering what py-amqp decodes: every property kind, headers tables, no
# properties, an empty body and bodies spanning several frames (RabbitMQ's frame_max: 128 KiB).
MESSAGES: list[tuple[bytes, dict[str, Any]]] = [
    (b'{"type": "task-sent"}', {"content_type": "application/json", "content_encoding": "utf-8"}),
    (
        b"\x81\xa4type\xa9task-sent",
        {
            "content_type": "application/x-msgpack",
            "content_encoding": "binary",
            "application_headers": {"x-a": 1, "nested": {"k": [1, "v"]}},
            "delivery_mode": 2,
            "priority": 3,
            "correlation_id": "c" * 255,
            "reply_to": "r",
            "message_id": "m",
            "timestamp": 1700000000,
            "type": "t",
            "app_id": "a",
        },
    ),
    (b"pickled?", {"content_type": "application/x-python-serialize"}),
    (b"no properties", {}),
    (b"", {"content_type": "application/json"}),
    (b"\xff\xfe not utf-8", {"content_encoding": "binary"}),
    (b"x" * 131_072, {"content_type": "text/plain"}),
    (bytes(range(256)) * 2_000, {"content_type": "application/octet-stream"}),
    ("é ünïcode 🚀".encode(), {"content_type": "application/json; charset=utf-8"}),
]


@pytest.fixture
def queues(rabbit: Rabbit, names: Names) -> tuple[str, str]:
    """Two queues bound to the test's exchange, so both see the same messages."""
    pair = (f"{names.queue}-fast", f"{names.queue}-pyamqp")
    rabbit.channel.exchange_declare(names.exchange, "topic", durable=True, auto_delete=False)
    for queue in pair:
        rabbit.channel.queue_declare(queue, durable=True, auto_delete=False)
        rabbit.channel.queue_bind(queue, names.exchange, "#")
    return pair


def consume(conn: amqp.Connection, queue: str, count: int, redeliver: bool = False) -> list[Any]:
    """``count`` messages off ``queue``, acked; rejected (requeued) once first if ``redeliver``."""
    channel = conn.channel()
    channel.auto_decode = False
    received: list[Any] = []
    rejected: set[int] = set()

    def on_message(message: Any) -> None:
        tag = message.delivery_info["delivery_tag"]
        if redeliver and not message.delivery_info["redelivered"]:
            rejected.add(tag)
            channel.basic_reject(tag, requeue=True)
            return
        received.append(message)
        channel.basic_ack(tag)

    channel.basic_consume(queue, callback=on_message)
    poll(lambda: drain(conn) or len(received) >= count, timeout=20)
    return received


def drain(conn: amqp.Connection) -> bool:
    """Handle what arrives within 50 ms; False, so polls go on to their condition."""
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.05)
    return False


def seen(message: Any) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """What the bridge reads of a message; only the content type and encoding of its properties.

    py-amqp gives an empty body as ``""``, the fast path as ``b""``: the bridge wants bytes.
    """
    info = {k: v for k, v in message.delivery_info.items() if k not in ("consumer_tag",)}
    props = {
        k: message.properties[k]
        for k in ("content_type", "content_encoding")
        if k in message.properties
    }
    return message.body or b"", info, props


@pytest.mark.parametrize("redeliver", [False, True], ids=["first", "redelivered"])
def test_fast_path_sees_what_pyamqp_sees(
    rabbit: Rabbit, names: Names, queues: tuple[str, str], redeliver: bool
) -> None:
    for i, (body, props) in enumerate(MESSAGES):
        rabbit.channel.basic_publish(amqp.Message(body, **props), names.exchange, f"task.{i}")
    fast_conn, plain_conn = amqp_connection(frame_handler=fast_frame_handler), amqp_connection()
    try:
        fast = consume(fast_conn, queues[0], len(MESSAGES), redeliver)
        plain = consume(plain_conn, queues[1], len(MESSAGES), redeliver)
    finally:
        fast_conn.close()
        plain_conn.close()
    assert all(isinstance(m, Delivered) for m in fast)
    assert all(isinstance(m, amqp.Message) for m in plain)
    assert [seen(m) for m in fast] == [seen(m) for m in plain]
    assert [m.delivery_info["redelivered"] for m in fast] == [redeliver] * len(MESSAGES)
    assert rabbit.queue_state(queues[0]) == (0, 0)


def test_a_delivery_without_a_consumer_callback_is_requeued(
    rabbit: Rabbit, names: Names, queues: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """As py-amqp does: a delivery for a consumer the channel no longer knows goes back."""
    conn = amqp_connection(frame_handler=fast_frame_handler)
    try:
        channel = conn.channel()
        channel.auto_decode = False
        tag = channel.basic_consume(queues[0], callback=pytest.fail)
        del channel.callbacks[tag]
        rabbit.channel.basic_publish(amqp.Message(b"{}"), names.exchange, "task.x")
        poll(lambda: drain(conn) or "rejecting (requeue)" in caplog.text, timeout=10)
        channel.basic_cancel(tag)
    finally:
        conn.close()
    assert rabbit.queue_state(queues[0]) == (1, 0)


def test_a_channel_that_decodes_bodies_keeps_pyamqps_path(
    rabbit: Rabbit, names: Names, queues: tuple[str, str]
) -> None:
    rabbit.channel.basic_publish(
        amqp.Message("é".encode(), content_encoding="utf-8"), names.exchange, "task.x"
    )
    conn = amqp_connection(frame_handler=fast_frame_handler)
    received: list[Any] = []
    try:
        channel = conn.channel()  # auto_decode is on by default
        channel.basic_consume(queues[0], no_ack=True, callback=received.append)
        poll(lambda: drain(conn) or bool(received), timeout=10)
    finally:
        conn.close()
    assert isinstance(received[0], amqp.Message)
    assert received[0].body == "é"


def test_deliveries_reaching_a_closing_channel_are_dropped_quietly_and_go_back(
    rabbit: Rabbit, names: Names, queues: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Deliveries still unread when the channel closes reach no consumer and log nothing (py-amqp
    would warn once each); RabbitMQ puts them back in the queue with the channel."""
    conn = amqp_connection(frame_handler=fast_frame_handler)
    try:
        for i in range(20):
            rabbit.channel.basic_publish(amqp.Message(b"{}"), names.exchange, f"task.{i}")
        poll(lambda: rabbit.queue_state(queues[0]) == (20, 0), timeout=10, what="all queued")
        channel = conn.channel()
        channel.auto_decode = False
        channel.basic_consume(queues[0], callback=pytest.fail)
        poll(lambda: rabbit.queue_state(queues[0])[0] == 0, timeout=10, what="all sent")
        channel.close()  # reads the 20 deliveries, then close-ok
    finally:
        conn.close()
    poll(lambda: rabbit.queue_state(queues[0]) == (20, 0), timeout=10, what="all back")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
