"""The audit logic over plain event lists: filters, timelines and the state summary."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery
from celery.events.receiver import EventReceiver
from celery.events.state import State
from kombu.utils.functional import LRUCache

from celery_kafka_bridge.materialize.tables import task_value
from celery_kafka_bridge.reader.audit import (
    EventFilter,
    StateBuilder,
    _PendingChildren,
    build_timeline,
    format_event,
    format_summary,
    format_timeline,
    summarise,
)

T0 = 1_714_564_800.0


def task_event(kind: str, uuid: str, at: float, clock: int, **fields: Any) -> dict[str, Any]:
    host = "client@h" if kind == "task-sent" else "w1@h"
    return {
        "type": kind,
        "uuid": uuid,
        "hostname": host,
        "timestamp": T0 + at,
        "utcoffset": 0,
        "pid": 1,
        "clock": clock,
        **fields,
    }


def lifecycle(
    uuid: str, name: str = "app.add", end: str = "task-succeeded", **end_fields: Any
) -> list[dict[str, Any]]:
    return [
        task_event("task-sent", uuid, 0.0, 1, name=name, args="(1, 2)"),
        task_event("task-received", uuid, 0.5, 2, name=name),
        task_event("task-started", uuid, 0.75, 3),
        task_event(end, uuid, 1.75, 4, **end_fields),
    ]


def test_a_filter_matches_later_events_of_a_task_by_the_name_seen_earlier() -> None:
    events = lifecycle("a", name="app.add") + lifecycle("b", name="app.mul")
    wanted = EventFilter(task_names=frozenset({"app.a*"}))
    assert [e["uuid"] for e in events if wanted.matches(e)] == ["a"] * 4


def test_filters_combine_and_accept_shell_patterns() -> None:
    events = [*lifecycle("a"), {"type": "worker-heartbeat", "hostname": "w1@h", "timestamp": T0}]
    wanted = EventFilter(types=frozenset({"task-s*"}), hostnames=frozenset({"w1@*"}))
    assert [e["type"] for e in events if wanted.matches(e)] == ["task-started", "task-succeeded"]
    by_id = EventFilter(task_ids=frozenset({"a"}))
    assert not by_id.matches(events[-1])


def test_the_name_memory_of_a_filter_is_bounded() -> None:
    wanted = EventFilter(task_names=frozenset({"app.add"}), memory=1)
    wanted.matches(lifecycle("a")[0])
    wanted.matches(lifecycle("b")[0])
    assert not wanted.matches(lifecycle("a")[2])
    assert wanted.matches(lifecycle("b")[2])


def test_an_event_reads_as_one_line_with_its_task_and_fields() -> None:
    line = format_event(lifecycle("a", result="3", runtime=1.0)[-1])
    assert line == "2024-05-01T12:00:01.750Z w1@h task-succeeded [a] result=3 runtime=1.0"


def test_a_timeline_times_each_phase_and_ends_in_the_final_state() -> None:
    timeline = build_timeline("a", lifecycle("a") + lifecycle("other"))
    assert [s.event["type"] for s in timeline.steps] == [
        "task-sent",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert [s.since_previous for s in timeline.steps] == [None, 0.5, 0.25, 1.0]
    assert timeline.phases == {"queued": 0.5, "waiting": 0.25, "running": 1.0}
    assert (timeline.name, timeline.state) == ("app.add", "SUCCESS")
    text = format_timeline(timeline)
    assert "+0.250s" in text
    assert text.endswith("queued 0.500s, waiting 0.250s, running 1.000s; final state SUCCESS")


def test_a_retried_task_queues_again_and_custom_events_keep_the_phase() -> None:
    events = [
        task_event("task-received", "r", 0, 1, name="app.flaky"),
        task_event("task-started", "r", 1, 2),
        task_event("task-progress", "r", 2, 3, progress=50),
        task_event("task-retried", "r", 3, 4, exception="RuntimeError('x')"),
        task_event("task-received", "r", 5, 5, name="app.flaky"),
        task_event("task-started", "r", 6, 6),
        task_event("task-failed", "r", 8, 7, exception="ValueError('boom')"),
    ]
    timeline = build_timeline("r", events)
    assert timeline.phases == {"queued": 2.0, "waiting": 2.0, "running": 4.0}
    assert timeline.state == "FAILURE"


def test_a_timeline_puts_events_that_arrived_late_in_time_order() -> None:
    sent, received, started, succeeded = lifecycle("a")
    timeline = build_timeline("a", [sent, started, succeeded, received])
    assert [s.event for s in timeline.steps] == [sent, received, started, succeeded]
    assert timeline.state == "SUCCESS"


def build(events: list[dict[str, Any]]) -> StateBuilder:
    builder = StateBuilder()
    for event in events:
        builder.feed(event, received_at=event["timestamp"])
    return builder


def test_the_summary_counts_tasks_by_state_and_name_and_lists_failures() -> None:
    events = (
        lifecycle("a")
        + lifecycle("b", name="app.boom", end="task-failed", exception="ValueError('boom')")
        + lifecycle("c")[:2]
    )
    summary = summarise(build(events).state, at=T0 + 10, stuck_after=60)
    assert summary.by_state == {"FAILURE": 1, "RECEIVED": 1, "SUCCESS": 1}
    assert summary.by_name == {"app.add": {"RECEIVED": 1, "SUCCESS": 1}, "app.boom": {"FAILURE": 1}}
    (failure,) = summary.failures
    assert (failure.task_id, failure.name, failure.exception, failure.worker) == (
        "b",
        "app.boom",
        "ValueError('boom')",
        "w1@h",
    )
    assert summary.stuck == []
    assert summary.events == 10


def test_tasks_left_received_or_started_past_the_threshold_are_stuck() -> None:
    events = lifecycle("started")[:3] + lifecycle("received")[:2] + lifecycle("done")
    summary = summarise(build(events).state, at=T0 + 120, stuck_after=60)
    assert [(s.task_id, s.state) for s in summary.stuck] == [
        ("received", "RECEIVED"),
        ("started", "STARTED"),
    ]
    assert summary.stuck[1].seconds == 120 - 0.75
    assert summarise(build(events).state, at=T0 + 30, stuck_after=60).stuck == []


def test_workers_are_alive_until_their_heartbeats_expire() -> None:
    beat = {
        "type": "worker-heartbeat",
        "hostname": "w1@h",
        "timestamp": T0,
        "freq": 2.0,
        "utcoffset": 0,
        "pid": 1,
        "clock": 1,
        "active": 0,
        "processed": 0,
    }
    state = build([beat]).state
    assert summarise(state, at=T0 + 1, stuck_after=60).workers[0].alive
    (worker,) = summarise(state, at=T0 + 60, stuck_after=60).workers
    assert (worker.hostname, worker.alive, worker.last_heartbeat) == ("w1@h", False, T0)
    text = format_summary(summarise(state, at=T0 + 60, stuck_after=60))
    assert "w1@h offline, last heartbeat 2024-05-01T12:00:00.000Z" in text


def test_feeding_the_state_leaves_the_callers_event_alone() -> None:
    event = lifecycle("a")[0]
    before = dict(event)
    build([event])
    assert event == before


def mixed_events() -> list[dict[str, Any]]:
    """Tasks on two workers whose clocks interleave, a retry, a failure, heartbeats, children
    arriving before and after their parent, a child of a parent never seen."""
    events: list[dict[str, Any]] = []
    for n in range(12):
        host, clock = ("w1@h", 1000 + 10 * n) if n % 2 else ("w2@h", 20 + 10 * n)
        uuid, parent = f"t{n}", {"parent_id": "t3", "root_id": "t3"} if n in (2, 5) else {}
        parent = {"parent_id": "t99", "root_id": "t99"} if n == 8 else parent  # never seen
        steps = lifecycle(
            uuid, name=f"app.n{n % 3}", end="task-failed" if n == 7 else "task-succeeded"
        )
        for i, step in enumerate(steps):
            step.update(hostname=step["hostname"] if i == 0 else host, clock=clock + i)
            step["timestamp"] += n * 0.25
            if step["type"] in ("task-sent", "task-received"):
                step.update(parent)
        if n == 4:
            retried = task_event("task-retried", uuid, 1.0, clock + 3, exception="Retry()")
            steps[3:3] = [{**retried, "hostname": host}, {**steps[1], "clock": clock + 4}]
        events += steps
        events.append({**lifecycle("hb")[0], "type": "worker-heartbeat", "hostname": host})
    # a child that starts before its parent is sent and finishes last
    child = [e for e in events if e.get("uuid") == "t2"]
    rest = [e for e in events if e.get("uuid") != "t2"]
    at = next(i for i, e in enumerate(rest) if e.get("uuid") == "t3")
    return rest[:at] + child[:3] + rest[at:] + child[3:]


def test_the_state_builder_computes_what_a_plain_celery_state_does() -> None:
    """StateBuilder's State keeps no task heap and has faster caches: every task, child,
    worker and the order in which tasks would be forgotten come out the same."""
    max_tasks = 10  # t0 and t1 are forgotten
    builder = StateBuilder(max_tasks)
    plain, receiver = (
        State(max_tasks_in_memory=max_tasks),
        EventReceiver(None, app=Celery(set_as_current=False)),
    )
    for event in mixed_events():
        builder.feed(event, received_at=event["timestamp"])
        _, body = receiver.event_from_message(dict(event), now=lambda at=event["timestamp"]: at)
        plain.event(body)
        for state in (builder.state, plain):  # the materializer looks each task up
            if isinstance(event.get("uuid"), str):
                state.tasks.get(event["uuid"])
    gc.collect()  # forgotten tasks stay among their parent's children until collected
    ours = builder.state
    assert list(ours.tasks) == list(plain.tasks)  # the same tasks, in the same LRU order
    assert {u: task_fields(t) for u, t in ours.tasks.items()} == {
        u: task_fields(t) for u, t in plain.tasks.items()
    }
    assert task_fields(ours.tasks["t3"])["children"] == ["t2", "t5"]
    assert list(ours._tasks_to_resolve) == list(plain._tasks_to_resolve) == ["t99"]
    assert {h: (w.clock, w.heartbeats, w.processed) for h, w in ours.workers.items()} == {
        h: (w.clock, w.heartbeats, w.processed) for h, w in plain.workers.items()
    }
    assert (ours.event_count, ours.task_count) == (plain.event_count, plain.task_count)
    assert list(plain.tasks_by_time()) and not list(ours.tasks_by_time())
    ours.tasks.pop("t9")
    assert "t9" not in ours.tasks and ours.tasks.pop("t9", None) is None


def test_a_task_makes_its_children_set_only_once_it_has_a_child() -> None:
    """StateBuilder's tasks make their children set and serializers on first use (most tasks
    never have a child): a row reads no empty set, and ``as_dict`` still works as Celery's."""
    builder = StateBuilder()
    for event in mixed_events():
        builder.feed(event, received_at=event["timestamp"])
    childless, parent = builder.state.tasks["t0"], builder.state.tasks["t3"]
    assert task_value(childless)["children"] == []
    assert "_children" not in vars(childless)
    assert task_value(parent)["children"] == ["t2", "t5"]
    assert sorted(parent.as_dict()["children"]) == ["t2", "t5"]
    assert childless.as_dict()["children"] == []


def task_fields(task: Any) -> dict[str, Any]:
    skip = ("worker", "root", "parent", "children")
    fields = {name: getattr(task, name) for name in task._fields if name not in skip}
    worker = task.worker.hostname if task.worker else None
    return {**fields, "worker": worker, "children": sorted(c.uuid for c in task.children)}


def test_pending_children_keep_and_drop_what_kombus_lru_cache_does() -> None:
    ours, kombus = _PendingChildren(3), LRUCache(3)
    steps = [("set", "a"), ("set", "b"), ("get", "a"), ("set", "c"), ("set", "d"), ("pop", "c")]
    steps += [("pop", "x"), ("set", "e"), ("get", "a"), ("set", "f"), ("get", "b")]
    for op, key in steps:
        results = []
        for cache in (ours, kombus):
            try:
                if op == "set":
                    cache[key] = key.upper()
                results.append(cache[key] if op == "get" else cache.pop(key) if op == "pop" else 0)
            except KeyError:
                results.append("KeyError")
        assert results[0] == results[1], (op, key)
        assert list(ours) == list(kombus), (op, key)
