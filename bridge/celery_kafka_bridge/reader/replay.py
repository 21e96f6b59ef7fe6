"""Replay events from the topic: into a JSON-lines file, or back onto a Celery event exchange."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Protocol

import msgpack
from kombu.connection import Connection
from kombu.messaging import Producer

from celery_kafka_bridge.amqp.queues import event_exchange
from celery_kafka_bridge.codec import JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE
from celery_kafka_bridge.reader.events import Event


class Target(Protocol):
    """Where replayed events go; open it with ``with``."""

    def __enter__(self) -> Target: ...

    def __exit__(self, *exc: object) -> None: ...

    def write(self, event: Event) -> None: ...


class RateLimiter:
    """A token bucket: at most ``rate`` acquisitions per second, bursts up to ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate, self.burst = rate, burst
        self._clock, self._sleep = clock, sleep
        self._tokens = float(burst)
        self._last = clock()

    def acquire(self) -> None:
        """Take one token, sleeping until one is there."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            self._sleep((1 - self._tokens) / self.rate)
            self._tokens, self._last = 1.0, self._clock()
        self._tokens -= 1


class JsonLines:
    """One event per line, the record value as stored (``-`` writes to stdout)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def __enter__(self) -> JsonLines:
        self._file = sys.stdout.buffer if self.path == "-" else Path(self.path).open("wb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.flush()
            if self._file is not sys.stdout.buffer:
                self._file.close()

    def write(self, event: Event) -> None:
        assert self._file is not None, "use as a context manager"
        self._file.write(event.json_line() + b"\n")


class EventExchange:
    """Re-publishes events unchanged onto a Celery event exchange, as Celery's dispatcher does.

    Same exchange declaration (topic, durable), routing key (type with dots), ``hostname``
    header and transient delivery; the body is the stored JSON, byte for byte (kombu reads its
    NaN, surrogates, big integers and type markers), or, for an event only msgpack can carry
    (ext types, maps with keys that are not strings), the event as msgpack.
    """

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = event_exchange(exchange)
        self._connection: Connection | None = None
        self._producer: Producer | None = None

    def __enter__(self) -> EventExchange:
        self._connection = Connection(self.url)
        self._producer = Producer(self._connection.default_channel, exchange=self.exchange)
        self.exchange(self._producer.channel).declare()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._connection is not None:
            self._connection.release()

    def write(self, event: Event) -> None:
        assert self._producer is not None, "use as a context manager"
        body, content_type, encoding = event.value, JSON_CONTENT_TYPE, "utf-8"
        if event.serializer == "msgpack":
            body = msgpack.packb(event.data, use_bin_type=True)
            content_type, encoding = MSGPACK_CONTENT_TYPE, "binary"
        self._producer.publish(
            body,
            routing_key=event.type.replace("-", "."),
            content_type=content_type,
            content_encoding=encoding,
            headers={"hostname": event.hostname or ""},
            delivery_mode=1,
            retry=True,
        )


def open_target(spec: str, exchange: str) -> Target:
    """``jsonl:PATH`` (``jsonl:-`` for stdout) or an ``amqp://``/``amqps://`` broker URL."""
    if spec.startswith("jsonl:"):
        return JsonLines(spec.removeprefix("jsonl:"))
    if spec.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}:
        return EventExchange(spec, exchange)
    raise ValueError(f"--to must be jsonl:PATH or an amqp:// URL, not {spec.split(':', 1)[0]!r}")


def replay(events: Iterable[Event], target: Target, limiter: RateLimiter | None = None) -> int:
    """Write every event to ``target`` (paced by ``limiter``); how many were written."""
    count = 0
    for event in events:
        if limiter is not None:
            limiter.acquire()
        target.write(event)
        count += 1
    return count
