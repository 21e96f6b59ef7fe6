"""Helpers for tests that talk to the real RabbitMQ, Tansu and Celery workers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import amqp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
BASE_AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
MANAGEMENT_URL = os.environ.get("TEST_RABBITMQ_MANAGEMENT_URL", "http://127.0.0.1:15672")
_current = {"amqp_url": BASE_AMQP_URL}


def amqp_url() -> str:
    """The URL of the vhost the running test works in (`own_vhost`), else the base URL.

    Tests run one at a time, so the harness's helpers default to it instead of each test
    threading the URL through every call."""
    return _current["amqp_url"]


def management(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One call of RabbitMQ's management HTTP API as the base URL's user; its JSON answer."""
    url = urlsplit(BASE_AMQP_URL)
    credentials = f"{unquote(url.username or 'guest')}:{unquote(url.password or 'guest')}"
    request = urllib.request.Request(
        f"{MANAGEMENT_URL}/api/{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={
            "authorization": "Basic " + base64.b64encode(credentials.encode()).decode(),
            "content-type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = response.read()
    return json.loads(answer) if answer else None


@contextlib.contextmanager
def new_vhost(name: str) -> Iterator[str]:
    """A vhost for the block (the base user may do anything in it), deleted afterwards with
    everything in it; yields its URL."""
    user = unquote(urlsplit(BASE_AMQP_URL).username or "guest")
    management("PUT", f"vhosts/{quote(name, safe='')}")
    try:
        management(
            "PUT",
            f"permissions/{quote(name, safe='')}/{quote(user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )
        yield vhost_url(name)
    finally:
        delete_vhost(name)


def delete_vhost(name: str) -> None:
    """Delete a vhost and everything in it (its connections are closed); gone already is fine."""
    try:
        management("DELETE", f"vhosts/{quote(name, safe='')}")
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise


@contextlib.contextmanager
def own_vhost(name: str) -> Iterator[str]:
    """A `new_vhost` that is also what `amqp_url` returns for the block."""
    with new_vhost(name) as url:
        previous, _current["amqp_url"] = _current["amqp_url"], url
        try:
            yield url
        finally:
            _current["amqp_url"] = previous


def vhost_url(vhost: str, base: str = BASE_AMQP_URL) -> str:
    """``base`` with its vhost replaced."""
    return urlunsplit(urlsplit(base)._replace(path="/" + quote(vhost, safe="")))


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `python -m celery_kafka_bridge ARGS`; the result, whatever its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "celery_kafka_bridge", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, object]]:
    """A bridge log, one JSON object a line (fails on any line that is not one)."""
    return [json.loads(line) for line in text.splitlines()]


def poll(
    condition: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Wait until ``condition()`` is truthy and return it; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


@dataclass(frozen=True)
class Names:
    """Unique AMQP and Kafka names for one test, so tests never see each other's events."""

    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def vhost(self) -> str:
        return f"test-{self.suffix}"

    @property
    def exchange(self) -> str:
        return f"celeryev-{self.suffix}"

    @property
    def node_id(self) -> str:
        return f"bridge-{self.suffix}"

    @property
    def queue(self) -> str:
        return f"celeryev.{self.node_id}"

    @property
    def topic(self) -> str:
        return f"events-{self.suffix}"

    @property
    def dlq_topic(self) -> str:
        return f"events-{self.suffix}.dlq"

    @property
    def task_queue(self) -> str:
        return f"tasks-{self.suffix}"


def bridge_env(names: Names, bootstrap: str, **overrides: str) -> dict[str, str]:
    """Environment for a bridge replica in a test."""
    env = {
        "BRIDGE_AMQP_URL": amqp_url(),
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu cannot do InitProducerId
        "BRIDGE_EVENT_EXCHANGE": names.exchange,
        "BRIDGE_NODE_ID": names.node_id,
        "BRIDGE_TOPIC": names.topic,
        "BRIDGE_DLQ_TOPIC": names.dlq_topic,
        "BRIDGE_TOPIC_PARTITIONS": "4",
        "BRIDGE_TOPIC_REPLICATION_FACTOR": "1",  # a single broker
        "BRIDGE_TOPIC_MIN_INSYNC_REPLICAS": "1",
        "BRIDGE_LOG_LEVEL": "INFO",
        "BRIDGE_HTTP_PORT": str(free_port()),  # replicas side by side never collide
    }
    env.update(overrides)
    return env


_CONSUMING = ("amqp consuming", "redis subscribed")
"""Log lines saying a replica consumes: its AMQP queue, or its Redis channel."""


class BridgeProcess:
    """A bridge replica as a real process (`python -m celery_kafka_bridge run`, or another
    command such as materialize): killable."""

    def __init__(self, env: dict[str, str], log_path: Path, command: str = "run") -> None:
        self.env = env
        self.log_path = log_path
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery_kafka_bridge", self.command],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.signal(signal.SIGKILL)
            self.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http(self, path: str) -> tuple[int, str]:
        """GET a path of the replica's HTTP server: (status, body); (0, "") if it is not up."""
        url = f"http://127.0.0.1:{self.env['BRIDGE_HTTP_PORT']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of a metric (with these labels) in /metrics; 0 if none."""
        status, text = self.http("/metrics")
        assert status == 200, status
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def wait_until_consuming(self, timeout: float = 30.0) -> BridgeProcess:
        """Block until the replica consumes its queue; fail if it died first."""
        poll(
            lambda: any(line in self.log() for line in _CONSUMING) or not self.alive(),
            timeout,
            what="the bridge to consume",
        )
        assert self.alive(), self.log()
        return self


def amqp_connection(url_text: str | None = None, **options: Any) -> amqp.Connection:
    """A connected py-amqp connection to ``url_text`` (the test's vhost by default)."""
    url = urlsplit(url_text or amqp_url())
    conn = amqp.Connection(
        f"{url.hostname or '127.0.0.1'}:{url.port or 5672}",
        userid=unquote(url.username or "guest"),
        password=unquote(url.password or "guest"),
        virtual_host=unquote(url.path[1:]) if url.path not in ("", "/") else "/",
        **options,
    )
    conn.connect()
    return conn


class Rabbit:
    """A plain py-amqp connection for declaring, inspecting and publishing in tests."""

    def __init__(self, url_text: str | None = None) -> None:
        self.conn = amqp_connection(url_text)
        self.channel = self.conn.channel()

    def queue_state(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue; unacked messages are not counted as ready."""
        _, messages, consumers = self.channel.queue_declare(queue, passive=True)
        return messages, consumers

    def queue_exists(self, queue: str) -> bool:
        """Whether the queue exists (a failed passive declare costs a channel, so use a new one)."""
        channel = self.conn.channel()
        try:
            channel.queue_declare(queue, passive=True)
        except amqp.exceptions.NotFound:
            return False
        channel.close()
        return True

    def publish(
        self, exchange: str, routing_key: str, body: bytes, content_type: str | None, **props: Any
    ) -> None:
        message = amqp.Message(body, content_type=content_type, **props)
        self.channel.basic_publish(message, exchange, routing_key)

    def witness(self, exchange: str, name: str) -> str:
        """An independent queue bound to the event exchange: what the workers really sent."""
        self.channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        self.channel.queue_declare(name, durable=True, auto_delete=False)
        self.channel.queue_bind(name, exchange, "#")
        return name

    def drain(self, queue: str, idle: float = 1.0) -> list[amqp.Message]:
        """Every message of a queue (acked), until it stays empty for ``idle`` seconds."""
        messages: list[amqp.Message] = []
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle:
            message = self.channel.basic_get(queue, no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            messages.append(message)
            quiet_since = time.monotonic()
        return messages

    def delete(self, queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
        """For bench and chaos runs, which work in the shared vhost; tests drop their vhost."""
        for queue in queues:
            self.channel.queue_delete(queue)
        for exchange in exchanges:
            self.channel.exchange_delete(exchange)

    def close(self) -> None:
        self.conn.close()


def events_of(messages: Iterable[amqp.Message]) -> list[dict[str, Any]]:
    """The events carried by JSON event messages (lists split)."""
    events: list[dict[str, Any]] = []
    for message in messages:
        payload = orjson.loads(message.body)
        events.extend(payload if isinstance(payload, list) else [payload])
    return events


@dataclass(frozen=True)
class KafkaRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp_ms: int = 0

    def json(self) -> Any:
        return orjson.loads(self.value)


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[KafkaRecord]], bool] | None = None,
    timeout: float = 60.0,
    idle: float = 2.0,
) -> list[KafkaRecord]:
    """Records of a topic from the beginning, with partitions assigned explicitly.

    Reads until ``until(records)`` holds, then ``idle`` seconds more to catch late duplicates;
    without a condition, until no record arrived for ``idle`` seconds. Tansu's end offsets can
    trail what it serves, so they are not used.
    """
    records: list[KafkaRecord] = []

    def collect(batch: list[KafkaRecord]) -> bool:
        records.extend(batch)
        return bool(batch) and until is not None and until(records)

    scan_topic(
        bootstrap, topic, on_poll=collect, satisfiable=until is not None, timeout=timeout, idle=idle
    )
    return records


def scan_topic(
    bootstrap: str,
    topic: str,
    *,
    on_poll: Callable[[list[KafkaRecord]], bool],
    satisfiable: bool = True,
    timeout: float = 60.0,
    idle: float = 2.0,
) -> None:
    """Feed a topic's records to ``on_poll`` from the beginning, without keeping them.

    ``on_poll`` gets each poll's records (possibly none); once it returned True, reading goes on
    for ``idle`` seconds more. If it never can (not ``satisfiable``), reading stops after
    ``idle`` seconds without a record. For topics too large to hold in a list.
    """
    asyncio.run(
        _scan_topic(
            bootstrap, topic, on_poll=on_poll, satisfiable=satisfiable, timeout=timeout, idle=idle
        )
    )


async def _scan_topic(
    bootstrap: str,
    topic: str,
    *,
    on_poll: Callable[[list[KafkaRecord]], bool],
    satisfiable: bool,
    timeout: float,
    idle: float,
) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout
        while not partitions and time.monotonic() < deadline:
            await consumer.topics()  # refreshes metadata
            partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} does not exist"
        assignment = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        last_record = satisfied_at = time.monotonic()
        satisfied = False
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            records = [
                KafkaRecord(
                    tp.topic, tp.partition, m.offset, m.key, m.value, dict(m.headers), m.timestamp
                )
                for tp, messages in batches.items()
                for m in messages
            ]
            if on_poll(records) and not satisfied:
                satisfied, satisfied_at = True, time.monotonic()
            if records:
                last_record = time.monotonic()
            elif not satisfiable and time.monotonic() - last_record > idle:
                break
            if satisfied and time.monotonic() - satisfied_at > idle:
                break
    finally:
        await consumer.stop()


def publish_events(
    exchange: str,
    count: int,
    rate: float | None = None,
    hostname: str = "",
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send ``count`` task events through Celery's own dispatcher, half of them in lists.

    Event ``i`` has the task uuid ``<hostname>-<i>``; ``on_sent(i)`` is called once it was handed
    to the dispatcher. Returns how many were sent; ``rate`` (events/s) paces them.
    """
    app = Celery(broker=amqp_url(), set_as_current=False)
    app.conf.event_exchange = exchange
    hostname = hostname or f"loadgen-{uuid.uuid4().hex[:6]}@test"
    started = time.monotonic()
    with app.connection_for_write() as conn:
        confirms = _Confirms(conn.default_channel)
        single = app.events.Dispatcher(conn, hostname=hostname)
        grouped = app.events.Dispatcher(
            conn, hostname=hostname, buffer_group=["task"], buffer_limit=4
        )
        for i in range(count):
            dispatcher = grouped if i % 2 else single
            dispatcher.send(
                "task-received",
                uuid=f"{hostname}-{i}",
                name="tests.add",
                args="(1, 2)",
                kwargs="{}",
                retries=0,
                eta=None,
                expires=None,
            )
            if on_sent is not None:
                on_sent(i)
            if rate and i % 100 == 99:
                ahead = (i + 1) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        grouped.flush()
        # RabbitMQ 3.10 quorum queues can drop the last messages of a publisher that closes
        # its channel straight after publishing: wait until the broker confirmed every one.
        confirms.wait(conn, timeout=60)
        single.close()
        grouped.close()
    app.close()
    return count


class _Confirms:
    """Publisher confirms on a py-amqp channel: counts what is published and what is acked."""

    def __init__(self, channel: Any) -> None:
        self.published = 0
        self._acked_through = 0  # every tag up to this one is confirmed
        self._acked: set[int] = set()
        channel.confirm_select()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        publish = channel.basic_publish

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.published += 1
            return publish(*args, **kwargs)

        channel.basic_publish = counted  # what Celery's dispatcher calls, through kombu

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self._acked_through = max(self._acked_through, tag)
        else:
            self._acked.add(tag)
        while self._acked_through + 1 in self._acked:
            self._acked_through += 1
            self._acked.discard(self._acked_through)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        raise AssertionError(f"RabbitMQ refused published message {tag}")

    def wait(self, conn: Any, timeout: float) -> None:
        """Drain the connection until every published message is confirmed."""
        deadline = time.monotonic() + timeout
        while self._acked_through < self.published:
            assert time.monotonic() < deadline, "publisher confirms did not arrive"
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)


def event_ids(records: Iterable[KafkaRecord]) -> set[str]:
    return {r.headers["event_id"].decode() for r in records}


def sent_event_ids(messages: Iterable[amqp.Message]) -> set[str]:
    """Ids of the events the witness saw (what a correct bridge must deliver)."""
    return {event_id(e) for e in events_of(messages)}


def send_tasks(
    exchange: str, task_queue: str, count: int, per_second: float, broker_url: str | None = None
) -> list[str]:
    """Short tasks from a real client, paced: plain, retrying and custom-event ones."""
    app = Celery(broker=broker_url or amqp_url(), set_as_current=False)
    app.conf.update(event_exchange=exchange, task_default_queue=task_queue)
    ids = []
    started = time.monotonic()
    for i in range(count):
        ahead = i / per_second - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)  # pacing the load, not synchronisation
        if i % 10 == 0:
            result = app.send_task("tests.celery_app.flaky")
        elif i % 10 == 1:
            result = app.send_task("tests.celery_app.report", (i,))
        else:
            result = app.send_task("tests.celery_app.add", (i, i))
        ids.append(result.id)
    app.close()
    return ids


def in_topic_order(records: list[KafkaRecord]) -> list[dict[str, Any]]:
    """The events of a topic's records, partition by partition, in offset order."""
    ordered = sorted(records, key=lambda r: (r.partition, r.offset))
    return [r.json() for r in ordered]


def start_worker(
    exchange: str,
    task_queue: str,
    log_path: Path,
    *,
    hostname: str,
    events: bool = True,
    control_exchange: str = "celery",
    broker_url: str | None = None,
) -> subprocess.Popen[bytes]:
    """A real Celery worker (prefork, 2 processes) of `tests.celery_app`, once it is ready.

    ``events``: the -E flag (task events); ``control_exchange``: where it takes commands;
    ``broker_url``: the test's RabbitMQ vhost unless given.
    """
    env = {
        **os.environ,
        "TEST_BROKER_URL": broker_url or amqp_url(),
        "TEST_EVENT_EXCHANGE": exchange,
        "TEST_TASK_QUEUE": task_queue,
        "TEST_CONTROL_EXCHANGE": control_exchange,
    }
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.celery_app",
        "worker",
        "-P",
        "prefork",
        "-c",
        "2",
        "-Q",
        task_queue,
        "-n",
        hostname,
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
        *(["-E"] if events else []),
    ]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    poll(lambda: "ready." in log_path.read_text(errors="replace"), 60, what="worker ready")
    return process


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a warm shutdown), then SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def assert_witnessed_in_kafka(
    bootstrap: str, topic: str, rabbit: Rabbit, witness: str, timeout: float = 90.0
) -> None:
    """Every event the witness queue saw is in the topic (read until it is, or ``timeout``)."""
    expected = sent_event_ids(rabbit.drain(witness))
    records = read_topic(
        bootstrap, topic, until=lambda rs: expected <= event_ids(rs), timeout=timeout
    )
    missing = expected - event_ids(records)
    assert not missing, f"lost {len(missing)} of {len(expected)} events"
