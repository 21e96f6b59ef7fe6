"""The ack bookkeeping's own cost per message, in this process: the pipeline's ack tracker and
the AMQP session's tags (`acks`), every message completed in arrival order and acked with one
multiple-ack per quarter of the prefetch, as the bridge acks contiguous runs."""

from __future__ import annotations

import time

from celery_kafka_bridge.acks import AckTracker, SessionTags

_ROUNDS = 3


class _Channel:
    """Takes acks and does nothing: what is measured is the bookkeeping before them."""

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        """Nothing to send."""


def ack_cost(messages: int, prefetch: int) -> float:
    """Microseconds per message, best of `_ROUNDS` rounds."""
    channel, every = _Channel(), max(1, prefetch // 4)

    def seconds() -> float:
        tracker, tags = AckTracker(), SessionTags()
        started = time.perf_counter()
        for index in range(1, messages + 1):
            tag = tags.add(channel, index)
            tracker.add(tag)
            tracker.complete(tag)
            if index % every == 0:
                tags.ack(tracker.take_acks()[0])
        return time.perf_counter() - started

    return round(min(seconds() for _ in range(_ROUNDS)) / messages * 1e6, 3)
