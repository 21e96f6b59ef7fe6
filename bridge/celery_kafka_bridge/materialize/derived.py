"""Derived events: each names what was found and the evidence for it. Pure functions.

- ``task-lost``: a task in RECEIVED or STARTED on a worker that went offline or stopped
  heartbeating, which never finished.
- ``task-stuck``: a task in RECEIVED or STARTED for longer than the threshold of its name.
- ``worker-lost``: a worker's heartbeats stopped without a worker-offline.
- ``events-missing``: a worker's heartbeat counted more accepted tasks than task-started
  events were seen from it since its previous checked heartbeat.

Every derived event has a deterministic ``id``: a second copy of the same finding (after a
restart) has the same id, so readers drop duplicates as they do for events.
"""

from __future__ import annotations

import fnmatch
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from celery import states

from celery_kafka_bridge.materialize.tables import Tally

OPEN_STATES = frozenset({states.RECEIVED, states.STARTED})
DERIVED_TYPES = ("task-lost", "task-stuck", "worker-lost", "events-missing")


@dataclass(frozen=True)
class Derived:
    """One derived event: its record key (task uuid or hostname) and value."""

    key: str
    value: dict[str, Any]

    @property
    def type(self) -> str:
        return str(self.value["type"])


def derived(kind: str, key: str, mark: str, now: float, **fields: Any) -> Derived:
    """A derived event of ``kind`` about ``key``; ``mark`` makes its id unique per finding."""
    value = {"type": kind, "id": f"{kind}:{key}:{mark}", "detected_at": now, **fields}
    return Derived(key, value)


def open_since(task: Any) -> float | None:
    """When a RECEIVED or STARTED task entered that state (None for any other state)."""
    if task.state == states.STARTED:
        return float(task.started or task.timestamp or 0) or None
    if task.state == states.RECEIVED:
        return float(task.received or task.timestamp or 0) or None
    return None


def worker_gone(worker: Any, last_heartbeat: float | None, now: float) -> str | None:
    """Why a worker can no longer finish its tasks (None while it can)."""
    if worker.heartbeats:
        return "heartbeats stopped" if now >= worker.heartbeat_expires else None
    return "offline" if last_heartbeat is not None else None


def _about_task(kind: str, task: Any, now: float, **evidence: Any) -> Derived:
    """A finding about a task, marked by the task's state timestamp (one per state reached)."""
    hostname = task.worker.hostname if task.worker else None
    evidence = {"state": task.state, **evidence}
    fields = {"uuid": task.uuid, "name": task.name, "hostname": hostname, "evidence": evidence}
    return derived(kind, task.uuid, str(task.timestamp), now, **fields)


def task_lost(task: Any, why: str, last_heartbeat: float | None, now: float) -> Derived:
    since = open_since(task)
    return _about_task(
        "task-lost", task, now, since=since, worker=why, last_heartbeat=last_heartbeat
    )


def worker_lost(worker: Any, last_heartbeat: float | None, now: float) -> Derived:
    return derived(
        "worker-lost",
        worker.hostname,
        str(last_heartbeat),
        now,
        hostname=worker.hostname,
        evidence={
            "last_heartbeat": last_heartbeat,
            "freq": worker.freq,
            "heartbeat_expires": worker.heartbeat_expires,
            "worker_offline_seen": False,
        },
    )


def stuck_threshold(name: str | None, thresholds: list[tuple[str, float]]) -> float | None:
    """The first threshold whose pattern matches the task name."""
    for pattern, seconds in thresholds:
        if fnmatch.fnmatchcase(name or "", pattern):
            return seconds
    return None


def task_stuck(task: Any, since: float, threshold: float, now: float) -> Derived:
    seconds = now - since
    return _about_task("task-stuck", task, now, since=since, seconds=seconds, threshold=threshold)


@dataclass(frozen=True)
class Claim:
    """A heartbeat's (or online/offline event's) account of the tasks its worker accepted."""

    pid: int | None
    clock: int
    processed: int
    at: float


def reconcile(hostname: str, tally: Tally, claim: Claim, now: float) -> Derived | None:
    """Compare a claim with the task-started events seen since the tally's base and move the
    base to the claim; an ``events-missing`` event if fewer were seen than counted.

    A new pid or a smaller count is a restarted worker: the claim becomes the base unchecked. A
    claim from before the base (read again after a restart) changes nothing.
    """
    if tally.pid == claim.pid and claim.clock <= tally.clock:
        return None  # read after a later one, or again after a restart: the base is past it
    fresh = tally.pid is None or tally.pid != claim.pid or claim.processed < tally.processed
    started = tally.started.get(claim.pid or 0, [])
    seen = bisect_right(started, claim.clock)
    gap = claim.processed - tally.processed - seen
    previous = (tally.clock, tally.processed, tally.at)
    tally.pid, tally.clock, tally.processed, tally.at = (
        claim.pid,
        claim.clock,
        claim.processed,
        claim.at,
    )
    tally.started = {claim.pid or 0: started[seen:]}  # other pids: a worker before its restart
    if fresh or gap <= 0:
        return None
    tally.missing += gap
    return derived(
        "events-missing",
        hostname,
        f"{claim.pid}:{claim.clock}",
        now,
        hostname=hostname,
        missing=gap,
        evidence={
            "from": {"clock": previous[0], "processed": previous[1], "at": previous[2]},
            "to": {"clock": claim.clock, "processed": claim.processed, "at": claim.at},
            "processed_delta": claim.processed - previous[1],
            "task_started_seen": seen,
        },
    )
