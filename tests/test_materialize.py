"""materialize: the state tables equal Celery's own State, through a worker killed mid-task and
a materializer killed mid-run; derived events name the lost work."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from celery import states

from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.materialize import (
    celery_state,
    derived_events,
    materialize_env,
    start_materialize,
    table,
)
from harness.support import (
    BridgeProcess,
    Names,
    Rabbit,
    events_of,
    management,
    poll,
    read_topic,
    start_worker,
    stop_worker,
)
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import client_app, run_task_mix

FINAL = states.READY_STATES


@pytest.fixture
def materializers() -> Iterator[list[BridgeProcess]]:
    """Materializer processes a test started, killed at its end."""
    started: list[BridgeProcess] = []
    yield started
    for process in started:
        process.kill()


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
    materializers: list[BridgeProcess],
    tmp_path: Path,
) -> None:
    start_bridge()
    stuck = {"BRIDGE_STUCK_AFTER": "tests.celery_app.nap=1"}
    steady_env = materialize_env(names, kafka.bootstrap_servers, "steady", **stuck)
    moved_env = materialize_env(names, kafka.bootstrap_servers, "moved", **stuck)
    processes = materializers
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
        assert {e["uuid"] for e in steady if e["type"] == "task-stuck"} == set(doomed)
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
        if doomed_worker.poll() is None:
            kill_worker(doomed_worker)


@contextlib.contextmanager
def unbound(vhost: str, exchange: str, queue: str) -> Iterator[None]:
    """The queue's bindings to the exchange removed for the block, then put back."""
    where = (
        f"bindings/{quote(vhost, safe='')}/e/{quote(exchange, safe='')}/q/{quote(queue, safe='')}"
    )
    bindings = management("GET", where)
    assert bindings, f"{queue} is not bound to {exchange}"
    for binding in bindings:
        management("DELETE", f"{where}/{quote(binding['properties_key'], safe='')}")
    try:
        yield
    finally:
        for binding in bindings:
            management(
                "POST",
                where,
                {"routing_key": binding["routing_key"], "arguments": binding["arguments"]},
            )


def started_ids(events: list[dict[str, Any]], hostname: str) -> set[str]:
    return {
        event_id(e) for e in events if e["type"] == "task-started" and e["hostname"] == hostname
    }


@pytest.mark.slow
def test_a_worker_whose_events_are_refused_for_a_while_is_reported_with_the_exact_count(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    witness: str,
    start_bridge: BridgeFactory,
    worker: Callable[..., subprocess.Popen[bytes]],
    materializers: list[BridgeProcess],
    tmp_path: Path,
) -> None:
    start_bridge()
    env = materialize_env(
        names, kafka.bootstrap_servers, "count", BRIDGE_COMPLETENESS_GRACE_SECONDS="2"
    )
    materializer = start_materialize(env, tmp_path / "materialize.log")
    materializers.append(materializer)
    hostname = f"dropped-{names.suffix}@h"
    worker_log = tmp_path / "worker-0.log"
    celery_worker = worker(hostname=hostname)
    app = client_app(names)
    finished = 0

    def run(count: int) -> None:
        nonlocal finished
        for i in range(count):
            app.send_task("tests.celery_app.add", (i, i))
        finished += count
        poll(
            lambda: worker_log.read_text().count("succeeded in") >= finished,
            30,
            what=f"{finished} tasks to finish",
        )

    run(5)
    with unbound(names.vhost, names.exchange, names.queue):  # events lost before the bridge
        run(12)
    run(5)
    stop_worker(celery_worker)  # worker-offline carries the final count
    app.close()
    poll(lambda: rabbit.queue_state(names.queue) == (0, 1), 30, what="bridge queue drained")
    sent = started_ids(events_of(rabbit.drain(witness)), hostname)
    stored = {
        r.headers["event_id"].decode()
        for r in read_topic(kafka.bootstrap_servers, names.topic, idle=1.0)
    }
    lost = len(sent - stored)
    assert lost > 0, "the policy refused no task-started event"

    def reported() -> int:
        events = derived_events(kafka.bootstrap_servers, env["BRIDGE_DERIVED_TOPIC"])
        return sum(e["missing"] for e in events if e["type"] == "events-missing")

    poll(lambda: reported() >= lost, 30, interval=0.5, what=f"{lost} missing events reported")
    assert reported() == lost
    assert (
        materializer.metric("celery_kafka_bridge_events_missing_total", hostname=hostname) == lost
    )
