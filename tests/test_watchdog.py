"""Silent Celery: workers that work without sending task events are named, idle ones are not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from celery_kafka_bridge.codec import EventRecord
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.metrics import Metrics
from celery_kafka_bridge.watchdog import Watchdog
from celery_kafka_bridge.workers import WorkerActivity
from harness.support import Names, poll
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import client_app

PREFIX = "celery_kafka_bridge"
WINDOW = 60.0


@dataclass
class Watched:
    watchdog: Watchdog
    metrics: Metrics
    workers: WorkerActivity


def heartbeat(watched: Watched, host: str, at: float, processed: int) -> None:
    body = orjson.dumps({"type": "worker-heartbeat", "hostname": host, "processed": processed})
    watched.workers.observe(EventRecord(host.encode(), body, [], "worker-heartbeat", host, at), at)


def task_event(watched: Watched, host: str, at: float) -> None:
    watched.workers.observe(EventRecord(b"t", b"{}", [], "task-succeeded", host, at), at)


@pytest.fixture
def watched() -> Watched:
    metrics, workers = Metrics(), WorkerActivity()
    config = Config.load(silent_task_events_seconds=WINDOW)
    return Watched(Watchdog(config, metrics, workers), metrics, workers)


def test_a_worker_that_works_without_task_events_is_flagged_once(
    watched: Watched, caplog: pytest.LogCaptureFixture
) -> None:
    watchdog, metrics = watched.watchdog, watched.metrics
    heartbeat(watched, "quiet@h", 0.0, processed=0)
    watchdog.check(1.0)
    heartbeat(watched, "quiet@h", WINDOW + 1, processed=10)
    watchdog.check(WINDOW + 2)
    watchdog.check(WINDOW + 3)
    assert watchdog.silent == {"quiet@h"}
    assert metrics.registry.get_sample_value(f"{PREFIX}_silent_workers") == 1
    warnings = [r.getMessage() for r in caplog.records if "without -E" in r.getMessage()]
    assert len(warnings) == 1 and "quiet@h" in warnings[0]


def test_an_idle_worker_and_one_sending_task_events_are_not_flagged(
    watched: Watched,
) -> None:
    watchdog = watched.watchdog
    heartbeat(watched, "idle@h", 0.0, processed=5)
    heartbeat(watched, "busy@h", 0.0, processed=0)
    watchdog.check(1.0)
    task_event(watched, "busy@h", 10.0)
    heartbeat(watched, "busy@h", 11.0, processed=50)  # counts the tasks whose events came
    watchdog.check(12.0)
    for at in (WINDOW + 1, 3 * WINDOW):
        heartbeat(watched, "idle@h", at, processed=5)
        heartbeat(watched, "busy@h", at, processed=50)
        watchdog.check(at + 1)
        assert watchdog.silent == set()


def test_a_flagged_worker_is_cleared_when_its_task_events_resume(
    watched: Watched,
) -> None:
    watchdog = watched.watchdog
    heartbeat(watched, "w@h", 0.0, processed=0)
    watchdog.check(1.0)
    heartbeat(watched, "w@h", WINDOW + 1, processed=3)
    watchdog.check(WINDOW + 2)
    assert watchdog.silent == {"w@h"}
    task_event(watched, "w@h", WINDOW + 3)
    watchdog.check(WINDOW + 4)
    assert watchdog.silent == set()


def run_tasks(names: Names, count: int) -> None:
    app = client_app(names)
    results = [app.send_task("tests.celery_app.add", (i, i)) for i in range(count)]
    app.close()
    assert len(results) == count


@pytest.mark.slow
def test_the_warning_names_the_worker_started_without_e_and_not_the_one_with_it(
    names: Names, start_bridge: BridgeFactory, worker: Callable[..., Any]
) -> None:
    bridge = start_bridge(BRIDGE_SILENT_TASK_EVENTS_SECONDS="3")
    worker(events=True, hostname=f"loud-{names.suffix}@test")
    worker(events=False, hostname=f"quiet-{names.suffix}@test")
    run_tasks(names, 20)
    poll(lambda: "without -E" in bridge.log(), 30, what="the silent-Celery warning")
    warnings = [line for line in bridge.log().splitlines() if "without -E" in line]
    assert len(warnings) == 1
    assert f"quiet-{names.suffix}@test" in warnings[0]
    assert f"loud-{names.suffix}@test" not in warnings[0]
    assert bridge.metric(f"{PREFIX}_silent_workers") == 1
    succeeded = bridge.metric(f"{PREFIX}_events_published_total", event_type="task-succeeded")
    assert succeeded > 0, "the worker with -E ran no task, so its silence proves nothing"


@pytest.mark.slow
def test_enable_events_on_start_turns_on_the_task_events_of_a_worker_without_e(
    names: Names, start_bridge: BridgeFactory, worker: Callable[..., Any]
) -> None:
    control = f"control-{names.suffix}"
    worker(events=False, hostname=f"quiet-{names.suffix}@test", control_exchange=control)
    bridge = start_bridge(BRIDGE_ENABLE_EVENTS_ON_START="true", BRIDGE_CONTROL_EXCHANGE=control)
    poll(lambda: "asked every worker" in bridge.log(), 20, what="the broadcast")
    run_tasks(names, 3)
    poll(
        lambda: bridge.metric(f"{PREFIX}_events_published_total", event_type="task-succeeded") >= 3,
        30,
        what="task events from the worker started without -E",
    )
