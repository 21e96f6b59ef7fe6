"""What the audit commands compute from events: filters, timelines, cluster state. No I/O."""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, SupportsIndex
from weakref import WeakSet

import orjson
from celery import Celery, states
from celery.events.receiver import EventReceiver
from celery.events.state import State, Task
from kombu.utils.functional import LRUCache

from celery_kafka_bridge.reader.events import EventFields
from celery_kafka_bridge.reader.timeparse import format_time

_PHASE_AFTER = {
    "task-sent": "queued",
    "task-received": "waiting",
    "task-started": "running",
    "task-retried": "queued",
}
"""The phase a task enters with each event; other task events leave the phase as it was."""
_TERMINAL = frozenset({"task-succeeded", "task-failed", "task-revoked", "task-rejected"})
PHASES = ("queued", "waiting", "running")
STUCK_STATES = frozenset({states.STARTED, states.RECEIVED})
_SHOWN_ELSEWHERE = frozenset(
    {"type", "hostname", "timestamp", "uuid", "name", "utcoffset", "pid", "clock", "local_received"}
)
_MAX_VALUE_CHARS = 200


@dataclass
class EventFilter:
    """Which events to keep: each non-empty set must match (shell-style patterns allowed).

    Only ``task-sent`` and ``task-received`` carry the task name, so the filter remembers the
    names of the last ``memory`` tasks it saw to match their later events too.
    """

    types: frozenset[str] = frozenset()
    task_names: frozenset[str] = frozenset()
    hostnames: frozenset[str] = frozenset()
    task_ids: frozenset[str] = frozenset()
    memory: int = 100_000
    _names: OrderedDict[str, str] = field(default_factory=OrderedDict, repr=False)

    def matches(self, event: EventFields) -> bool:
        task_id, name = event.get("uuid"), event.get("name")
        if isinstance(task_id, str) and isinstance(name, str) and self.task_names:
            self._names[task_id] = name
            if len(self._names) > self.memory:
                self._names.popitem(last=False)
        if self.task_names:
            name = self._names.get(task_id) if isinstance(task_id, str) else None
            if not _any_match(name, self.task_names):
                return False
        return (
            (not self.task_ids or task_id in self.task_ids)
            and (not self.types or _any_match(event.get("type"), self.types))
            and (not self.hostnames or _any_match(event.get("hostname"), self.hostnames))
        )


def _any_match(value: Any, patterns: frozenset[str]) -> bool:
    return isinstance(value, str) and any(fnmatch.fnmatchcase(value, p) for p in patterns)


def format_event(event: EventFields) -> str:
    """One line for people: time, host, type, task, then the remaining fields as key=value."""
    stamp = event.get("timestamp")
    when = format_time(stamp) if isinstance(stamp, int | float) else "-"
    parts = [when, str(event.get("hostname", "-")), str(event.get("type", "?"))]
    if "uuid" in event:
        parts.append(f"{event.get('name') or ''}[{event['uuid']}]")
    for key, value in event.items():
        if key not in _SHOWN_ELSEWHERE:
            parts.append(f"{key}={_short(value)}")
    return " ".join(parts)


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


class _Task(Task):  # type: ignore[misc]
    """Celery's Task, with its set of children and its serializers made on first use.

    Celery's ``Task.__init__`` builds both for every task: a ``WeakSet`` and a dict of three
    bound methods, most of a new task's cost, though most tasks never have a child and
    nothing here serializes them through ``as_dict`` in bulk.
    """

    def __init__(
        self,
        uuid: str | None = None,
        cluster_state: State | None = None,
        children: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.uuid = uuid
        self.cluster_state = cluster_state
        if children:  # a restored task: its children that are known
            tasks = cluster_state.tasks if cluster_state is not None else {}
            self._children = WeakSet(tasks.get(c) for c in children if c in tasks)
        if kwargs:
            self.__dict__.update(kwargs)

    @property
    def children(self) -> WeakSet[Any]:
        found: WeakSet[Any] | None = self.__dict__.get("_children")
        if found is None:
            found = self._children = WeakSet()
        return found

    @property
    def child_ids(self) -> list[str]:
        """The uuids of the children, sorted, without making an empty set."""
        found = self.__dict__.get("_children")
        return sorted(child.uuid for child in found) if found else []

    @property
    def _serializer_handlers(self) -> dict[str, Any]:
        return {
            "children": self._serializable_children,
            "root": self._serializable_root,
            "parent": self._serializable_parent,
        }


class _State(State):  # type: ignore[misc]
    Task = _Task


class _NoTaskHeap(list[Any]):
    """State's task heap, kept empty.

    State adds an entry for every task event to a list kept in clock order (up to four per
    task), read only by `State.tasks_by_time` and the callable forms of ``tasks_by_type`` and
    ``tasks_by_worker``, which nothing here uses. Events of several workers come out of clock
    order, so most go through ``bisect.insort``, which calls ``insert`` on a list subclass.
    """

    def append(self, item: Any) -> None:
        pass

    def insert(self, index: SupportsIndex, item: Any) -> None:
        pass


class _LRUCache(LRUCache):
    """kombu's LRUCache with the same results and order, reading its dict directly.

    LRUCache's ``__getitem__`` pops the key and sets it again through its ``__setitem__``; the
    materializer looks up the task of every task event.
    """

    data: OrderedDict[Any, Any]

    def __getitem__(self, key: Any) -> Any:
        with self.mutex:
            self.data.move_to_end(key)
            return self.data[key]


class _PendingChildren(dict[Any, Any]):
    """State's children waiting for their parent, as kombu's LRUCache keeps them (the least
    recently used dropped at ``limit``), with dict's own ``pop``: State pops every task event's
    uuid from it, which is nearly always missing, and catches the KeyError."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __getitem__(self, key: Any) -> Any:
        value = self.pop(key)  # and set again: the most recently used
        super().__setitem__(key, value)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        if len(self) >= self.limit:
            del self[next(iter(self))]
        super().__setitem__(key, value)


class StateBuilder:
    """Feeds events to a `celery.events.state.State` exactly as Celery's EventReceiver would.

    The receiver adds ``local_received`` and fixes task-sent clocks and time zones; State
    ignores worker events and fails on task events without that. The bridge's ``received_at``
    header is the moment the event was received, so it stands in for the receiver's clock.
    The state keeps no task heap (`State.tasks_by_time` yields nothing).
    """

    def __init__(self, max_tasks: int = 100_000) -> None:
        tasks = _LRUCache(max_tasks)  # type: ignore[no-untyped-call]
        self.state = _State(max_tasks_in_memory=max_tasks, tasks=tasks, taskheap=_NoTaskHeap())
        self.state._tasks_to_resolve = _PendingChildren(max_tasks)
        self._receiver = EventReceiver(None, app=Celery(set_as_current=False))

    def feed(self, event: EventFields, received_at: float | None = None) -> None:
        """Apply one event (the caller's dict is left alone)."""
        stamp = event.get("timestamp")
        local = received_at or (float(stamp) if isinstance(stamp, int | float) else time.time())
        _, body = self._receiver.event_from_message(dict(event), now=lambda: local)
        self.state.event(body)


@dataclass(frozen=True)
class Step:
    """One event of a task, with the time since the previous one and since the first."""

    event: EventFields
    since_previous: float | None
    since_first: float


@dataclass(frozen=True)
class Timeline:
    task_id: str
    name: str | None
    steps: list[Step]
    phases: dict[str, float]
    """Seconds spent queued (sent or retried, not yet received), waiting (received, not
    started) and running (started, not finished), summed over attempts."""
    state: str


def build_timeline(task_id: str, events: Iterable[EventFields]) -> Timeline:
    """The steps of one task in time order, the time per phase and the final state.

    Arrival order is not time order: a worker buffers task events and flushes them in batches,
    and its pool processes publish on their own connections. The sort is stable, so events with
    the same timestamp keep the order given.
    """
    ordered = sorted((e for e in events if e.get("uuid") == task_id), key=_timestamp)
    builder = StateBuilder(max_tasks=1)
    steps: list[Step] = []
    phases = dict.fromkeys(PHASES, 0.0)
    phase: str | None = None
    first = previous = None
    for event in ordered:
        at = _timestamp(event)
        first = at if first is None else first
        if previous is not None and phase is not None:
            phases[phase] += at - previous
        steps.append(Step(event, None if previous is None else at - previous, at - first))
        previous = at
        kind = str(event.get("type"))
        phase = None if kind in _TERMINAL else _PHASE_AFTER.get(kind, phase)
        builder.feed(event)
    task = builder.state.tasks.get(task_id)
    name = next((str(e["name"]) for e in ordered if e.get("name")), None)
    return Timeline(task_id, name, steps, phases, task.state if task else "UNKNOWN")


def _timestamp(event: EventFields) -> float:
    stamp = event.get("timestamp")
    return float(stamp) if isinstance(stamp, int | float) else 0.0


_ROW_STEPS = (
    ("sent", "task-sent"),
    ("received", "task-received"),
    ("started", "task-started"),
    ("retried", "task-retried"),
    ("rejected", "task-rejected"),
    ("revoked", "task-revoked"),
    ("failed", "task-failed"),
    ("succeeded", "task-succeeded"),
)


def timeline_from_row(task_id: str, row: Mapping[str, Any]) -> Timeline:
    """A timeline from a task's row in the materializer's table: one step per state the task
    reached, at the latest time it reached it (earlier attempts of a retried task are not in
    the row); the state is the row's."""
    host = {"hostname": row["worker"]} if row.get("worker") else {}
    steps = [
        {"type": kind, "uuid": task_id, "timestamp": row[name], **host}
        for name, kind in _ROW_STEPS
        if isinstance(row.get(name), int | float)
    ]
    timeline = build_timeline(task_id, steps)
    return dataclasses.replace(timeline, name=row.get("name"), state=str(row["state"]))


def format_timeline(timeline: Timeline) -> str:
    lines = [f"task {timeline.task_id} {timeline.name or ''}".rstrip()]
    for step in timeline.steps:
        delta = "" if step.since_previous is None else f"+{step.since_previous:.3f}s"
        lines.append(f"  {format_event(step.event)}  {delta}".rstrip())
    spent = ", ".join(f"{p} {timeline.phases[p]:.3f}s" for p in PHASES)
    lines.append(f"{spent}; final state {timeline.state}")
    return "\n".join(lines)


@dataclass(frozen=True)
class Failure:
    task_id: str
    name: str | None
    exception: str | None
    worker: str | None
    at: float | None


@dataclass(frozen=True)
class Stuck:
    task_id: str
    name: str | None
    state: str
    since: float
    seconds: float


@dataclass(frozen=True)
class WorkerSeen:
    hostname: str
    alive: bool
    last_heartbeat: float | None


@dataclass(frozen=True)
class StateSummary:
    at: float
    events: int
    by_state: dict[str, int]
    by_name: dict[str, dict[str, int]]
    failures: list[Failure]
    workers: list[WorkerSeen]
    stuck: list[Stuck]
    source: str
    """The topic the state came from: the events topic, or the materializer's tasks table."""


def summarise(
    state: State, at: float, stuck_after: float, source: str = "the events topic"
) -> StateSummary:
    """Counts by state and name, failures, workers, and tasks stuck for over ``stuck_after``."""
    tasks = list(state.tasks.values())
    by_name: dict[str, Counter[str]] = {}
    for task in tasks:
        by_name.setdefault(task.name or "?", Counter())[task.state] += 1
    return StateSummary(
        at=at,
        events=state.event_count,
        by_state=dict(sorted(Counter(t.state for t in tasks).items())),
        by_name={n: dict(sorted(c.items())) for n, c in sorted(by_name.items())},
        failures=[
            Failure(t.uuid, t.name, t.exception, t.worker.hostname if t.worker else None, t.failed)
            for t in tasks
            if t.state == states.FAILURE
        ],
        workers=[_worker_seen(w, at) for _, w in sorted(state.workers.items())],
        stuck=sorted(_stuck(tasks, at, stuck_after), key=lambda s: s.since),
        source=source,
    )


def _stuck(tasks: Iterable[Any], at: float, stuck_after: float) -> Iterable[Stuck]:
    for task in tasks:
        since = task.started if task.state == states.STARTED else task.received
        if task.state in STUCK_STATES and since and at - since > stuck_after:
            yield Stuck(task.uuid, task.name, task.state, since, at - since)


def _worker_seen(worker: Any, at: float) -> WorkerSeen:
    beats = worker.heartbeats
    return WorkerSeen(
        worker.hostname, bool(beats) and at < worker.heartbeat_expires, beats[-1] if beats else None
    )


def format_summary(summary: StateSummary) -> str:
    origin = (
        f"{summary.events} events" if summary.events else f"{sum(summary.by_state.values())} tasks"
    )
    lines = [f"state at {format_time(summary.at)} from {origin} in {summary.source}"]
    lines.append("tasks by state: " + _counts(summary.by_state))
    lines.append("tasks by name:")
    lines += [f"  {name}: {_counts(counts)}" for name, counts in summary.by_name.items()]
    lines.append(f"failures: {len(summary.failures)}")
    lines += [
        f"  {f.task_id} {f.name or '?'} on {f.worker or '?'}: {f.exception}"
        for f in summary.failures
    ]
    lines.append(f"workers seen: {len(summary.workers)}")
    lines += [
        f"  {w.hostname} {'alive' if w.alive else 'offline'}"
        + (f", last heartbeat {format_time(w.last_heartbeat)}" if w.last_heartbeat else "")
        for w in summary.workers
    ]
    lines.append(f"stuck (RECEIVED/STARTED, no progress): {len(summary.stuck)}")
    lines += [
        f"  {s.task_id} {s.name or '?'} {s.state} for {s.seconds:.0f}s since {format_time(s.since)}"
        for s in summary.stuck
    ]
    return "\n".join(lines)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"
