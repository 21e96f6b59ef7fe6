"""The compose stack's demo worker and producer, run here with the commands compose gives them."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.support import ROOT, Names, Rabbit, amqp_url, events_of, poll

DEMO_TASKS = {"demo.tasks.add", "demo.tasks.sometimes_fail", "demo.tasks.flaky"}
EVENT_TYPES = {"task-sent", "task-received", "task-succeeded", "task-failed", "task-retried"}


def compose_command(service: str) -> list[str]:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return [str(arg) for arg in compose["services"][service]["command"]]


@pytest.fixture
def demo(names: Names, tmp_path: Path) -> Iterator[Any]:
    """Start a compose service's command where the demo image has it (demo/ on the path)."""
    started: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        # Like the image's PATH: `celery` and `python` are the virtualenv's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DEMO_BROKER_URL": amqp_url(),
        "DEMO_TASK_QUEUE": names.task_queue,
        "DEMO_TASKS_PER_SECOND": "50",
    }

    def start(service: str) -> subprocess.Popen[bytes]:
        log_path = tmp_path / f"{service}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                compose_command(service),
                env=env,
                cwd=ROOT / "deploy",
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_demo_worker_and_producer_make_succeeded_failed_and_retried_events(
    demo: Any, rabbit: Rabbit, names: Names, tmp_path: Path
) -> None:
    witness = rabbit.witness("celeryev", f"witness-{names.suffix}")
    worker = demo("worker")
    poll(lambda: "ready." in (tmp_path / "worker.log").read_text(), 60, what="demo worker ready")
    producer = demo("producer")
    # Other projects' events may pass through celeryev too: keep only the demo tasks' ones.
    demo_ids: set[str] = set()
    seen: set[str] = set()

    def all_event_types_seen() -> bool:
        # Not rabbit.drain: with the producer running the witness is never idle.
        messages = iter(lambda: rabbit.channel.basic_get(witness, no_ack=True), None)
        for event in events_of(itertools.islice(messages, 500)):
            if event.get("name") in DEMO_TASKS:
                demo_ids.add(event["uuid"])
            if event.get("uuid") in demo_ids:
                seen.add(event["type"])
        return seen >= EVENT_TYPES

    poll(all_event_types_seen, 60, what=f"every task event type, saw {seen}")
    producer.send_signal(signal.SIGTERM)
    assert producer.wait(10) == 0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
