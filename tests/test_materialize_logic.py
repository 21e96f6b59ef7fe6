"""The materializer's pure parts: completeness reconciliation, derived findings, table records."""

from __future__ import annotations

import time
from typing import Any

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.materialize.derived import Claim, reconcile, stuck_threshold
from celery_kafka_bridge.materialize.engine import Engine
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
