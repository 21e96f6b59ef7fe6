"""The materializer's state: Celery's State fed with the events, what changed since the last
flush, and the checks that derive events. No I/O: `service` reads and writes Kafka around it.
"""

from __future__ import annotations

import heapq
import time
from bisect import insort
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from celery_kafka_bridge.materialize import derived as d
from celery_kafka_bridge.materialize.slices import WHOLE, Slice
from celery_kafka_bridge.materialize.tables import (
    FINAL_STATES,
    WorkerBook,
    dumps,
    restore_task,
    restore_worker,
    task_value,
    worker_value,
)
from celery_kafka_bridge.reader.audit import StateBuilder
from celery_kafka_bridge.reader.events import Event

_CLAIM_EVENTS = frozenset({"worker-online", "worker-heartbeat", "worker-offline"})
TALLY_WRITE_SECONDS = 1.0
MARKS_HEADER = "derived"
"""Task record header: the findings already reported for the task (so a restart does not
report them again)."""


@dataclass
class Flush:
    """What one flush writes: table records (None: a tombstone), derived events, positions."""

    tasks: dict[str, tuple[bytes | None, list[tuple[str, bytes]]]] = field(default_factory=dict)
    workers: dict[str, bytes] = field(default_factory=dict)
    derived: list[d.Derived] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks) + len(self.workers) + len(self.derived)


class Engine:
    """Celery's State of a slice's tasks and of every worker, and the bookkeeping around it."""

    def __init__(
        self,
        thresholds: list[tuple[str, float]],
        tombstone_after: float,
        grace: float,
        max_tasks: int,
        slice_: Slice = WHOLE,
    ) -> None:
        self.slice = slice_
        self._builder = StateBuilder(max_tasks)
        self.state = self._builder.state
        self.thresholds = thresholds
        self.tombstone_after = tombstone_after
        self.grace = grace
        self.books: dict[str, WorkerBook] = {}
        self.marks: dict[str, set[str]] = {}
        self.positions: dict[int, int] = {}
        self._open: set[str] = set()
        self._finals: list[tuple[float, str]] = []
        self._claims: deque[tuple[float, float, str, d.Claim]] = deque()
        self._read_ms: dict[int, int] = {}
        """Per partition, the Kafka timestamp of the last record applied."""
        self._dirty_tasks: set[str] = set()
        self._dirty_workers: set[str] = set()
        self._counting: set[str] = set()
        """Workers whose tally counted task-started events since their record was written."""
        self._written: dict[str, float] = {}
        self._tombstones: set[str] = set()
        self._derived: list[d.Derived] = []

    def restore_task(self, uuid: str, value: dict[str, Any], marks: set[str]) -> None:
        restore_task(self.state, uuid, value)
        if marks:
            self.marks[uuid] = marks
        self._track(uuid)

    def restore_worker(self, value: dict[str, Any]) -> None:
        self.books[value["hostname"]] = restore_worker(self.state, value)

    def apply(self, event: Event) -> None:
        """Feed one event to the state (a task event only if the slice owns its partition)
        and note what it changed."""
        kind, hostname = event.type, event.hostname
        if not kind.startswith("task-"):
            self._builder.feed(event.data, event.received_at)
            if hostname is not None and kind in _CLAIM_EVENTS:
                self._worker_event(hostname, event)
            return
        task_id = event.task_id
        if self.slice.owns(event.partition):
            self._builder.feed(event.data, event.received_at)
            if task_id is not None and task_id in self.state.tasks:
                self._dirty_tasks.add(task_id)
                self._tombstones.discard(task_id)
                self._track(task_id)
        if kind == "task-started" and hostname is not None and self.slice.keeps_workers:
            self._count_started(hostname, event)

    def advance(self, read_through: Mapping[int, tuple[int, int]]) -> None:
        """Note the records read, applied or passed over: per partition, the next offset and
        the Kafka timestamp of the last one."""
        for partition, (offset, timestamp_ms) in read_through.items():
            self.positions[partition] = offset
            self._read_ms[partition] = timestamp_ms

    def _worker_event(self, hostname: str, event: Event) -> None:
        book = self.books.setdefault(hostname, WorkerBook())
        if event.type != "worker-offline":
            book.last_heartbeat = event.received_at or event.timestamp
        if not self.slice.keeps_workers:
            return
        self._dirty_workers.add(hostname)
        processed = event.data.get("processed")
        clock = event.clock
        if isinstance(processed, int) and clock is not None:
            pid = event.data.get("pid")
            claim = d.Claim(
                pid if isinstance(pid, int) else None, clock, processed, event.timestamp
            )
            if book.tally.pid is None or book.tally.pid != claim.pid:
                d.reconcile(hostname, book.tally, claim, time.time())  # the first base
            else:
                due_ms = event.timestamp_ms + self.grace * 1000
                self._claims.append((time.monotonic() + self.grace, due_ms, hostname, claim))

    def _count_started(self, hostname: str, event: Event) -> None:
        tally, clock, pid = (
            self.books.setdefault(hostname, WorkerBook()).tally,
            event.clock,
            event.data.get("pid"),
        )
        if clock is None or not isinstance(pid, int) or (pid == tally.pid and clock <= tally.clock):
            return  # counted in the base claim already
        if event.offset < tally.positions.get(event.partition, 0):
            return  # counted before the record was written (read again after a restart)
        insort(tally.started.setdefault(pid, []), clock)
        self._counting.add(hostname)

    def _track(self, uuid: str) -> None:
        task = self.state.tasks[uuid]
        if task.state in d.OPEN_STATES:
            self._open.add(uuid)
            return
        self._open.discard(uuid)
        if task.state in FINAL_STATES:
            heapq.heappush(self._finals, (float(task.timestamp or 0), uuid))

    def check(self, now: float, caught_up: bool) -> None:
        """Completeness claims past their grace; with the input caught up (a worker's silence
        means something only then), lost workers, lost and stuck tasks; due tombstones."""
        monotonic = time.monotonic()
        # Due after the grace, or once every partition read is past it (replaying a backlog:
        # a claim waits for the input, not the clock, and the tallies stay short).
        read_ms = min(self._read_ms.values(), default=0)
        while self._claims and (self._claims[0][0] <= monotonic or self._claims[0][1] <= read_ms):
            _, _, hostname, claim = self._claims.popleft()
            found = d.reconcile(hostname, self.books[hostname].tally, claim, now)
            self._report(found)
        if caught_up and self.slice.keeps_workers:
            self._check_workers(now)
        if caught_up:
            self._check_open(now)
        self._due_tombstones(now)

    def _report(self, found: d.Derived | None) -> None:
        if found is not None:
            self._derived.append(found)
            self._dirty_workers.add(found.key)

    def _check_workers(self, now: float) -> None:
        for hostname, book in self.books.items():
            worker = self.state.workers.get(hostname)
            if worker is None:
                continue
            lost = bool(worker.heartbeats) and now >= worker.heartbeat_expires
            if lost != book.lost:
                book.lost = lost
                self._dirty_workers.add(hostname)
                if lost:
                    self._derived.append(d.worker_lost(worker, book.last_heartbeat, now))

    def _check_open(self, now: float) -> None:
        for uuid in list(self._open):
            task = self.state.tasks.get(uuid)
            if task is None or task.state not in d.OPEN_STATES:
                self._open.discard(uuid)
                continue
            marks = self.marks.setdefault(uuid, set())
            mark = str(task.timestamp)
            book = self.books.get(task.worker.hostname) if task.worker else None
            why = d.worker_gone(task.worker, book.last_heartbeat, now) if book else None
            if why and f"task-lost@{mark}" not in marks:
                marks.add(f"task-lost@{mark}")
                self._derived.append(
                    d.task_lost(task, why, book.last_heartbeat if book else None, now)
                )
                self._dirty_tasks.add(uuid)
            since = d.open_since(task)
            threshold = d.stuck_threshold(task.name, self.thresholds)
            if (
                since
                and threshold
                and now - since > threshold
                and f"task-stuck@{mark}" not in marks
            ):
                marks.add(f"task-stuck@{mark}")
                self._derived.append(d.task_stuck(task, since, threshold, now))
                self._dirty_tasks.add(uuid)

    def _due_tombstones(self, now: float) -> None:
        while self._finals and self._finals[0][0] <= now - self.tombstone_after:
            _, uuid = heapq.heappop(self._finals)
            task = self.state.tasks.get(uuid)
            if task is not None and task.state in FINAL_STATES:
                if float(task.timestamp or 0) > now - self.tombstone_after:
                    continue  # finished again later; its own heap entry comes due then
                self.state.tasks.pop(uuid, None)
                self.marks.pop(uuid, None)
                self._tombstones.add(uuid)
                self._dirty_tasks.discard(uuid)

    def take(self, now: float) -> Flush:
        """Everything changed since the last take, as records; forgets it.

        A worker whose tally only counted task-started events is written at most every
        `TALLY_WRITE_SECONDS` (its tally can be long); until then the positions committed stay
        at those its record covers, so a restart counts those events again, once.
        """
        monotonic = time.monotonic()
        flush = Flush(positions=dict(self.positions), derived=self._derived)
        for uuid in self._dirty_tasks:
            task = self.state.tasks.get(uuid)
            if task is not None:
                headers = [(MARKS_HEADER, ",".join(sorted(self.marks.get(uuid, ()))).encode())]
                flush.tasks[uuid] = (dumps(task_value(task)), headers)
        for uuid in self._tombstones:
            flush.tasks[uuid] = (None, [])
        due = self._dirty_workers | {
            h
            for h in self._counting
            if monotonic - self._written.get(h, 0.0) >= TALLY_WRITE_SECONDS
        }
        self._counting -= due
        for hostname in self._counting:
            for partition, offset in self.books[hostname].tally.positions.items():
                flush.positions[partition] = min(flush.positions.get(partition, offset), offset)
        for hostname in due:
            worker = self.state.workers.get(hostname)
            if worker is not None:
                book = self.books[hostname]
                book.tally.positions = dict(self.positions)
                flush.workers[hostname] = dumps(worker_value(worker, book, now))
                self._written[hostname] = monotonic
        self._dirty_tasks, self._dirty_workers, self._tombstones = set(), set(), set()
        self._derived = []
        return flush

    @property
    def pending(self) -> int:
        """Changes not taken yet."""
        return len(self._dirty_tasks) + len(self._dirty_workers) + len(self._derived)
