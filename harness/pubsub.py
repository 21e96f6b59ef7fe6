"""Helpers for tests of the Redis source: a Redis database of the test's own, and a witness
subscriber that sees every event the workers publish (what a correct bridge must deliver)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson
import redis

from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.redis.channels import envelope, subscription
from celery_kafka_bridge.redis.options import TransportOptions

BASE_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
TEST_DBS = range(10, 16)
"""The databases tests may use; each test takes a free one and flushes it afterwards."""
_TAKEN = "celery-kafka-bridge-test:taken"


@contextlib.contextmanager
def own_redis_db() -> Iterator[str]:
    """The URL of a Redis database nobody else uses, flushed afterwards."""
    for db in TEST_DBS:
        client = redis.Redis.from_url(f"{BASE_REDIS_URL}/{db}")
        if client.set(_TAKEN, "1", nx=True):
            break
        client.close()
    else:
        raise AssertionError(f"every test database {TEST_DBS} is taken")
    try:
        yield f"{BASE_REDIS_URL}/{db}"
    finally:
        client.flushdb()
        client.close()


@dataclass
class Seen:
    """An event the witness saw, and when (wall clock)."""

    at: float
    event: dict[str, object]

    @property
    def event_id(self) -> str:
        return event_id(self.event)


@dataclass
class Witness:
    """Subscribes as the bridge does and keeps every event it sees, on a thread."""

    url: str
    exchange: str
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._client = redis.Redis.from_url(self.url)
        db = int(urlsplit(self.url).path.strip("/") or 0)
        channel = subscription(self.exchange, db, TransportOptions())
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        (self._pubsub.psubscribe if channel.pattern else self._pubsub.subscribe)(channel.name)
        self._pubsub.get_message(ignore_subscribe_messages=False, timeout=5)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            try:
                payload = orjson.loads(envelope(message["channel"], message["data"], 0).body)
            except orjson.JSONDecodeError:
                continue  # not an event: the bridge dead-letters it
            for event in payload if isinstance(payload, list) else [payload]:
                self.seen.append(Seen(time.time(), event))

    def event_ids(self, since: float = 0.0, until: float = float("inf")) -> set[str]:
        """Ids of the events seen in ``[since, until)``."""
        return {s.event_id for s in list(self.seen) if since <= s.at < until}

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._pubsub.close()
        self._client.close()
