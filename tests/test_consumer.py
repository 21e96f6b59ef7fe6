"""The consumer API: events off the topic, duplicates dropped, optional clock order."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.reader.events import ClockOrder, Dedup, Event
from celery_kafka_bridge.reader.stream import (
    UNTIL_MARGIN_SECONDS,
    EventStream,
    Scan,
    TopicNotFound,
    partition_for,
    read_events,
)
from harness.support import Names, poll, read_topic
from harness.topic_writer import encode, task_events, write_records, write_records_async


def event(task_id: str | None, clock: int | None, offset: int, hostname: str = "w@h") -> Event:
    data: dict[str, Any] = {"type": "task-x", "hostname": hostname}
    if task_id is not None:
        data["uuid"] = task_id
    if clock is not None:
        data["clock"] = clock
    return Event(data, b"{}", f"id{offset}", 0, offset, 0, None)


def test_dedup_forgets_the_least_recently_seen_id_beyond_its_capacity() -> None:
    dedup = Dedup(2)
    assert [dedup.first(i) for i in ("a", "b", "a", "c", "a", "b")] == [
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    assert len(dedup) == 2


def test_clock_order_sorts_each_tasks_events_and_keeps_the_rest_in_place() -> None:
    order = ClockOrder(window=10)
    arrivals = [
        event("a", 3, 0),
        event(None, None, 1),
        event("b", 1, 2),
        event("a", 1, 3),
        event("a", 2, 4),
        event("b", 2, 5),
    ]
    released = [e for a in arrivals for e in order.push(a)] + order.flush()
    assert [(e.task_id, e.clock) for e in released] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        (None, None),
        ("b", 1),
        ("b", 2),
    ]


def test_clock_order_compares_clocks_of_one_sender_only() -> None:
    order = ClockOrder(window=10)
    arrivals = [
        event("a", 900, 0, hostname="client@h"),  # task-sent, by the client's own clock
        event("a", 13, 1),
        event("a", 12, 2),
    ]
    released = [e for a in arrivals for e in order.push(a)] + order.flush()
    assert [(e.hostname, e.clock) for e in released] == [
        ("client@h", 900),
        ("w@h", 12),
        ("w@h", 13),
    ]


def test_clock_order_holds_no_more_than_its_window() -> None:
    order = ClockOrder(window=2)
    assert order.push(event("a", 3, 0)) == []
    assert order.push(event("a", 2, 1)) == []
    (first,) = order.push(event("a", 1, 2))
    assert first.clock == 1


def test_the_partition_of_a_task_is_where_the_bridges_producer_put_it(
    kafka: EmbeddedKafka, names: Names
) -> None:
    records = [encode(e) for i in range(12) for e in task_events(f"task-{i}")[:1]]
    write_records(kafka.bootstrap_servers, names.topic, records)
    stored = read_topic(
        kafka.bootstrap_servers, names.topic, until=lambda r: len(r) == 12, idle=0.2
    )
    assert len({r.partition for r in stored}) > 1
    for record in stored:
        assert record.key is not None
        assert record.partition == partition_for(record.key, [0, 1, 2, 3])


@pytest.mark.parametrize("order_by_clock", [False, True])
async def test_the_async_stream_drops_injected_duplicates_and_keeps_everything_else(
    kafka: EmbeddedKafka, names: Names, order_by_clock: bool
) -> None:
    events = [e for i in range(5) for e in task_events(f"t{i}")]
    records = [encode(e) for e in events]
    duplicates = [records[3], records[0], records[7], records[3]]
    await write_records_async(kafka.bootstrap_servers, names.topic, records + duplicates)

    scan = Scan(
        kafka.bootstrap_servers, names.topic, idle_seconds=0.3, order_by_clock=order_by_clock
    )
    async with EventStream(scan) as stream:
        got = [e async for e in stream]

    assert sorted(e.value for e in got) == sorted(r.value for r in records)
    assert stream.stats.yielded == len(got) == len(records)
    assert stream.stats.duplicates == 4
    assert stream.stats.scanned == 24
    for item in got:
        assert item.data == next(e for e in events if e == item.data)
        assert item.received_at is not None
        assert item.event_id == dict(encode(item.data).headers)["event_id"].decode()


def test_the_sync_helper_reads_a_tasks_partition_only_and_orders_by_clock(
    kafka: EmbeddedKafka, names: Names
) -> None:
    tasks = [task_events(str(uuid.uuid4())) for _ in range(8)]
    target = tasks[0]
    shuffled = [target[2], target[0], target[3], target[1]]
    others = [e for t in tasks[1:] for e in t]
    write_records(kafka.bootstrap_servers, names.topic, [encode(e) for e in shuffled + others])
    key = target[0]["uuid"].encode()  # task events are keyed by task uuid
    same_partition = sum(
        1
        for e in others
        if partition_for(e["uuid"].encode(), [0, 1, 2, 3]) == partition_for(key, [0, 1, 2, 3])
    )

    scan = Scan(
        kafka.bootstrap_servers,
        names.topic,
        task_id=target[0]["uuid"],
        order_by_clock=True,
        idle_seconds=0.3,
    )
    stream = read_events(scan)
    got = [e.data for e in stream]
    assert got == target
    assert [e.data for e in read_events(replace(scan, order_by_clock=False))] == shuffled
    assert len(others) > same_partition  # the other partitions were never read


def test_since_and_until_bound_the_record_time_on_the_client(
    kafka: EmbeddedKafka, names: Names
) -> None:
    early, late = task_events("early"), task_events("late")
    write_records(kafka.bootstrap_servers, names.topic, [encode(e) for e in early])
    boundary = time.time()
    poll(lambda: time.time() > boundary + 0.01, 1)
    write_records(kafka.bootstrap_servers, names.topic, [encode(e) for e in late])

    scan = Scan(kafka.bootstrap_servers, names.topic, since=boundary, idle_seconds=0.3)
    assert [e.data for e in read_events(scan)] == late
    before = replace(scan, since=None, until=boundary)
    assert [e.data for e in read_events(before)] == early


async def test_a_partition_scan_ends_at_its_first_record_well_past_until(
    kafka: EmbeddedKafka, names: Names
) -> None:
    early = [encode(e) for e in task_events("bounded")]
    await write_records_async(kafka.bootstrap_servers, names.topic, early)
    until = time.time()
    later = int((until + 2 * UNTIL_MARGIN_SECONDS) * 1000)
    await write_records_async(kafka.bootstrap_servers, names.topic, early * 5, timestamp_ms=later)

    scan = Scan(kafka.bootstrap_servers, names.topic, task_id="bounded", until=until)
    async with EventStream(replace(scan, idle_seconds=30)) as stream:
        got = [e async for e in stream]
    assert [e.value for e in got] == [r.value for r in early]
    assert stream.stats.scanned == len(early) + 1, "read on past the first late record"


def test_the_readme_example_runs_and_finds_the_failures(kafka: EmbeddedKafka, names: Names) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.S)
    failed = {**task_events("t-failed")[2], "type": "task-failed", "exception": "ZeroDivision"}
    write_records(kafka.bootstrap_servers, names.topic, [encode(failed)])
    code = example.replace("localhost:9092", kafka.bootstrap_servers).replace(
        '"celery.events"', repr(names.topic)
    )
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["t-failed w1@h ZeroDivision"]


def test_a_topic_that_does_not_exist_is_named_once_the_metadata_wait_is_over(
    kafka: EmbeddedKafka, names: Names
) -> None:
    """Asked by metadata of all topics, so the wait does not create the topic either."""
    scan = Scan(kafka.bootstrap_servers, f"{names.topic}-missing", metadata_timeout=0.5)
    with pytest.raises(TopicNotFound, match=f"topic '{names.topic}-missing' not found on "):
        list(read_events(scan))
    with pytest.raises(TopicNotFound):
        list(read_events(scan))  # still missing: the first wait created nothing
