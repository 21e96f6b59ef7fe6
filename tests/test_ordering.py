"""Counting order inversions: a task's record written before an earlier event of its sender."""

from __future__ import annotations

from typing import Any

from harness.ordering import count_inversions


def event(kind: str, clock: int, uuid: str = "t1", pid: int = 1) -> dict[str, Any]:
    return {"type": kind, "uuid": uuid, "hostname": "w@h", "pid": pid, "clock": clock}


def test_a_task_written_in_clock_order_has_no_inversion() -> None:
    report = count_inversions(
        [event("task-received", 1), event("task-started", 2), event("task-succeeded", 3)]
    )
    assert (report.records, report.inversions) == (3, 0)


def test_succeeded_before_started_is_one_inversion() -> None:
    report = count_inversions(
        [event("task-received", 1), event("task-succeeded", 3), event("task-started", 2)]
    )
    assert report.inversions == 1
    assert report.rate == 1 / 3


def test_clocks_of_different_processes_are_not_compared() -> None:
    report = count_inversions([event("task-progress", 50, pid=2), event("task-started", 2)])
    assert report.inversions == 0


def test_tasks_are_judged_apart_and_duplicates_count_once() -> None:
    events = [
        event("task-started", 5, "a"),
        event("task-started", 1, "b"),
        event("task-started", 5, "a"),
        event("task-received", 9, "b"),
    ]
    assert count_inversions(events).records == 3
    assert count_inversions(events).inversions == 0
