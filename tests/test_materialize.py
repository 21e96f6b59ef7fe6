"""materialize: the state tables equal Celery's own State, through a worker killed mid-task and
a materializer killed mid-run; derived events name the lost work."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery import states

from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.materialize import (
    celery_state,
    derived_events,
    materialize_env,
    start_materialize,
    table,
)
from harness.support import BridgeProcess, Names, Rabbit, poll, start_worker, stop_worker
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import client_app, run_task_mix


FINAL = states.READY_STATES


def kill_worker(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and its pool processes (a host gone, nothing sent on the way out)."""
    family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in family:
        member.kill()
    psutil.wait_procs(family, timeout=10)
    process.wait(10)


def tables_of(kafka: EmbeddedKafka, env: dict[str, str]) -> dict[str, Any]:
    return table(kafka.bootstrap_servers, env["BRIDGE_TASKS_TOPIC"])


def assert_settles(read: Callable[[], dict[str, Any]], expected: dict[str, Any]) -> None:
    """``read()`` comes to equal ``expected`` (the materializer catches up); else the keys
    that differ."""
    got: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal got
        got = read()
        return got == expected

    try:
        poll(settled, 30, interval=0.5, what="the table to equal Celery's State")
    except AssertionError:
        keys = sorted(set(got) | set(expected))
        wrong = [
            f"{k}: {got.get(k)} != {expected.get(k)}" for k in keys if got.get(k) != expected.get(k)
        ]
        raise AssertionError("\n".join(wrong)) from None


@pytest.mark.slow
def test_tables_equal_celery_state_through_a_worker_kill_and_a_materializer_kill(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    start_bridge()
    steady_env = materialize_env(names, kafka.bootstrap_servers, "steady")
    moved_env = materialize_env(names, kafka.bootstrap_servers, "moved")
    processes: list[BridgeProcess] = []
    doomed_queue = f"{names.task_queue}-doomed"
    doomed_worker = start_worker(
        names.exchange, doomed_queue, tmp_path / "doomed.log", hostname=f"doomed-{names.suffix}@h"
    )
    try:
        processes.append(start_materialize(steady_env, tmp_path / "steady.log"))
        first = start_materialize(moved_env, tmp_path / "moved-1.log")
        standby = start_materialize(moved_env, tmp_path / "moved-2.log", wait=False)
        processes += [first, standby]
        healthy = worker(hostname=f"healthy-{names.suffix}@h")
        app = client_app(names)
        task_ids = run_task_mix(app)
        doomed = [app.send_task("tests.celery_app.nap", (60,), queue=doomed_queue).id for _ in "ab"]

        def doomed_started() -> bool:
            tasks = tables_of(kafka, moved_env)
            return all(tasks.get(t, {}).get("state") == "STARTED" for t in doomed)

        poll(doomed_started, 60, interval=0.5, what="the doomed tasks to start")
        first.kill()  # mid-run: the standby takes the lease and carries on from the tables
        kill_worker(doomed_worker)
        task_ids += run_task_mix(app)
        app.close()
        poll(
            lambda: (
                {
                    e.get("uuid")
                    for e in derived_events(
                        kafka.bootstrap_servers, moved_env["BRIDGE_DERIVED_TOPIC"]
                    )
                }
                >= set(doomed)
            ),
            60,
            interval=0.5,
            what="task-lost for the killed worker's tasks",
        )
        poll(
            lambda: all(
                tables_of(kafka, steady_env).get(t, {}).get("state") in FINAL for t in task_ids
            ),
            60,
            interval=0.5,
            what="every healthy task to finish",
        )
        stop_worker(healthy)  # a clean worker-offline: its tasks are all finished
        poll(lambda: rabbit.queue_state(names.queue) == (0, 1), 30, what="bridge queue drained")
        expected = celery_state(rabbit.drain(witness), kafka.bootstrap_servers, names.topic)
        assert set(task_ids + doomed) <= set(expected)
        for env in (steady_env, moved_env):
            assert_settles(lambda env=env: tables_of(kafka, env), expected)
        steady = derived_events(kafka.bootstrap_servers, steady_env["BRIDGE_DERIVED_TOPIC"])
        moved = derived_events(kafka.bootstrap_servers, moved_env["BRIDGE_DERIVED_TOPIC"])
        assert {e["id"] for e in moved} == {e["id"] for e in steady}  # none missing after the kill
        lost = {e["uuid"]: e for e in steady if e["type"] == "task-lost"}
        assert set(lost) == set(doomed)
        for event in lost.values():
            assert event["hostname"] == f"doomed-{names.suffix}@h"
            assert event["evidence"]["state"] == "STARTED"
            assert event["evidence"]["worker"] == "heartbeats stopped"
        assert [e["hostname"] for e in steady if e["type"] == "worker-lost"] == [
            f"doomed-{names.suffix}@h"
        ]
        assert not [e for e in steady if e["type"] == "events-missing"], steady
        workers = table(kafka.bootstrap_servers, steady_env["BRIDGE_WORKERS_TOPIC"])
        assert workers[f"healthy-{names.suffix}@h"]["status"] == "offline"
        assert workers[f"doomed-{names.suffix}@h"]["status"] == "lost"
        assert processes[0].metric("celery_kafka_bridge_events_missing_total") == 0
        assert (
            processes[0].metric("celery_kafka_bridge_derived_events_total", type="task-lost") == 2
        )
    finally:
        for process in processes:
            process.kill()
        if doomed_worker.poll() is None:
            kill_worker(doomed_worker)
