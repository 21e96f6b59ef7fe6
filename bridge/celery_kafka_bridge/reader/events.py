"""An event as read from the topic, and the pure bookkeeping over a stream of them."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

EventFields = Mapping[str, Any]
"""An event's fields as Celery sent them (the decoded record value)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event from the topic: the event as Celery's receiver reads it, and where it was
    stored."""

    data: dict[str, Any]
    """The fields as kombu decodes them: type markers turned back (bytes, datetime...), NaN
    and integers of any size where the record says ``json_strict: false``."""
    value: bytes
    """The record value exactly as stored (the worker's JSON)."""
    event_id: str
    partition: int
    offset: int
    timestamp_ms: int
    """The Kafka record timestamp (when the bridge produced it)."""
    received_at: float | None
    """When the bridge received the event from RabbitMQ (epoch seconds), if recorded."""
    serializer: str = "json"
    """What carries ``data`` unchanged to a Celery receiver: ``json`` (the stored value), or
    ``msgpack`` when it holds msgpack ext types or maps with keys that are not strings."""

    def json_line(self) -> bytes:
        """The value on one line. A valid JSON value holds line breaks only as whitespace
        (inside strings they are escaped), so they become spaces."""
        return self.value.replace(b"\r", b" ").replace(b"\n", b" ")

    @property
    def type(self) -> str:
        return str(self.data["type"])

    @property
    def task_id(self) -> str | None:
        value = self.data.get("uuid")
        return value if isinstance(value, str) else None

    @property
    def hostname(self) -> str | None:
        value = self.data.get("hostname")
        return value if isinstance(value, str) else None

    @property
    def clock(self) -> int | None:
        value = self.data.get("clock")
        return value if isinstance(value, int) else None

    @property
    def timestamp(self) -> float:
        """The event's own timestamp (sender clock), else the record's."""
        value = self.data.get("timestamp")
        return float(value) if isinstance(value, int | float) else self.timestamp_ms / 1000


class Dedup:
    """Remembers the most recent ``capacity`` event ids (least recently seen forgotten first)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first(self, event_id: str) -> bool:
        """True the first time an id is offered (within memory), False for a repeat."""
        if event_id in self._seen:
            self._seen.move_to_end(event_id)
            return False
        self._seen[event_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)


class ClockOrder:
    """Holds back up to ``window`` events and releases each task's events in clock order.

    It releases the oldest held event, or in its place the earliest-clocked held event of the
    same task from the same sender (``hostname`` and ``pid``: each process keeps its own clock,
    so a client's task-sent and a pool child's custom events are not comparable with the
    worker's); events without a task id or clock are released as they come.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._held: deque[Event] = deque()

    def push(self, event: Event) -> list[Event]:
        """Hold ``event``; return the events that leave the window, in release order."""
        self._held.append(event)
        released = []
        while len(self._held) > self.window:
            released.append(self._release())
        return released

    def flush(self) -> list[Event]:
        """Release everything held (the stream went idle or ended)."""
        return [self._release() for _ in range(len(self._held))]

    def _release(self) -> Event:
        head = self._held[0]
        if head.task_id is None or head.clock is None:
            return self._held.popleft()
        sender = (head.task_id, head.hostname, head.data.get("pid"))
        same_task = (
            i
            for i, e in enumerate(self._held)
            if (e.task_id, e.hostname, e.data.get("pid")) == sender and e.clock is not None
        )
        index = min(same_task, key=lambda i: (self._held[i].clock, i))
        event = self._held[index]
        del self._held[index]
        return event
