"""The AMQP side: one thread owns the connection, consumes with manual acks, applies acks.

kombu/py-amqp are blocking and not thread-safe, so every channel operation happens on this
thread. Deliveries leave it in batches; acks come back to it in batches through a deque.

Consumers sit on several channels (`amqp.topology`), each with its own delivery tags; the
pipeline sees the session's (`acks.SessionTags`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from amqp.exceptions import PreconditionFailed
from kombu.connection import Connection

from celery_kafka_bridge.acks import SessionTags
from celery_kafka_bridge.amqp.frames import fast_frame_handler
from celery_kafka_bridge.amqp.queues import close_quietly
from celery_kafka_bridge.amqp.reads import BufferedTransport
from celery_kafka_bridge.amqp.retire import QueueRetirer
from celery_kafka_bridge.amqp.topology import (
    Topology,
    consumers_for,
    leftovers,
)
from celery_kafka_bridge.codec import Envelope
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.logs import mask_credentials
from celery_kafka_bridge.source import Delivery, SourceThread
from celery_kafka_bridge.tls import amqp_ssl

log = logging.getLogger(__name__)

_LINGER_SECONDS = 0.001
"""While the event loop is busy, how long a partial batch waits for the next message before it
is handed off anyway. While the loop is idle, a batch is handed off at once."""
_POLL_SECONDS = 0.01
"""Idle wait between checks for acks to apply; bounds the ack latency."""
_MAX_BATCH = 512


class AmqpSource(SourceThread):
    """Consumes the bridge queue on its own thread, reconnecting with backoff; unacked messages
    are redelivered by RabbitMQ."""

    kind = "amqp"

    def __init__(self, config: Config, topology: Topology) -> None:
        self._config = config
        self._topology = topology
        self._acked_through = 0  # every delivery up to this tag is acked (the ack tracker's)
        self._tags = SessionTags()
        super().__init__(config.amqp_url)

    def _connect(self) -> Any:
        ssl = amqp_ssl(self._config)
        conn = Connection(
            self._config.amqp_url,
            transport=None if ssl else BufferedTransport,
            heartbeat=30,
            connect_timeout=10,
            ssl=ssl,
            transport_options={"frame_handler": fast_frame_handler},
        )
        conn.connect()
        return conn

    def _session_errors(self, conn: Any) -> tuple[type[BaseException], ...]:
        return (*conn.connection_errors, *conn.channel_errors)

    def _disconnect(self, conn: Any) -> None:
        close_quietly(conn)

    def _session(self, conn: Any) -> None:
        channel = conn.channel()
        channel.auto_decode = False  # keep bodies as the exact bytes the worker sent
        version = str(conn.connection.server_properties.get("version", ""))
        try:
            queues = self._topology.declare(channel, version)
        except PreconditionFailed as exc:
            raise ConfigError(
                f"the queue or exchange exists with other arguments ({exc.reply_text}); "
                "delete it or match its settings"
            ) from exc
        channel.basic_qos(0, self._config.prefetch, False)
        self._generation += 1
        self._acks.clear()
        self._acked_through = 0
        self._tags = SessionTags()
        self._listener.on_attached(self._generation)
        consumers = consumers_for(self._config, conn, channel, self._on_message)
        retirer = QueueRetirer(
            conn,
            channel,
            self._config.event_exchange,
            self._on_message,
            leftovers(self._config),
            reassert=lambda: self._topology.declare(channel, version),
            settle_seconds=self._config.shutdown_grace_seconds + 5,
        )
        consuming = started = False
        next_heartbeat_check = 0.0
        amqp_connection = conn.connection  # py-amqp's own: kombu adds three calls per drain
        while True:
            wanted = not (self._stop_consuming.is_set() or self._held.is_set())
            settled = self._acked_through >= self._tags.last
            if wanted and not started:
                consumers.start(queues)
                retirer.start()
                url = mask_credentials(self._config.amqp_url)
                log.info("amqp consuming %s at %s", ", ".join(queues), url)
                consuming = started = True
            elif consuming and not wanted and settled:
                # Only with nothing unacked: what RabbitMQ sent meanwhile goes back to the head
                # of the queue, ahead of anything the next consumer gets.
                consumers.stop()
                retirer.stop()
                consuming = False
                log.info("amqp stopped consuming")
            elif wanted and not consuming and settled:
                return  # held, then released: a fresh session consumes again
            self._apply_acks()
            if self._closed.is_set():
                return
            if consuming and self._acked_through >= self._tags.last:
                consumers.check()  # a hand-on waits for such a moment; under load they are brief
            now = time.monotonic()
            if now >= next_heartbeat_check:  # once a second, not once per message
                conn.heartbeat_check()
                if consuming:
                    retirer.check(self._tags.last, self._acked_through)
                next_heartbeat_check = now + 1.0
            self._drain_once(amqp_connection)

    def _drain_once(self, amqp_connection: Any) -> None:
        if self._batch and self._loop_idle:
            self._hand_off()  # the loop is idle: waiting for more would only add latency
        try:
            amqp_connection.drain_events(timeout=_LINGER_SECONDS if self._batch else _POLL_SECONDS)
        except TimeoutError:
            self._hand_off()
            return
        if len(self._batch) >= _MAX_BATCH:
            self._hand_off()

    def _on_message(self, message: Any) -> None:
        info = message.delivery_info
        props = message.properties
        envelope = Envelope(
            message.body,
            props.get("content_type"),
            props.get("content_encoding"),
            info.get("routing_key", ""),
            time.time_ns() // 1_000_000,
        )
        tag = self._tags.add(message.channel, info["delivery_tag"])
        self._received += 1
        self._batch.append(Delivery(self._generation, tag, envelope, info["redelivered"]))

    def _apply_acks(self) -> None:
        for ops, acked_through in self._take_acks():
            self._tags.ack(ops)
            self._acked_through = acked_through
