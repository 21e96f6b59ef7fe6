"""Drain a pre-filled queue four ways: Celery's receiver, bare kombu, the bridge x1 and x2.

Each drain gets its own exchange, queue and topic, filled with the same captured messages
before consumption starts; the clock runs from the start of consumption until every event
was handled (counted, or confirmed in Kafka and the queue empty).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer

from bench.kafka import read
from bench.loadgen import event_app
from bench.queues import Captured, Rabbit, event_count, replay
from celery_kafka_bridge.amqp.topology import topology_for
from celery_kafka_bridge.config import Config
from harness.support import BridgeProcess

RULES = Path(__file__).parent / "rules.yaml"
"""The typical rules file drain (e) measures: drop heartbeats, hash kwargs, truncate tracebacks."""
BENCH_HASH_KEY = "the benchmark's hash key, 32 bytes"
HEARTBEAT = "worker-heartbeat"


@dataclass(frozen=True)
class Drain:
    """One consumer's drain of the pre-filled queue."""

    name: str
    label: str
    events: int
    messages: int
    seconds: float
    peak_rss_mb: float | None = None
    kafka_records: int | None = None
    cpu_us_per_event: float | None = None
    """CPU time (user + system) the bridge processes spent per event while draining: unlike
    events/s, barely moved by other work on the machine."""

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Setup:
    """What every drain shares: where the brokers are, the stream, and a scratch directory."""

    amqp_url: str
    kafka: str
    prefix: str
    messages: list[Captured]
    events: int
    workdir: Path
    queue_type: str


class RssSampler:
    """Samples the resident memory of processes (with their children) until stopped."""

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]
        self._interval = interval
        self._stop = threading.Event()
        self.peak: dict[int, int] = {pid: 0 for pid in pids}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self._procs:
                try:
                    rss = proc.memory_info().rss + sum(
                        c.memory_info().rss for c in proc.children(recursive=True)
                    )
                except psutil.Error:
                    continue
                self.peak[proc.pid] = max(self.peak[proc.pid], rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        """The largest peak of any one process, in MB (10^6 bytes, as the 120 MB target)."""
        return max(self.peak.values(), default=0) / 1e6


def receiver(setup: Setup) -> Drain:
    """(a) Celery's ``app.events.Receiver``, shared node_id, a handler that only counts."""
    name = f"{setup.prefix}-a"
    app = event_app(setup.amqp_url, name)
    # Celery's receiver queue is exclusive to the connection that declared it, drops messages
    # after 5 s (event_queue_ttl) and itself after 60 s unused. All three are off, so the queue
    # can be filled beforehand and the messages are still there when the receiver starts.
    app.conf.update(event_queue_ttl=None, event_queue_expires=3600.0, event_queue_exclusive=False)
    counted = 0
    done_at = 0.0
    with app.connection_for_read() as conn:

        def count(event: dict[str, Any]) -> None:
            nonlocal counted, done_at
            counted += 1
            if counted >= setup.events:
                done_at = time.perf_counter()
                recv.should_stop = True

        recv = app.events.Receiver(conn, handlers={"*": count}, node_id=name)
        recv.queue(conn.default_channel).declare()
        _replay(setup, name, recv.queue.name)
        started = time.perf_counter()
        recv.capture(limit=None, timeout=None, wakeup=False)
    return Drain(
        "a", "Celery Receiver (count only, no_ack)", counted, len(setup.messages), done_at - started
    )


def bare_kombu(setup: Setup) -> Drain:
    """(b) A kombu consumer on a queue declared like the bridge's: decode, ack, nothing else."""
    config = bridge_config(setup, f"{setup.prefix}-b")
    queue = _declare_bridge_queue(config)
    _replay(setup, config.event_exchange, queue)
    counted = unacked = 0
    ack_every = max(1, config.prefetch // 4)  # one multiple-ack per quarter of the prefetch
    with Connection(setup.amqp_url) as conn:
        channel = conn.channel()

        def on_message(body: Any, message: Any) -> None:
            nonlocal counted, unacked
            counted += len(body) if isinstance(body, list) else 1
            unacked += 1
            if unacked >= ack_every or counted >= setup.events:
                message.ack(multiple=True)
                unacked = 0

        consumer = Consumer(
            channel,
            queues=[Queue(queue, no_declare=True)],
            callbacks=[on_message],
            accept=["json"],
            prefetch_count=config.prefetch,
        )
        started = time.perf_counter()
        with consumer:
            while counted < setup.events:
                conn.drain_events(timeout=10)
        seconds = time.perf_counter() - started
    label = f"bare kombu (decode + multiple-ack every {ack_every}, {setup.queue_type} queue)"
    return Drain("b", label, counted, len(setup.messages), seconds)


def bridge(setup: Setup, count: int, rules: Path | None = None, run: int = 1) -> Drain:
    """(c)/(d) The bridge as real processes, at-least-once into Kafka, until all is confirmed;
    (e) one replica shaping the events with ``rules`` (which drop heartbeats). ``run``: which
    drain of that letter (each after the first has its own queue and topic)."""
    letter = "e" if rules else "c" if count == 1 else "d"
    name = f"{setup.prefix}-{letter}" + (str(run) if run > 1 else "")
    # One replica: the default (ordered) topology; several: competing, the one that shares work.
    config = bridge_config(setup, name, "ordered" if count == 1 else "competing", rules)
    expected = setup.events - (event_count(setup.messages, HEARTBEAT) if rules else 0)
    queue = _declare_bridge_queue(config)
    _replay(setup, config.event_exchange, queue)
    with replicas(setup, config, count) as procs, RssSampler([p.pid for p in procs]) as rss:
        started = consuming_since(procs)
        cpu_before = cpu_seconds(procs)
        # Tansu's end offsets trail the records it serves, so the records are counted.
        records, finished = asyncio.run(read(setup.kafka, config.topic, expected, 600))
        cpu = cpu_seconds(procs) - cpu_before
        for proc in procs:
            proc.signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    rabbit = Rabbit(setup.amqp_url)
    try:
        left = rabbit.depth(queue)
    finally:
        rabbit.close()
    if left or records < expected:
        raise RuntimeError(f"{queue}: {left} messages not acked, {records} records in Kafka")
    label = f"bridge x{count}, {config.topology} (at-least-once into Kafka)"
    if rules:
        label = f"bridge x{count}, {config.topology}, rules {rules.parent.name}/{rules.name}"
    seconds = finished - started
    cpu_us = cpu / setup.events * 1e6
    return Drain(
        letter, label, setup.events, len(setup.messages), seconds, rss.peak_mb, records, cpu_us
    )


def bridge_config(
    setup: Setup, name: str, topology: str = "ordered", rules: Path | None = None
) -> Config:
    return Config.load(
        rules_file=rules,
        topology=topology,
        http_port=0,
        amqp_url=setup.amqp_url,
        kafka_bootstrap_servers=setup.kafka,
        kafka_enable_idempotence=False,  # Tansu cannot do InitProducerId
        event_exchange=name,
        node_id=name,
        topic=name,
        dlq_topic=f"{name}.dlq",
        queue_type=setup.queue_type,
    )


def bridge_env(config: Config) -> dict[str, str]:
    """``BRIDGE_*`` variables for a replica running with ``config``."""
    fields = (
        "amqp_url",
        "kafka_bootstrap_servers",
        "event_exchange",
        "node_id",
        "topic",
        "dlq_topic",
        "queue_type",
        "topology",
        "http_port",
    )
    env = {f"BRIDGE_{f.upper()}": str(getattr(config, f)) for f in fields}
    env["BRIDGE_KAFKA_ENABLE_IDEMPOTENCE"] = "false"
    env["BRIDGE_TOPIC_REPLICATION_FACTOR"] = "1"  # a single broker
    env["BRIDGE_TOPIC_MIN_INSYNC_REPLICAS"] = "1"
    if config.rules_file:
        env["BRIDGE_RULES_FILE"] = str(config.rules_file)
        env["BRIDGE_HASH_KEY"] = BENCH_HASH_KEY
    env["BRIDGE_LOG_LEVEL"] = "INFO"
    return env


def _declare_bridge_queue(config: Config) -> str:
    """The bridge queue declared exactly as the bridge declares it."""
    with Connection(config.amqp_url) as conn:
        version = str(conn.connection.server_properties.get("version", ""))
        (queue,) = topology_for(config).declare(conn.default_channel, version)
    return queue


def _replay(setup: Setup, exchange: str, queue: str) -> None:
    rabbit = Rabbit(setup.amqp_url)
    try:
        replay(rabbit.channel, setup.messages, exchange, queue)
    finally:
        rabbit.close()


@contextmanager
def replicas(setup: Setup, config: Config, count: int) -> Iterator[list[BridgeProcess]]:
    """``count`` bridge processes with ``config``; killed on the way out if still running."""
    procs = [
        BridgeProcess(bridge_env(config), setup.workdir / f"{config.node_id}-{i}.log")
        for i in range(count)
    ]
    try:
        for proc in procs:
            proc.start()
        yield procs
    finally:
        for proc in procs:
            proc.kill()


def cpu_seconds(procs: list[BridgeProcess]) -> float:
    """User and system CPU time the processes used so far."""
    return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs)


def consuming_since(procs: list[BridgeProcess]) -> float:
    """When the first replica started consuming (its log says so); waits for all of them."""
    first = 0.0
    pending = list(procs)
    deadline = time.monotonic() + 60
    while pending:
        for proc in list(pending):
            if "amqp consuming" in proc.log():
                first = first or time.perf_counter()
                pending.remove(proc)
            elif not proc.alive():
                raise RuntimeError(f"bridge exited: {proc.log()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError("the bridge did not start consuming")
        time.sleep(0.005)
    return first
