"""Evidence of what pub/sub dropped: gaps in each worker's heartbeats.

A worker sends a heartbeat every ``freq`` seconds (2 by default) with ``processed``, the tasks it
has received so far. The replica that writes a heartbeat swaps it with the worker's previous one
kept in Redis, so the comparison survives every replica being down. A gap of more than two
periods means no replica heard that worker for that long: its heartbeats in between are counted
missed, and the tasks it received meanwhile unheard (their events may be lost). A worker that
restarted (``processed`` went down) or said goodbye (worker-offline) starts afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson

from celery_kafka_bridge.codec import Envelope

log = logging.getLogger(__name__)

_KEEP_SECONDS = 7 * 24 * 3600
_DEFAULT_FREQ = 2.0


@dataclass(frozen=True, slots=True)
class Gap:
    seconds: float
    missed_heartbeats: int
    unheard_tasks: int


def gap_between(previous: bytes, timestamp: float, freq: float, processed: int) -> Gap | None:
    """The gap since the ``previous`` heartbeat (``b"<timestamp> <processed>"``), if one."""
    try:
        before, before_processed = (float(part) for part in previous.split())
    except ValueError:
        return None
    elapsed = timestamp - before
    if elapsed <= 2 * freq or processed < before_processed:
        return None
    return Gap(elapsed, round(elapsed / freq) - 1, int(processed - before_processed))


class HeartbeatGaps:
    """Finds gaps in the heartbeats this replica writes, and counts them."""

    def __init__(self, namespace: str) -> None:
        self._prefix = f"{namespace}/heartbeat/"
        self.missed = 0
        self.unheard_tasks = 0
        self.gaps = 0

    def observe(self, client: Any, envelope: Envelope) -> None:
        """Look at an event this replica writes (only worker heartbeats and goodbyes matter)."""
        if envelope.routing_key not in ("worker.heartbeat", "worker.offline"):
            return
        try:
            event = orjson.loads(envelope.body)
            key = self._prefix + str(event["hostname"])
            if envelope.routing_key == "worker.offline":
                client.delete(key)
                return
            timestamp = float(event["timestamp"])
            freq = float(event.get("freq") or _DEFAULT_FREQ)
            processed = int(event.get("processed") or 0)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not a heartbeat the codec accepts either: it is dead-lettered there
        previous = client.set(key, f"{timestamp} {processed}", ex=_KEEP_SECONDS, get=True)
        gap = gap_between(previous, timestamp, freq, processed) if previous else None
        if gap is not None:
            self.gaps += 1
            self.missed += gap.missed_heartbeats
            self.unheard_tasks += gap.unheard_tasks
            log.warning(
                "no replica heard worker %s for %.1fs: %d heartbeats missed, the events of up "
                "to %d tasks it received meanwhile may be lost",
                event["hostname"],
                gap.seconds,
                gap.missed_heartbeats,
                gap.unheard_tasks,
            )
