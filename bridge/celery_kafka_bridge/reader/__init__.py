"""Reading the topic back: the consumer library (events, and the materializer's task table) and
the `tail`/`timeline`/`replay`/`state` commands built on it."""

from celery_kafka_bridge.reader.events import ClockOrder, Dedup, Event, EventFields
from celery_kafka_bridge.reader.stream import (
    EventStream,
    Scan,
    ScanStats,
    TopicNotFound,
    read_events,
)
from celery_kafka_bridge.reader.tables import fetch_task, lookup_task, read_table
from celery_kafka_bridge.reader.timeparse import parse_duration, parse_time

__all__ = [
    "ClockOrder",
    "Dedup",
    "Event",
    "EventFields",
    "EventStream",
    "Scan",
    "ScanStats",
    "TopicNotFound",
    "fetch_task",
    "lookup_task",
    "parse_duration",
    "parse_time",
    "read_events",
    "read_table",
]
