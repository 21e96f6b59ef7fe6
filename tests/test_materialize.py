"""materialize: the state tables equal Celery's own State, through a worker killed mid-task and
a materializer killed mid-run (alone, and one of two slices); derived events name the lost
work."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import amqp
import orjson
import psutil
import pytest
from celery import Celery, states
from click.testing import CliRunner

from celery_kafka_bridge.cli import main
from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.reader.tables import lookup_task
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
    amqp_connection,
    amqp_url,
    events_of,
    json_lines,
    management,
    poll,
    read_topic,
    start_worker,
    stop_worker,
)
from harness.topic_writer import encode, task_events, write_records
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


def without_clock(tasks: dict[str, Any]) -> dict[str, Any]:
    """The tasks without ``clock``: after a task-sent event Celery's receiver sets it from its
    own clock, which depends on everything that receiver read before (docs/materialize.md)."""
    return {uuid: {k: v for k, v in task.items() if k != "clock"} for uuid, task in tasks.items()}


def slice_of(materializer: BridgeProcess) -> str | None:
    slice_: str | None = orjson.loads(materializer.http("/readyz")[1])["slice"]
    return slice_


def assert_standing_by(standby: BridgeProcess, holders: list[BridgeProcess]) -> None:
    """``standby`` waits for a lease (unready) while ``holders`` hold the slices in order."""
    poll(lambda: standby.http("/readyz")[0] == 503, 30, what="the standby to answer unready")
    assert orjson.loads(standby.http("/readyz")[1])["lease"] == "waiting"
    count = len(holders)
    assert [slice_of(p) for p in holders] == [f"{i}-of-{count}" for i in range(count)]


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


def assert_readers_use_the_tables(
    kafka: EmbeddedKafka, env: dict[str, str], expected: dict[str, Any], task_id: str
) -> None:
    """The library's lookup, `timeline` and `state` answer from the tasks table and say so."""
    servers, tasks_topic = [kafka.bootstrap_servers], env["BRIDGE_TASKS_TOPIC"]
    found = lookup_task(servers, task_id, tasks_topic)
    assert found == tables_of(kafka, env)[task_id]  # the table's row, as it is
    assert without_clock({task_id: found}) == without_clock({task_id: expected[task_id]})
    assert lookup_task(servers, "no-such-task", tasks_topic) is None
    topics = ["--kafka-bootstrap-servers", kafka.bootstrap_servers, "--topic", env["BRIDGE_TOPIC"]]
    tables = ["--tasks-topic", tasks_topic, "--workers-topic", env["BRIDGE_WORKERS_TOPIC"]]
    result = CliRunner().invoke(
        main, ["timeline", task_id, "--json", *topics, tables[0], tables[1]]
    )
    assert result.exit_code == 0, result.output
    timeline = orjson.loads(result.stdout)
    assert (timeline["source"], timeline["state"]) == (tasks_topic, expected[task_id]["state"])
    result = CliRunner().invoke(main, ["state", "--json", *topics, *tables])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.stdout)
    assert summary["source"] == tasks_topic
    assert summary["by_state"] == dict(
        sorted(Counter(t["state"] for t in expected.values()).items())
    )


def wait_until_final(kafka: EmbeddedKafka, env: dict[str, str], task_ids: list[str]) -> None:
    def unfinished() -> dict[str, str]:
        tasks = tables_of(kafka, env)
        states = {t: tasks.get(t, {}).get("state", "-") for t in task_ids}
        return {t: state for t, state in states.items() if state not in FINAL}

    try:
        poll(lambda: not unfinished(), 60, interval=0.5, what="the tasks to finish")
    except AssertionError:
        raise AssertionError(f"unfinished: {unfinished()}") from None


def assert_derived(steady: list[dict[str, Any]], doomed: list[str], hostname: str) -> None:
    """The killed worker's tasks lost and stuck, the worker lost; nothing missing."""
    lost = {e["uuid"]: e for e in steady if e["type"] == "task-lost"}
    assert set(lost) == set(doomed)
    for event in lost.values():
        assert event["hostname"] == hostname
        assert event["evidence"]["state"] == "STARTED"
        assert event["evidence"]["worker"] == "heartbeats stopped"
    assert {e["uuid"] for e in steady if e["type"] == "task-stuck"} == set(doomed)
    assert [e["hostname"] for e in steady if e["type"] == "worker-lost"] == [hostname]
    assert not [e for e in steady if e["type"] == "events-missing"], steady


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
    moved_env = materialize_env(
        names, kafka.bootstrap_servers, "moved", BRIDGE_MATERIALIZE_SLICES="2", **stuck
    )
    doomed_host = f"doomed-{names.suffix}@h"
    doomed_queue = f"{names.task_queue}-doomed"
    doomed_worker = start_worker(
        names.exchange, doomed_queue, tmp_path / "d.log", hostname=doomed_host
    )
    try:
        steady = start_materialize(steady_env, tmp_path / "steady.log")
        first = start_materialize(moved_env, tmp_path / "moved-1.log")
        second = start_materialize(moved_env, tmp_path / "moved-2.log")
        standby = start_materialize(moved_env, tmp_path / "moved-3.log", wait=False)
        materializers += [steady, first, second, standby]
        healthy = worker(hostname=f"healthy-{names.suffix}@h")
        app = client_app(names)
        task_ids = run_task_mix(app)
        doomed = [app.send_task("tests.celery_app.nap", (60,), queue=doomed_queue).id for _ in "ab"]

        def doomed_started() -> bool:
            tasks = tables_of(kafka, moved_env)
            return all(tasks.get(t, {}).get("state") == "STARTED" for t in doomed)

        poll(doomed_started, 60, interval=0.5, what="the doomed tasks to start")
        assert_standing_by(standby, [first, second])
        first.kill()  # mid-run: the standby takes slice 0 (tasks and workers) from the tables
        kill_worker(doomed_worker)
        task_ids += run_task_mix(app)
        app.close()
        wait_until_final(kafka, steady_env, task_ids)
        stop_worker(healthy)  # a clean worker-offline: its tasks are all finished
        poll(lambda: rabbit.queue_state(names.queue) == (0, 1), 30, what="bridge queue drained")
        expected = celery_state(rabbit.drain(witness), kafka.bootstrap_servers, names.topic)
        assert set(task_ids + doomed) <= set(expected)
        for env in (steady_env, moved_env):
            read = functools.partial(tables_of, kafka, env)
            assert_settles(lambda: without_clock(read()), without_clock(expected))  # noqa: B023
        assert_readers_use_the_tables(kafka, steady_env, expected, task_ids[0])
        found = derived_events(kafka.bootstrap_servers, steady_env["BRIDGE_DERIVED_TOPIC"])
        assert_derived(found, doomed, doomed_host)
        after_kill = derived_events(kafka.bootstrap_servers, moved_env["BRIDGE_DERIVED_TOPIC"])
        assert {e["id"] for e in after_kill} == {e["id"] for e in found}  # none missing
        for env in (steady_env, moved_env):
            workers = table(kafka.bootstrap_servers, env["BRIDGE_WORKERS_TOPIC"])
            statuses = {host: workers[host]["status"] for host in workers}
            assert statuses == {f"healthy-{names.suffix}@h": "offline", doomed_host: "lost"}
        assert steady.metric("celery_kafka_bridge_events_missing_total") == 0
        assert steady.metric("celery_kafka_bridge_derived_events_total", type="task-lost") == 2
        assert standby.http("/readyz")[0] == 200
        assert slice_of(standby) == "0-of-2"
        assert all(line["level"] for line in json_lines(standby.log()))
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
        return sum(missing_reported(kafka.bootstrap_servers, env["BRIDGE_DERIVED_TOPIC"]).values())

    poll(lambda: reported() >= lost, 30, interval=0.5, what=f"{lost} missing events reported")
    assert reported() == lost
    assert (
        materializer.metric("celery_kafka_bridge_events_missing_total", hostname=hostname) == lost
    )


def reset(conn: amqp.Connection) -> None:
    """Close the connection's socket with a TCP reset (SO_LINGER 0), as a killed process or a
    dropped network path does: whatever RabbitMQ had not read from it yet is gone."""
    sock = conn.transport.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclasses.dataclass
class BareWorker:
    """One worker process's events in Celery's format (its hostname, pid and Lamport clock),
    published by py-amqp as fast as it can, as the issue measured the loss."""

    exchange: str
    hostname: str
    pid: int = 4242
    clock: int = 0
    processed: int = 0

    def message(self, kind: str, **fields: Any) -> amqp.Message:
        self.clock += 1
        body = {"type": kind, "hostname": self.hostname, "pid": self.pid, "clock": self.clock}
        body |= {"timestamp": time.time(), "utcoffset": 0, **fields}
        return amqp.Message(orjson.dumps(body), content_type="application/json")

    def heartbeat(self, channel: Any, kind: str = "worker-heartbeat") -> None:
        """A heartbeat counting every task accepted so far (``channel`` confirms it)."""
        message = self.message(
            kind, freq=2.0, active=0, processed=self.processed, sw_ident="py-celery"
        )
        channel.basic_publish(message, self.exchange, kind.replace("-", "."))

    def burst(self, count: int) -> None:
        """``count`` accepted tasks' task-started events on a fresh connection, reset at once."""
        conn = amqp_connection()
        channel = conn.channel()
        for _ in range(count):
            message = self.message("task-started", uuid=str(uuid.uuid4()))
            channel.basic_publish(message, self.exchange, "task.started")
        reset(conn)
        self.processed += count


def missing_reported(bootstrap: str, derived_topic: str) -> dict[str, int]:
    """Per worker, the events ``events-missing`` reported so far."""
    found: Counter[str] = Counter()
    for e in derived_events(bootstrap, derived_topic):
        if e["type"] == "events-missing":
            found[e["hostname"]] += e["missing"]
    return dict(found)


def stored_started(kafka: EmbeddedKafka, topic: str, hostname: str) -> int:
    """The task-started events of ``hostname`` in the events topic."""
    return sum(
        r.headers.get("event_type") == b"task-started"
        and r.headers.get("hostname") == hostname.encode()
        for r in read_topic(kafka.bootstrap_servers, topic, idle=1.0)
    )


def confirmed_burst(names: Names, hostname: str, count: int) -> None:
    """Celery's own remedy: its dispatcher with ``confirm_publish``, a burst of ``count``
    task-started events, the connection reset at once; then a heartbeat counting them."""
    app = Celery(broker=amqp_url(), set_as_current=False)
    app.conf.update(
        event_exchange=names.exchange, broker_transport_options={"confirm_publish": True}
    )
    heartbeat = {"freq": 2.0, "active": 0, "sw_ident": "py-celery"}
    with app.connection_for_write() as conn:
        app.events.Dispatcher(conn, hostname=hostname).send(
            "worker-online", processed=0, **heartbeat
        )
    conn = app.connection_for_write()
    dispatcher = app.events.Dispatcher(conn, hostname=hostname)
    for _ in range(count):
        dispatcher.send("task-started", uuid=str(uuid.uuid4()))
    reset(conn.connection)
    with app.connection_for_write() as conn:
        app.events.Dispatcher(conn, hostname=hostname).send(
            "worker-heartbeat", processed=count, **heartbeat
        )
    app.close()


@pytest.mark.slow
def test_a_tail_lost_to_a_connection_reset_right_after_a_burst_is_counted_per_worker(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    start_bridge: BridgeFactory,
    materializers: list[BridgeProcess],
    tmp_path: Path,
) -> None:
    """The issue's publish-then-close case, made certain: bursts published at full speed
    without confirms, each connection reset right after (a graceful close loses a quorum
    queue's tail only now and then; `make bench` counts those). Each worker's next heartbeat
    (confirmed, on a connection of its own) counts its tasks; the completeness check reports
    each worker with exactly the count its events topic lacks. Celery's remedy,
    ``confirm_publish``, loses nothing through the same reset."""
    start_bridge()
    env = materialize_env(
        names, kafka.bootstrap_servers, "reset", BRIDGE_COMPLETENESS_GRACE_SECONDS="2"
    )
    materializer = start_materialize(env, tmp_path / "materialize.log")
    materializers.append(materializer)
    steady = amqp_connection(confirm_publish=True)
    channel = steady.channel()
    workers = [BareWorker(names.exchange, f"burst-{i}-{names.suffix}@h") for i in range(2)]
    for worker in workers:
        worker.heartbeat(channel, "worker-online")
    lost: dict[str, int] = {}
    for _ in range(10):  # a reset loses the tail of most bursts, not of all
        for worker in workers:
            worker.burst(2000)
        poll(lambda: rabbit.queue_state(names.queue) == (0, 1), 30, what="bridge queue drained")
        lost = {
            w.hostname: w.processed - stored_started(kafka, names.topic, w.hostname)
            for w in workers
        }
        if all(lost.values()):
            break
    assert all(lost.values()), f"a worker lost no event in 10 bursts: {lost}"
    for worker in workers:
        worker.heartbeat(channel)
    steady.close()
    confirmed = f"confirmed-{names.suffix}@h"
    confirmed_burst(names, confirmed, 300)

    reported = functools.partial(
        missing_reported, kafka.bootstrap_servers, env["BRIDGE_DERIVED_TOPIC"]
    )

    def confirmed_checked() -> bool:
        row = table(kafka.bootstrap_servers, env["BRIDGE_WORKERS_TOPIC"]).get(confirmed, {})
        return bool(row) and row["completeness"]["processed"] == 300

    poll(lambda: reported() == lost, 30, interval=0.5, what=f"{lost} reported missing")
    poll(confirmed_checked, 30, interval=0.5, what="the confirmed worker's heartbeat checked")
    assert stored_started(kafka, names.topic, confirmed) == 300
    assert reported() == lost  # the confirmed worker: nothing missing
    for hostname, count in lost.items():
        assert (
            materializer.metric("celery_kafka_bridge_events_missing_total", hostname=hostname)
            == count
        )


@pytest.mark.slow
def test_a_new_slice_count_rebuilds_the_same_tables_and_reports_nothing_twice(
    names: Names,
    kafka: EmbeddedKafka,
    materializers: list[BridgeProcess],
    tmp_path: Path,
) -> None:
    """From one replica to two slices: the slices have no positions of their own, so they read
    the topic's history from its beginning on top of the rows the tables hold. The rows come out
    the same, and the task found stuck before is not reported again."""
    start = time.time() - 60
    events = [
        event
        for i in range(40)
        for event in task_events(f"t{i}-{names.suffix}", start=start + i * 0.1)
    ]
    events += task_events(f"stuck-{names.suffix}", name="app.nap", start=start)[:3]  # started
    records = [encode(event) for event in events]
    write_records(kafka.bootstrap_servers, names.topic, records, timestamp_ms=int(start * 1000))
    env = materialize_env(names, kafka.bootstrap_servers, "sliced", BRIDGE_STUCK_AFTER="app.nap=1")
    derived = functools.partial(
        derived_events, kafka.bootstrap_servers, env["BRIDGE_DERIVED_TOPIC"]
    )
    whole = start_materialize(env, tmp_path / "whole.log")
    materializers.append(whole)
    poll(lambda: len(tables_of(kafka, env)) == 41 and derived(), 30, what="the tables written")
    before, found = without_clock(tables_of(kafka, env)), derived()
    assert [(e["type"], e["uuid"]) for e in found] == [("task-stuck", f"stuck-{names.suffix}")]
    whole.signal(signal.SIGTERM)
    assert whole.wait(30) == 0
    sliced = {**env, "BRIDGE_MATERIALIZE_SLICES": "2"}
    slices = [start_materialize(sliced, tmp_path / f"slice-{i}.log") for i in range(2)]
    materializers.extend(slices)
    read = "celery_kafka_bridge_materialize_events_total"
    poll(
        lambda: all(p.metric(read) >= len(records) for p in slices),
        30,
        what="both slices to read the history",
    )
    assert_settles(lambda: without_clock(tables_of(kafka, env)), before)
    # A new task in the stuck task's partition: once its row is written, the slice holding both
    # has run its checks on the whole history (they run before every write).
    stuck_partition = partition_for(f"stuck-{names.suffix}".encode(), [0, 1, 2, 3])
    marker = next(
        uuid
        for i in itertools.count()
        if partition_for((uuid := f"marker-{i}-{names.suffix}").encode(), [0, 1, 2, 3])
        == stuck_partition
    )
    write_records(kafka.bootstrap_servers, names.topic, [encode(task_events(marker)[0])])
    poll(lambda: marker in tables_of(kafka, env), 30, what="the new task's row")
    assert derived() == found
