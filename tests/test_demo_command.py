"""`celery-kafka-bridge demo` (what `make demo` runs) shows real records and stops cleanly."""

from __future__ import annotations

import os

import pytest

from harness.support import Names, Rabbit, amqp_url, run_cli


@pytest.mark.slow
def test_the_demo_shows_keyed_records_of_a_real_worker_and_stops_every_process_cleanly(
    names: Names,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_AMQP_URL"] = amqp_url()  # the test's own vhost, deleted afterwards
    result = run_cli("demo", "--seconds", "12", env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "started an embedded Tansu broker" in out
    for kind in ("task-sent", "task-received", "task-started", "task-succeeded"):
        assert f" {kind} " in out, f"no {kind} record shown"
    assert "key=" in out
    assert "celery.tasks: " in out and " state=SUCCESS name=demo." in out, "no task row shown"
    assert "celery.workers: 1 keys" in out and "status=online" in out
    for process in ("producer", "worker", "bridge-1", "bridge-2", "materialize"):
        assert f"{process} stopped (exit code 0)" in out
    rabbit = Rabbit()
    try:
        assert not rabbit.queue_exists("celeryev.kafka-bridge-demo"), "the demo left its queue"
    finally:
        rabbit.close()


def test_the_demo_says_in_one_line_when_rabbitmq_is_unreachable() -> None:
    env = {**os.environ, "BRIDGE_AMQP_URL": "amqp://guest:secret@127.0.0.1:1//"}
    result = run_cli("demo", "--seconds", "1", env=env, timeout=60)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "RabbitMQ is not reachable" in line and "rabbitmq-server -detached" in line
    assert "secret" not in line
