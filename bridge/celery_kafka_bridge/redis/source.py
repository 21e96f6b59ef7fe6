"""The Redis source: subscribes to Celery's event channel on its own thread; while it holds the
lease it claims each message (`claims`), hands the claimed ones to the event loop and confirms them
once Kafka has them; the others it keeps on standby and writes if nobody confirmed them.

Pub/sub keeps nothing: what is published while no replica is subscribed is gone, and so are the
messages a replica had received but not yet handed on when it died, unless another replica was
subscribed too (it writes what the dead one never confirmed).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.logs import mask_credentials
from celery_kafka_bridge.redis.channels import envelope, message_id, subscription
from celery_kafka_bridge.redis.claims import Claims, Lease, Standby, State
from celery_kafka_bridge.redis.gaps import HeartbeatGaps
from celery_kafka_bridge.source import Delivery, SourceThread

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.01
"""Idle wait for a message between checks for acks to apply; bounds the confirmation latency."""
_MAX_BATCH = 512
_STANDBY_CHECK_SECONDS = 0.2
_ERRORS = (redis.ConnectionError, redis.TimeoutError)

_Received = tuple[bytes, bytes, int]
"""A message as received: channel, data, when (ms since the epoch)."""


@dataclass
class RedisCounts:
    """What this replica did with the messages it received (exported as metrics)."""

    received: int = 0
    claimed: int = 0
    taken_over: int = 0


class RedisSource(SourceThread):
    """Every replica subscribes; the leaseholder claims and writes each message, the others
    write what it never confirmed."""

    kind = "redis"
    _connect_errors = _ERRORS

    def __init__(self, config: Config) -> None:
        self._config = config
        self.replica = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._namespace = (
            f"{config.transport_options.global_keyprefix}celery-kafka-bridge/{config.node_id}"
        )
        self._pending: dict[int, bytes] = {}  # tag -> message id, until Kafka confirms it
        self._next_tag = 0
        self._standby: Standby[_Received] = Standby(config.redis_claim_seconds)
        self.counts = RedisCounts()
        self.gaps = HeartbeatGaps(self._namespace)
        self._client: Any = None
        self.leading = False
        super().__init__(config.broker_url)

    def metrics(self) -> dict[str, tuple[str, float]]:
        """What this replica did, for `Metrics.export_counts` (read when scraped)."""
        counts, gaps = self.counts, self.gaps
        return {
            "redis_messages_received_total": (
                "Pub/sub messages this replica received.",
                counts.received,
            ),
            "redis_messages_claimed_total": (
                "Messages this replica claimed on receipt and so writes.",
                counts.claimed,
            ),
            "redis_messages_taken_over_total": (
                "Messages another replica claimed and never confirmed, written by this one.",
                counts.taken_over,
            ),
            "redis_leaseholder": (
                "1 while this replica holds the lease: it claims and writes messages as they "
                "arrive; the others write what it never confirmed.",
                int(self.leading),
            ),
            "redis_messages_standby": (
                "Messages another replica claimed, kept until it confirms them or its claim "
                "expires.",
                len(self._standby),
            ),
            "heartbeat_gaps_total": (
                "Times no replica heard a worker for more than two heartbeat periods.",
                gaps.gaps,
            ),
            "heartbeats_missed_total": ("Worker heartbeats no replica heard.", gaps.missed),
            "tasks_unheard_total": (
                "Tasks workers received during heartbeat gaps: their events may be lost.",
                gaps.unheard_tasks,
            ),
        }

    def _connect(self) -> Any:
        client = redis.Redis.from_url(
            self._url,
            socket_connect_timeout=10,
            socket_timeout=30,
            health_check_interval=0,
            client_name=f"celery-kafka-bridge:{self.replica}",  # CLIENT LIST tells replicas apart
        )
        client.ping()
        return client

    def _session_errors(self, conn: Any) -> tuple[type[BaseException], ...]:
        return _ERRORS

    def _disconnect(self, conn: Any) -> None:
        conn.close()

    def _session(self, client: Any) -> None:
        ttl = self._config.redis_claim_seconds
        claims = Claims(client, self._namespace, self.replica, ttl)
        lease = Lease(client, self._namespace, self.replica, ttl)
        self.leading = lease.hold()
        self._client = client
        db = int(client.connection_pool.connection_kwargs.get("db", 0))
        channel = subscription(self._config.event_exchange, db, self._config.transport_options)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        (pubsub.psubscribe if channel.pattern else pubsub.subscribe)(channel.name)
        pubsub.get_message(ignore_subscribe_messages=False, timeout=10)  # subscribed from here
        self._generation += 1
        self._pending.clear()
        self._listener.on_attached(self._generation)
        log.info(
            "redis subscribed to %s at %s as replica %s",
            channel.name,
            mask_credentials(self._config.broker_url),
            self.replica,
        )
        consuming = True
        next_standby_check = 0.0
        try:
            while True:
                if consuming and self._stop_consuming.is_set():
                    self._unsubscribe(pubsub, claims)
                    lease.release()
                    self.leading = consuming = False
                    log.info("redis unsubscribed; confirming the last writes")
                self._confirm(claims)
                if self._closed.is_set():
                    return
                if consuming:
                    self._receive(pubsub, claims)
                else:
                    self._sleep(_POLL_SECONDS)
                now = time.monotonic()
                if consuming and now >= next_standby_check:
                    self.leading = lease.hold()
                    self._take_over(claims, now)
                    next_standby_check = now + _STANDBY_CHECK_SECONDS
        finally:
            pubsub.reset()

    def _unsubscribe(self, pubsub: Any, claims: Claims) -> None:
        """Unsubscribe, and take every message Redis sent before it confirmed that."""
        pubsub.unsubscribe()
        pubsub.punsubscribe()
        deadline = time.monotonic() + 5.0
        while pubsub.subscribed and time.monotonic() < deadline:
            self._receive(pubsub, claims)

    def _receive(self, pubsub: Any, claims: Claims) -> None:
        """Take what has arrived (waiting briefly for the first), claim it, hand it off."""
        received: list[_Received] = []
        message = pubsub.get_message(timeout=_POLL_SECONDS)
        now_ms = time.time_ns() // 1_000_000
        while message is not None:
            if message["type"] in ("message", "pmessage"):
                received.append((message["channel"], message["data"], now_ms))
                if len(received) >= _MAX_BATCH:
                    break
            message = pubsub.get_message(timeout=0)
        if not received:
            return
        self.counts.received += len(received)
        self._received += len(received)
        ids = [message_id(data) for _, data, _ in received]
        now = time.monotonic()
        won_claims = claims.claim(ids) if self.leading else [False] * len(ids)
        for won, mid, item in zip(won_claims, ids, received, strict=True):
            if won:
                self._deliver(mid, item, redelivered=False)
            else:
                self._standby.keep(mid, item, now)
        self.counts.claimed += len(self._batch)
        self._hand_off()

    def _take_over(self, claims: Claims, now: float) -> None:
        """Write what the leaseholder never confirmed, a batch (one script call) at a time."""
        due = self._standby.due(now)
        for start in range(0, len(due), _MAX_BATCH):
            self._take_over_batch(claims, due[start : start + _MAX_BATCH], now)

    def _take_over_batch(
        self, claims: Claims, due: list[tuple[bytes, _Received]], now: float
    ) -> None:
        free = []
        for (mid, item), state in zip(due, claims.states([mid for mid, _ in due]), strict=True):
            if state is State.FREE:
                free.append((mid, item))
            elif state is State.HELD:  # its holder is slow, or a third replica took it over
                self._standby.keep(mid, item, now)
        if not free:
            return
        for won, (mid, item) in zip(claims.claim([mid for mid, _ in free]), free, strict=True):
            if won:
                self._deliver(mid, item, redelivered=True)
        self.counts.taken_over += len(self._batch)
        if self._batch:
            log.info("writing %d events a replica claimed and never confirmed", len(self._batch))
        self._hand_off()

    def _deliver(self, mid: bytes, item: _Received, redelivered: bool) -> None:
        channel, data, received_at_ms = item
        self._next_tag += 1
        self._pending[self._next_tag] = mid
        event = envelope(channel, data, received_at_ms)
        self._batch.append(Delivery(self._generation, self._next_tag, event, redelivered))
        self.gaps.observe(self._client, event)

    def _confirm(self, claims: Claims) -> None:
        """Mark done what Kafka confirmed (the pipeline's acks), in one round trip."""
        done: list[bytes] = []
        pending = self._pending
        for ops, _acked_through in self._take_acks():
            for tag, multiple in ops:
                if multiple:  # every delivery up to this tag
                    while pending and (first := next(iter(pending))) <= tag:
                        done.append(pending.pop(first))
                else:
                    done.append(pending.pop(tag))
        if done:
            claims.confirm(done)
