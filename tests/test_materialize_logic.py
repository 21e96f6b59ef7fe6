"""The materializer's pure parts: completeness reconciliation, derived findings, table records."""

from __future__ import annotations

import time
from typing import Any

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.materialize.derived import Claim, reconcile, stuck_threshold
from celery_kafka_bridge.materialize.engine import Engine
from celery_kafka_bridge.materialize.slices import Slice
from celery_kafka_bridge.materialize.tables import Tally
from celery_kafka_bridge.reader.events import Event

HOST = "w@h"


def tally_at(clock: int, processed: int, started: list[int]) -> Tally:
    return Tally(pid=7, clock=clock, processed=processed, at=0.0, started={7: started})


def test_a_claim_matching_the_task_started_events_seen_reports_nothing_and_moves_the_base() -> None:
    tally = tally_at(10, 4, [11, 13, 20])
    assert reconcile(HOST, tally, Claim(7, 15, 6, 1.0), 1.0) is None
    assert (tally.clock, tally.processed, tally.started) == (15, 6, {7: [20]})


def test_a_claim_counting_more_than_was_seen_reports_the_gap_with_its_evidence() -> None:
    tally = tally_at(10, 4, [11])
    found = reconcile(HOST, tally, Claim(7, 30, 9, 2.0), 2.0)
    assert found is not None
    assert found.type == "events-missing"
    assert found.value["missing"] == 4
    assert found.value["evidence"]["processed_delta"] == 5
    assert found.value["evidence"]["task_started_seen"] == 1
    assert tally.missing == 4
    again = reconcile(HOST, tally_at(10, 4, [11]), Claim(7, 30, 9, 2.0), 3.0)
    assert again is not None
    assert again.value["id"] == found.value["id"]  # found again after a restart: the same id


def test_a_claim_from_before_the_base_changes_nothing() -> None:
    tally = tally_at(30, 9, [31])
    assert reconcile(HOST, tally, Claim(7, 20, 5, 1.0), 1.0) is None
    assert (tally.clock, tally.processed, tally.started) == (30, 9, {7: [31]})


def test_a_restarted_worker_becomes_the_new_base_unchecked() -> None:
    tally = tally_at(30, 9, [31])
    assert reconcile(HOST, tally, Claim(8, 2, 0, 1.0), 1.0) is None
    assert (tally.pid, tally.clock, tally.processed, tally.started) == (8, 2, 0, {8: []})


def test_stuck_thresholds_match_the_first_pattern_in_order() -> None:
    thresholds = Config.load(stuck_after="reports.*=60, *=3600").stuck_thresholds
    assert stuck_threshold("reports.daily", thresholds) == 60
    assert stuck_threshold("add", thresholds) == 3600
    assert stuck_threshold("add", Config.load(stuck_after="reports.*=60").stuck_thresholds) is None


def event(partition: int, offset: int, **data: Any) -> Event:
    return Event(
        data=data,
        value=b"",
        event_id=f"{partition}-{offset}",
        partition=partition,
        offset=offset,
        timestamp_ms=int(data["timestamp"] * 1000),
        received_at=data["timestamp"],
    )


def test_a_finished_task_is_deleted_from_the_table_after_the_tombstone_time() -> None:
    engine = Engine([("*", 3600.0)], tombstone_after=60.0, grace=1.0, max_tasks=100)
    now = time.time()
    common = {"uuid": "t1", "hostname": HOST, "clock": 1, "pid": 7}
    engine.apply(event(0, 0, type="task-received", name="add", timestamp=now - 100, **common))
    engine.apply(event(0, 1, type="task-succeeded", result="2", timestamp=now - 90, **common))
    engine.advance({0: (2, int((now - 90) * 1000))})
    first = engine.take(now - 89)
    assert first.tasks["t1"][0] is not None
    assert first.positions == {0: 2}
    engine.check(now, caught_up=True)
    assert engine.take(now).tasks == {"t1": (None, [])}
    assert "t1" not in engine.state.tasks


def test_task_started_events_read_before_their_workers_first_heartbeat_still_count() -> None:
    """A worker's task events and heartbeats sit in different partitions: any may come first."""
    engine = Engine([], tombstone_after=60.0, grace=0.0, max_tasks=100)
    now = time.time()
    worker = {"hostname": HOST, "pid": 7}
    for clock in (3, 4):
        engine.apply(
            event(
                1,
                clock,
                type="task-started",
                uuid=f"t{clock}",
                clock=clock,
                timestamp=now,
                **worker,
            )
        )
    engine.apply(
        event(0, 0, type="worker-online", clock=1, processed=0, freq=2.0, timestamp=now, **worker)
    )
    engine.apply(
        event(
            0, 1, type="worker-heartbeat", clock=5, processed=2, freq=2.0, timestamp=now, **worker
        )
    )
    engine.check(now, caught_up=False)
    assert engine.take(now).derived == []
    engine.apply(
        event(
            0, 2, type="worker-heartbeat", clock=9, processed=5, freq=2.0, timestamp=now, **worker
        )
    )
    engine.check(now, caught_up=False)
    (found,) = engine.take(now).derived
    assert (found.type, found.value["missing"]) == ("events-missing", 3)


def test_a_slice_decodes_its_own_tasks_every_worker_event_and_for_slice_0_task_started() -> None:
    first, second = Slice(0, 2), Slice(1, 2)
    started, sent = {"event_type": b"task-started"}, {"event_type": b"task-sent"}
    heartbeat, custom = {"event_type": b"worker-heartbeat"}, {"event_type": b"app-custom"}
    assert first.owns(0) and first.owns(2) and second.owns(3) and not second.owns(2)
    assert second.reads(1, sent) and not second.reads(0, sent) and not second.reads(0, started)
    assert first.reads(1, started) and not first.reads(1, sent)
    assert all(
        s.reads(p, h) for s in (first, second) for p in range(4) for h in (heartbeat, custom)
    )
    assert all(s.reads(p, {}) for s in (first, second) for p in range(4))  # no header: decode
    assert Slice().reads(3, sent) and str(second) == "1-of-2"


def test_slices_split_the_tasks_and_only_slice_0_keeps_the_workers() -> None:
    """Two engines, one per slice, fed the same stream: each task's row comes from the slice
    owning its partition, equal to one engine's; worker rows and tallies only from slice 0."""
    now = time.time()
    worker = {"hostname": HOST, "pid": 7}
    stream = [
        event(0, 0, type="worker-online", clock=1, processed=0, freq=2.0, timestamp=now, **worker)
    ]
    for partition, uuid in ((0, "a"), (1, "b"), (2, "c"), (3, "d")):
        for offset, kind in enumerate(("task-received", "task-started", "task-succeeded"), 1):
            stream.append(
                event(
                    partition,
                    offset,
                    type=kind,
                    uuid=uuid,
                    name="add",
                    clock=offset + 1,
                    timestamp=now,
                    **worker,
                )
            )
    whole = Engine([], tombstone_after=60.0, grace=0.0, max_tasks=100)
    slices = [
        Engine([], tombstone_after=60.0, grace=0.0, max_tasks=100, slice_=Slice(i, 2))
        for i in range(2)
    ]
    for engine in (whole, *slices):
        for e in stream:
            engine.apply(e)
    expected = whole.take(now)
    first, second = (engine.take(now) for engine in slices)
    assert set(first.tasks) == {"a", "c"} and set(second.tasks) == {"b", "d"}
    assert {**first.tasks, **second.tasks} == expected.tasks
    assert first.workers == expected.workers and second.workers == {}
    tallies = [engine.books[HOST].tally.started for engine in (whole, *slices)]
    assert tallies[0] == tallies[1] == {7: [3, 3, 3, 3]} and tallies[2] == {}
