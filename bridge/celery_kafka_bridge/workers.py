"""What each Celery worker was last heard doing: written by the pipeline for every event, read
by the watchdog and exported as the per-worker last-event metric."""

from __future__ import annotations

from celery_kafka_bridge.codec import EventRecord

WORKER_TTL_SECONDS = 3600.0
"""A worker not heard from for this long is forgotten (autoscaled hosts come and go)."""

_TASK_EVENT_PREFIX = "task-"
_HEARTBEATS = frozenset({"worker-online", "worker-heartbeat"})


class WorkerActivity:
    """Per worker hostname: when it was last heard from, its last task event and its latest
    heartbeat. Only the event loop thread touches it."""

    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}
        """Wall-clock time of the last event per worker hostname."""
        self.last_task_event: dict[str, float] = {}
        """Wall-clock time of the last task-* event per worker hostname."""
        self.heartbeats: dict[str, tuple[float, bytes]] = {}
        """The latest worker-online/heartbeat per hostname (received at, body), parsed only by
        the watchdog."""

    def observe(self, record: EventRecord, received_at: float) -> None:
        hostname = record.hostname
        if hostname is None:
            return
        self.last_seen[hostname] = received_at
        if record.event_type in _HEARTBEATS:
            self.heartbeats[hostname] = (received_at, record.value)
        elif record.event_type.startswith(_TASK_EVENT_PREFIX):
            self.last_task_event[hostname] = received_at

    def forget(self, now: float) -> None:
        """Drop workers not heard from for `WORKER_TTL_SECONDS`."""
        for hostname, seen in list(self.last_seen.items()):
            if now - seen > WORKER_TTL_SECONDS:
                del self.last_seen[hostname]
                self.heartbeats.pop(hostname, None)
                self.last_task_event.pop(hostname, None)
