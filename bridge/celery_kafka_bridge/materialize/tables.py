"""The records of the state tables, and Celery's State rebuilt from them. No I/O.

A task's value is Celery's own ``Task.as_dict()`` (the worker as its hostname), so a reader
sees exactly what `celery.events.state.State` computed; a worker's value adds what the state
keeps outside Celery's Worker (status, the last heartbeat after an offline, the completeness
tally).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from celery import states
from celery.events.state import State

TASK_FIELDS = tuple(f for f in State.Task._fields if f not in ("uuid", "root", "parent"))
"""What a task record holds: Celery's fields but the uuid (the key) and the root and parent
objects (their ids are fields of their own)."""
FINAL_STATES = frozenset(states.READY_STATES)
_READ_AS = tuple((f, "child_ids" if f == "children" else f) for f in TASK_FIELDS)
"""Each field with the attribute it is read from: the children as their sorted uuids, since
reading ``children`` makes a childless task's empty set (`reader.audit`)."""


def dumps(value: Any) -> bytes:
    """A table value as JSON; values JSON cannot hold (bytes, datetimes) as their repr."""
    return orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS)


def task_value(task: Any) -> dict[str, Any]:
    """The record value of one of `StateBuilder`'s tasks."""
    value = {name: getattr(task, attribute, None) for name, attribute in _READ_AS}
    value["worker"] = task.worker.hostname if task.worker is not None else None
    return value


def restore_task(state: State, uuid: str, value: dict[str, Any]) -> None:
    """Put a task record back into ``state`` as Celery's Task."""
    fields = {k: v for k, v in value.items() if k in TASK_FIELDS and k != "children"}
    hostname = fields.pop("worker", None)
    task = state.Task(uuid, cluster_state=state, children=value.get("children"), **fields)
    task.worker = state.get_or_create_worker(hostname)[0] if hostname else None
    state.tasks[uuid] = task


@dataclass
class Tally:
    """A worker's completeness bookkeeping: its last checked heartbeat (the base) and the
    clocks of the task-started events seen from it since then.

    Celery counts a task in ``processed`` when the pool accepts it and sends task-started right
    after, on the same thread and Lamport clock as the heartbeat; so a heartbeat with clock c
    counted exactly the task-started events with a clock up to c.
    """

    pid: int | None = None
    clock: int = 0
    processed: int = 0
    at: float | None = None
    started: dict[int, list[int]] = field(default_factory=dict)
    """Per worker pid, the clocks (sorted) of its task-started events not yet compared: the
    events of its partitions can be read before the heartbeat they precede, or before any."""
    missing: int = 0
    positions: dict[int, int] = field(default_factory=dict)
    """The input positions (partition: next offset) when the record was written: after a
    restart, task-started events before them are counted already."""


@dataclass
class WorkerBook:
    """What the materializer keeps about a worker beside Celery's Worker."""

    last_heartbeat: float | None = None
    lost: bool = False
    tally: Tally = field(default_factory=Tally)


def worker_value(worker: Any, book: WorkerBook, now: float) -> dict[str, Any]:
    """The record value of one worker."""
    if worker.heartbeats:
        status = "online" if now < worker.heartbeat_expires else "lost"
    else:
        status = "offline" if book.last_heartbeat is not None else "unknown"  # task events only
    tally = book.tally
    return {
        "hostname": worker.hostname,
        "status": status,
        "last_heartbeat": book.last_heartbeat,
        "heartbeat_expires": worker.heartbeat_expires if worker.heartbeats else None,
        "freq": worker.freq,
        "pid": worker.pid,
        "active": worker.active,
        "processed": worker.processed,
        "loadavg": worker.loadavg,
        "sw_ident": worker.sw_ident,
        "sw_ver": worker.sw_ver,
        "sw_sys": worker.sw_sys,
        "clock": worker.clock,
        "lost_reported": book.lost,
        "completeness": {
            "pid": tally.pid,
            "clock": tally.clock,
            "processed": tally.processed,
            "at": tally.at,
            "started": {str(pid): clocks for pid, clocks in tally.started.items()},
            "missing": tally.missing,
            "positions": {str(k): v for k, v in tally.positions.items()},
        },
    }


_WORKER_FIELDS = tuple(f for f in State.Worker._fields if f not in ("hostname", "heartbeats"))


def restore_worker(state: State, value: dict[str, Any]) -> WorkerBook:
    """Put a worker record back into ``state``; its bookkeeping."""
    hostname = value["hostname"]
    worker = state.get_or_create_worker(hostname)[0]
    for name in _WORKER_FIELDS:
        setattr(worker, name, value.get(name))
    worker.clock = worker.clock or 0
    if value.get("status") != "offline" and value.get("last_heartbeat") is not None:
        worker.heartbeats[:] = [value["last_heartbeat"]]
    tally = dict(value.get("completeness") or {})
    positions = {int(k): int(v) for k, v in (tally.pop("positions", None) or {}).items()}
    started = {int(k): list(v) for k, v in (tally.pop("started", None) or {}).items()}
    return WorkerBook(
        last_heartbeat=value.get("last_heartbeat"),
        lost=bool(value.get("lost_reported")),
        tally=Tally(**tally, positions=positions, started=started),
    )
