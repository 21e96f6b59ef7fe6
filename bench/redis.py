"""The Redis source's throughput against a bare Redis subscriber, and what its claims cost.

Pub/sub keeps nothing, so there is no queue to pre-fill: each consumer subscribes, then the
captured stream is published as fast as one pipelined client can, and the clock runs from the
first publish until the consumer handled every event (counted, or confirmed in Kafka). The
stream is capped so that a consumer falling behind stays within Redis's pub/sub output buffer
limit (32 MB by default); past it Redis disconnects the subscriber.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import redis

from bench.drains import Drain, RssSampler, Setup, bridge_config, bridge_env
from bench.kafka import read
from bench.ordering import TASKS_PER_SECOND, Ordering, all_succeeded
from bench.queues import Captured, event_count
from celery_kafka_bridge.redis.channels import message_id, subscription
from celery_kafka_bridge.redis.claims import Claims
from celery_kafka_bridge.redis.options import TransportOptions
from harness.ordering import count_inversions
from harness.pubsub import own_redis_db
from harness.support import (
    BridgeProcess,
    in_topic_order,
    poll,
    read_topic,
    send_tasks,
    start_worker,
    stop_worker,
)

MAX_BYTES = 20_000_000
"""Published bytes per run: below the 32 MB a subscriber may fall behind by."""
_PIPELINE = 500


@dataclass(frozen=True)
class Stream:
    """The captured messages as kombu's Redis transport publishes them, and on which channel."""

    wrappers: list[tuple[str, bytes]]
    events: int


def kombu_stream(messages: list[Captured], exchange: str, db: int) -> Stream:
    """``messages`` wrapped as kombu wraps them for Redis, up to `MAX_BYTES`."""
    base = subscription(exchange, db, TransportOptions()).name.removesuffix("*")
    wrappers: list[tuple[str, bytes]] = []
    kept: list[Captured] = []
    size = 0
    for m in messages:
        wrapper = orjson.dumps(
            {
                "body": base64.b64encode(m.body).decode(),
                "content-encoding": m.properties.get("content_encoding", "utf-8"),
                "content-type": m.properties.get("content_type", "application/json"),
                "headers": {},
                "properties": {
                    "delivery_info": {"exchange": exchange, "routing_key": m.routing_key},
                    "body_encoding": "base64",
                    "delivery_tag": str(len(wrappers)),
                },
            }
        )
        size += len(wrapper)
        if size > MAX_BYTES:
            break
        wrappers.append((base + m.routing_key, wrapper))
        kept.append(m)
    return Stream(wrappers, event_count(kept))


def publish(client: redis.Redis, stream: Stream) -> float:
    """Publish the stream, pipelined; returns when it started (``perf_counter``)."""
    started = time.perf_counter()
    for i in range(0, len(stream.wrappers), _PIPELINE):
        pipe = client.pipeline(transaction=False)
        for channel, data in stream.wrappers[i : i + _PIPELINE]:
            pipe.publish(channel, data)
        pipe.execute()
    return started


def bare_subscriber(setup: Setup, url: str, db: int) -> Drain:
    """(r) redis-py subscribed as the bridge is, counting messages: the ceiling here."""
    exchange = f"{setup.prefix}-r"
    stream = kombu_stream(setup.messages, exchange, db)
    client = redis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(subscription(exchange, db, TransportOptions()).name)
    pubsub.get_message(ignore_subscribe_messages=False, timeout=5)
    with _publishing(url, stream) as started:
        received = 0
        while received < len(stream.wrappers):
            if pubsub.get_message(timeout=1.0) is not None:
                received += 1
        finished = time.perf_counter()
    pubsub.close()
    client.close()
    label = "bare redis-py subscriber (counts messages)"
    return Drain("r", label, stream.events, received, finished - started)


@contextmanager
def replicas(setup: Setup, url: str, name: str, count: int) -> Iterator[list[BridgeProcess]]:
    """``count`` replicas of the Redis source, subscribed; stopped (or killed) on the way out."""
    env = {**bridge_env(bridge_config(setup, name)), "BRIDGE_BROKER_URL": url}
    del env["BRIDGE_AMQP_URL"]
    procs = [BridgeProcess(env, setup.workdir / f"{name}-{i}.log") for i in range(count)]
    try:
        for proc in procs:
            proc.start()
        poll(
            lambda: all("redis subscribed" in p.log() for p in procs),
            60,
            what="the replicas to subscribe",
        )
        yield procs
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    finally:
        for proc in procs:
            proc.kill()


def bridge(setup: Setup, url: str, db: int, count: int) -> Drain:
    """(s)/(t) the bridge's Redis source as real processes, until Kafka has every event."""
    name = f"{setup.prefix}-{'s' if count == 1 else 't'}"
    stream = kombu_stream(setup.messages, name, db)
    with (
        replicas(setup, url, name, count) as procs,
        RssSampler([p.pid for p in procs]) as rss,
        _publishing(url, stream) as started,
    ):
        records, finished = asyncio.run(read(setup.kafka, name, stream.events, 600))
    if records < stream.events:
        raise RuntimeError(f"{name}: {records} of {stream.events} records in Kafka")
    label = f"bridge x{count}, Redis source (claims, at-least-once into Kafka)"
    return Drain(
        name[-1],
        label,
        stream.events,
        len(stream.wrappers),
        finished - started,
        rss.peak_mb,
        records,
    )


def claim_cost_us(url: str, messages: int = 50_000, batch: int = 512) -> float:
    """Microseconds per message of one replica's claim and confirmation (one round trip per
    batch each), against this Redis."""
    client = redis.Redis.from_url(url)
    claims = Claims(client, "bench", "replica", ttl_seconds=5.0)
    ids = [message_id(str(i).encode()) for i in range(messages)]
    started = time.perf_counter()
    for i in range(0, messages, batch):
        chunk = ids[i : i + batch]
        claims.claim(chunk)
        claims.confirm(chunk)
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed / messages * 1e6


@contextmanager
def _publishing(url: str, stream: Stream) -> Iterator[float]:
    client = redis.Redis.from_url(url)
    try:
        yield publish(client, stream)
    finally:
        client.close()


def ordering(setup: Setup, url: str, tasks: int, count: int) -> Ordering:
    """``count`` replicas and a real worker (-E) on Redis: task records out of order."""
    name = f"{setup.prefix}-o-redis{count}"
    task_queue = f"{name}.tasks"
    with replicas(setup, url, name, count):
        log = setup.workdir / f"{name}-worker.log"
        worker = start_worker(name, task_queue, log, hostname=f"{name}@bench", broker_url=url)
        try:
            started = time.monotonic()
            sent = set(send_tasks(name, task_queue, tasks, TASKS_PER_SECOND, url))
            records = read_topic(
                setup.kafka, name, until=all_succeeded(sent), timeout=tasks / 10 + 120
            )
            seconds = time.monotonic() - started
        finally:
            stop_worker(worker)
    report = count_inversions(in_topic_order(records))
    return Ordering(
        f"redis, {count} replica{'s' if count > 1 else ''}",
        tasks,
        report.records,
        report.inversions,
        round(seconds, 1),
    )


@dataclass(frozen=True)
class RedisRun:
    drains: list[Drain]
    claim_us: float
    """One replica's claim and confirmation, per message."""
    orderings: list[Ordering]


def run_redis(setup: Setup, tasks: int) -> RedisRun:
    """The bare subscriber, the bridge x1 and x2, the claims' cost, and the ordering run."""
    with own_redis_db() as url:
        db = int(url.rsplit("/", 1)[1])
        drains = [bare_subscriber(setup, url, db), bridge(setup, url, db, 1)]
        drains.append(bridge(setup, url, db, 2))
        orders = [ordering(setup, url, tasks, count) for count in (1, 2)] if tasks else []
        return RedisRun(drains, claim_cost_us(url), orders)
