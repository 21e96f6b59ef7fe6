"""`celery-kafka-bridge demo`: two replicas, a real worker and a task stream, records shown live.

Runs against the RabbitMQ of ``BRIDGE_AMQP_URL`` and the Kafka of
``BRIDGE_KAFKA_BOOTSTRAP_SERVERS``; without the latter it starts an embedded Tansu broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import click
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from kombu.connection import Connection

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka, free_port
from celery_kafka_bridge.logs import describe, mask_credentials
from celery_kafka_bridge.reader.stream import TopicNotFound
from celery_kafka_bridge.reader.tables import read_table

DEMO_APP_DIR = Path(__file__).resolve().parents[2] / "deploy"
"""Where the demo Celery app (``demo.tasks``, ``demo.producer``) lives in a source checkout."""
DEMO_NODE_ID = "kafka-bridge-demo"
_TABLE_ROWS = 4


def run_demo(config: Config, seconds: float) -> None:
    """Run the whole demo for ``seconds``, then stop every process cleanly."""
    _require_rabbitmq(config.amqp_url)
    if not (DEMO_APP_DIR / "demo" / "tasks.py").exists():
        raise click.ClickException(f"the demo app is missing: run from a checkout ({DEMO_APP_DIR})")
    with contextlib.ExitStack() as stack:
        # Its own queue, deleted at the end, so the demo leaves nothing bound to celeryev.
        env = {**os.environ, "BRIDGE_AMQP_URL": config.amqp_url, "BRIDGE_NODE_ID": DEMO_NODE_ID}
        stack.callback(_delete_queue, config.amqp_url, f"{config.queue_prefix}.{DEMO_NODE_ID}")
        if "BRIDGE_KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
            kafka = stack.enter_context(EmbeddedKafka())
            click.echo(
                f"no Kafka configured: started an embedded Tansu broker at "
                f"{kafka.bootstrap_servers}"
            )
            # Tansu cannot do InitProducerId, so the demo switches idempotence off for it; it is
            # a single broker, so one replica of each record.
            env.update(
                BRIDGE_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
                BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="false",
                BRIDGE_TOPIC_REPLICATION_FACTOR="1",
                BRIDGE_TOPIC_MIN_INSYNC_REPLICAS="1",
            )
        bootstrap = env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"]
        demo_env = {
            **env,
            "PYTHONPATH": str(DEMO_APP_DIR),
            "DEMO_BROKER_URL": config.amqp_url,
            "DEMO_TASKS_PER_SECOND": "10",
        }
        for replica in (1, 2):
            stack.enter_context(
                _process(
                    f"bridge-{replica}",
                    [sys.executable, "-m", "celery_kafka_bridge", "run"],
                    {**env, "BRIDGE_HTTP_PORT": str(free_port()), "BRIDGE_LOG_LEVEL": "WARNING"},
                )
            )
        stack.enter_context(
            _process(
                "worker",
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "demo.tasks",
                    "worker",
                    "-E",
                    "-c",
                    "2",
                    "-l",
                    "WARNING",
                    "-n",
                    "demo-worker@%h",
                ],
                demo_env,
            )
        )
        stack.enter_context(
            _process(
                "materialize",
                [sys.executable, "-m", "celery_kafka_bridge", "materialize"],
                {**env, "BRIDGE_HTTP_PORT": str(free_port()), "BRIDGE_LOG_LEVEL": "WARNING"},
            )
        )
        stack.enter_context(_process("producer", [sys.executable, "-m", "demo.producer"], demo_env))
        click.echo(
            f"two bridge replicas, a worker (-E), a task producer and materialize are running; "
            f"showing records of topic {config.topic} for {seconds:.0f} s\n"
        )
        counts = asyncio.run(_show_records(bootstrap, config.topic, seconds))
        asyncio.run(_show_tables(bootstrap, config))
    click.echo(
        "\nstopped everything cleanly. Records by event type: "
        + ", ".join(f"{kind} {n}" for kind, n in counts.most_common())
    )


def _delete_queue(url: str, queue: str) -> None:
    with Connection(url) as conn:
        conn.default_channel.queue_delete(queue)


def _require_rabbitmq(url: str) -> None:
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.connect()
    except Exception as exc:
        raise click.ClickException(
            f"RabbitMQ is not reachable at {mask_credentials(url)} ({describe(exc)}); "
            "start one with `rabbitmq-server -detached` or `docker compose up -d rabbitmq`"
        ) from exc


@contextlib.contextmanager
def _process(name: str, args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child process logging to a file, stopped with SIGTERM (exit code reported) at the end."""
    log_path = Path(tempfile.gettempdir()) / f"celery-kafka-bridge-demo-{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    click.echo(f"started {name} (log: {log_path})")
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        click.echo(f"{name} stopped (exit code {code})")


async def _show_tables(bootstrap: str, config: Config) -> None:
    """A few rows of the tables materialize keeps, and its derived events."""
    servers = [bootstrap]
    for topic, fields in (
        (config.tasks_topic, ("state", "name", "worker", "runtime", "result", "exception")),
        (config.workers_topic, ("status", "active", "processed", "last_heartbeat")),
        (config.derived_topic, ("type", "hostname", "evidence")),
    ):
        try:
            rows = await read_table(servers, topic)
        except TopicNotFound:
            rows = {}
        click.echo(f"\n{topic}: {len(rows)} keys" + (", a few:" if rows else ""))
        for key, (value, _) in list(rows.items())[-_TABLE_ROWS:]:
            row = orjson.loads(value) if value else {}
            click.echo(f"  {key:<40} " + " ".join(f"{f}={row.get(f)}" for f in fields))


async def _show_records(bootstrap: str, topic: str, seconds: float) -> Counter[str]:
    """Print each record as it lands (partition, key, event type) until time is up."""
    deadline = time.monotonic() + seconds
    consumer = await _consumer_for(bootstrap, topic, deadline)
    counts: Counter[str] = Counter()
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    headers = dict(record.headers)
                    kind = headers.get("event_type", b"?").decode()
                    counts[kind] += 1
                    key = (record.key or b"-").decode(errors="replace")
                    host = headers.get("hostname", b"").decode()
                    click.echo(f"p{tp.partition:<2} key={key:<40} {kind:<16} {host}")
    finally:
        await consumer.stop()
    return counts


async def _consumer_for(bootstrap: str, topic: str, deadline: float) -> AIOKafkaConsumer:
    """A consumer assigned every partition of ``topic`` from the start, once the topic exists.

    A started consumer does not learn of topics created later, so it starts only then.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while topic not in await admin.list_topics():
            if time.monotonic() > deadline:
                raise click.ClickException(f"topic {topic} did not appear on {bootstrap}")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    assignment = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(assignment)
    await consumer.seek_to_beginning(*assignment)
    return consumer
