"""Per-task order by topology: three replicas, a real worker, short tasks; inversions counted.

For each topology a fresh set of names, three bridge replicas, and a prefork worker (-E) run
``tasks`` short tasks (plain, retrying, and ones sending custom events) sent at a steady pace.
The topic is then read until every task succeeded; a record that comes before an earlier event
of the same worker process (same hostname and pid, lower clock) counts as an inversion.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.drains import Setup, bridge_config, consuming_since, replicas
from bench.queues import Rabbit
from celery_kafka_bridge.config import Config
from harness.ordering import count_inversions
from harness.support import (
    KafkaRecord,
    in_topic_order,
    read_topic,
    send_tasks,
    start_worker,
    stop_worker,
)

TOPOLOGIES = ("ordered", "sharded", "competing")
TASKS_PER_SECOND = 250.0


@dataclass(frozen=True)
class Ordering:
    """One topology: the task records written and how many came out of order."""

    topology: str
    tasks: int
    records: int
    inversions: int
    seconds: float
    """From the first task sent until every task's records were read."""

    @property
    def rate_pct(self) -> float:
        return round(100 * self.inversions / self.records, 2) if self.records else 0.0


def run_topology(setup: Setup, topology: str, tasks: int) -> Ordering:
    name = f"{setup.prefix}-o-{topology}"
    config = bridge_config(setup, name, topology)
    task_queue = f"{name}.tasks"
    try:
        with replicas(setup, config, 3) as procs:
            consuming_since(procs)
            worker = start_worker(
                name, task_queue, setup.workdir / f"{name}-worker.log", hostname=f"{name}@bench"
            )
            try:
                started = time.monotonic()
                sent = set(send_tasks(name, task_queue, tasks, TASKS_PER_SECOND))
                records = read_topic(
                    setup.kafka, config.topic, until=all_succeeded(sent), timeout=tasks / 10 + 120
                )
                seconds = time.monotonic() - started
            finally:
                stop_worker(worker)
    finally:
        _clean_up(setup.amqp_url, config, task_queue)
    report = count_inversions(in_topic_order(records))
    return Ordering(topology, tasks, report.records, report.inversions, round(seconds, 1))


def all_succeeded(task_ids: set[str]) -> Callable[[list[KafkaRecord]], bool]:
    """A reader's stop condition: every task's task-succeeded record is in (heartbeats keep
    the topic busy, so it never goes idle). Looks at each record once."""
    done: set[str] = set()
    looked = 0

    def check(records: list[KafkaRecord]) -> bool:
        nonlocal looked
        for record in records[looked:]:
            if record.headers.get("event_type") == b"task-succeeded":
                done.add(record.headers["task_id"].decode())
        looked = len(records)
        return done >= task_ids

    return check


def _clean_up(amqp_url: str, config: Config, task_queue: str) -> None:
    rabbit = Rabbit(amqp_url)
    try:
        for queue in [*config.event_queues, task_queue, config.replicas_queue]:
            rabbit.channel.queue_delete(queue)
        # The worker's task exchange is named after its queue (Celery's default).
        for exchange in (config.shard_exchange, config.event_exchange, task_queue):
            rabbit.channel.exchange_delete(exchange)
    finally:
        rabbit.close()


def run_topologies(setup: Setup, tasks: int) -> list[Ordering]:
    return [run_topology(setup, topology, tasks) for topology in TOPOLOGIES] if tasks else []
