"""Reading the topic back: the consumer library and the `tail`/`timeline`/`replay`/`state`
commands built on it."""

from celery_kafka_bridge.reader.events import ClockOrder, Dedup, Event, EventFields
from celery_kafka_bridge.reader.stream import (
    EventStream,
    Scan,
    ScanStats,
    TopicNotFound,
    read_events,
)
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
    "parse_duration",
    "parse_time",
    "read_events",
]
