"""celery-kafka-bridge: every Celery monitoring event into a durable Kafka topic, at-least-once.

The daemon is `run_bridge` (or the ``celery-kafka-bridge run`` command) with a `Config`; the topic
readers (`EventStream`, `read_events`) are the library other teams use to consume the topic.
"""

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.reader import ClockOrder, Dedup, Event, EventStream, Scan, read_events
from celery_kafka_bridge.runner import run_bridge

__all__ = [
    "ClockOrder",
    "Config",
    "Dedup",
    "Event",
    "EventStream",
    "Scan",
    "read_events",
    "run_bridge",
]
