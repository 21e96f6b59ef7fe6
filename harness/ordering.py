"""Per-task order in the topic: how many records came before an earlier event of their sender."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery_kafka_bridge.reader.events import EventFields


@dataclass(frozen=True)
class OrderReport:
    """Records of task events, and how many were written before an earlier event of theirs."""

    records: int
    inversions: int

    @property
    def rate(self) -> float:
        return self.inversions / self.records if self.records else 0.0


def count_inversions(events_in_topic_order: Iterable[EventFields]) -> OrderReport:
    """Count, per task, records followed later by an event of the same task from the same worker
    process (same ``hostname`` and ``pid``) with a lower ``clock``.

    Pool processes send some events with their own clock, so clocks are compared only within one
    process. Pass each partition's events in offset order (a task's records share a partition);
    duplicates of an event are counted once.
    """
    by_task: dict[str, list[EventFields]] = defaultdict(list)
    seen: set[tuple[Any, ...]] = set()
    for event in events_in_topic_order:
        task = event.get("uuid")
        identity = (
            task,
            event.get("hostname"),
            event.get("pid"),
            event.get("clock"),
            event.get("type"),
        )
        if not isinstance(task, str) or identity in seen:
            continue
        seen.add(identity)
        by_task[task].append(event)
    records = inversions = 0
    for events in by_task.values():
        records += len(events)
        lowest_after: dict[tuple[Any, Any], float] = {}
        for event in reversed(events):
            sender = (event.get("hostname"), event.get("pid"))
            clock = event.get("clock")
            if not isinstance(clock, int | float):
                continue
            if lowest_after.get(sender, float("inf")) < clock:
                inversions += 1
            lowest_after[sender] = min(lowest_after.get(sender, float("inf")), clock)
    return OrderReport(records, inversions)
