"""Fixtures: a Tansu broker per session, unique names per test, bridge replicas, workers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.support import (
    BridgeProcess,
    Names,
    Rabbit,
    bridge_env,
    own_vhost,
    start_worker,
    stop_worker,
)


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(log_path=tmp_path_factory.mktemp("tansu") / "tansu.log")
    with broker:
        yield broker


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A broker of the test's own, so freezing it disturbs no other test."""
    with EmbeddedKafka(log_path=tmp_path_factory.mktemp("own") / "tansu.log") as broker:
        yield broker


@pytest.fixture
def names() -> Iterator[Names]:
    """The test's names, and its own RabbitMQ vhost: deleted afterwards with all it holds."""
    names = Names()
    with own_vhost(names.vhost):
        yield names


@pytest.fixture
def rabbit(names: Names) -> Iterator[Rabbit]:
    client = Rabbit()
    yield client
    client.close()


@pytest.fixture
def witness(rabbit: Rabbit, names: Names) -> str:
    """A queue that sees every event published on the test's exchange."""
    return rabbit.witness(names.exchange, f"witness-{names.suffix}")


BridgeFactory = Callable[..., BridgeProcess]


@pytest.fixture
def start_bridge(
    names: Names, kafka: EmbeddedKafka, rabbit: Rabbit, tmp_path: Path
) -> Iterator[BridgeFactory]:
    """Start a bridge replica and wait until it consumes; every replica is killed at the end."""
    started: list[BridgeProcess] = []

    def start(wait: bool = True, **overrides: str) -> BridgeProcess:
        env = bridge_env(names, kafka.bootstrap_servers, **overrides)
        replica = BridgeProcess(env, tmp_path / f"bridge-{len(started)}.log").start()
        started.append(replica)
        if wait:
            replica.wait_until_consuming()
        return replica

    yield start
    for replica in started:
        replica.kill()


@pytest.fixture
def worker(
    names: Names, rabbit: Rabbit, tmp_path: Path
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a real Celery worker (prefork, 2 processes) for the test's exchange and queue."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        events: bool = True, hostname: str | None = None, control_exchange: str = "celery"
    ) -> subprocess.Popen[bytes]:
        """``events``: the -E flag (task events); ``control_exchange``: where it takes commands."""
        process = start_worker(
            names.exchange,
            names.task_queue,
            tmp_path / f"worker-{len(started)}.log",
            hostname=hostname or f"w-{names.suffix}@%h",
            events=events,
            control_exchange=control_exchange,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        stop_worker(process)
