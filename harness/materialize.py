"""Materializer processes, their tables, and Celery's State of what a witness queue saw."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import amqp
import orjson

from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.embedded import free_port
from celery_kafka_bridge.materialize.tables import dumps, task_value
from celery_kafka_bridge.reader.audit import StateBuilder
from harness.support import (
    BridgeProcess,
    Names,
    bridge_env,
    events_of,
    poll,
    read_topic,
)


def materialize_env(names: Names, bootstrap: str, tag: str, **overrides: str) -> dict[str, str]:
    """A materializer's environment: its own output topics and lease per ``tag``."""
    prefix = f"{names.topic}.{tag}"
    return bridge_env(
        names,
        bootstrap,
        BRIDGE_NODE_ID=f"{names.node_id}-{tag}",
        BRIDGE_TASKS_TOPIC=f"{prefix}.tasks",
        BRIDGE_WORKERS_TOPIC=f"{prefix}.workers",
        BRIDGE_DERIVED_TOPIC=f"{prefix}.derived",
        BRIDGE_OFFSETS_TOPIC=f"{prefix}.offsets",
        **overrides,
    )


def start_materialize(env: dict[str, str], log_path: Path, wait: bool = True) -> BridgeProcess:
    """A materializer process; with ``wait``, once it holds the lease and loaded the tables."""
    env = {**env, "BRIDGE_HTTP_PORT": str(free_port())}  # standbys side by side
    process = BridgeProcess(env, log_path, command="materialize").start()
    if wait:
        poll(
            lambda: "materialize state loaded" in process.log() or not process.alive(),
            60,
            what="the materializer to load its tables",
        )
        assert process.alive(), process.log()
    return process


def table(bootstrap: str, topic: str) -> dict[str, Any]:
    """A compacted topic's latest value per key (decoded JSON); deleted keys left out."""
    latest: dict[str, bytes | None] = {}
    for record in read_topic(bootstrap, topic, idle=1.0):
        assert record.key is not None
        latest[record.key.decode()] = record.value
    return {key: orjson.loads(value) for key, value in latest.items() if value is not None}


def derived_events(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [record.json() for record in read_topic(bootstrap, topic, idle=1.0)]


def celery_state(messages: Iterable[amqp.Message], bootstrap: str, topic: str) -> dict[str, Any]:
    """Every task's value as Celery's State computes it from the events the witness saw.

    They are fed in the order the events topic holds them: events of one task sent on different
    connections (a pool process's custom events, the worker's buffered task events) can reach
    two queues in different orders, and Celery's State depends on the order. Every witnessed
    event must be in the topic.
    """
    events = events_of(messages)
    where = {
        record.headers["event_id"].decode(): (record.partition, record.offset)
        for record in read_topic(bootstrap, topic, idle=1.0)
    }
    missing = [e for e in events if event_id(e) not in where]
    assert not missing, f"{len(missing)} witnessed events not in {topic}, e.g. {missing[:1]}"
    builder = StateBuilder()
    for event in sorted(events, key=lambda e: where[event_id(e)]):
        builder.feed(event)
    return {
        uuid: orjson.loads(dumps(task_value(task))) for uuid, task in builder.state.tasks.items()
    }
