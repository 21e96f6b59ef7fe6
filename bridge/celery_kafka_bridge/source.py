"""What every source offers the pipeline: deliveries that carry their ack, handed off in batches
from a thread of the source's own, and acks coming back to that thread in batches.

A source (`amqp.source.AmqpSource`, `redis.source.RedisSource`) subclasses `SourceThread` and
implements `_run`: connect, consume, call `_deliver` per message and `_hand_off` per batch, and
take what `_take_acks` returns on its own thread.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from celery_kafka_bridge.acks import AckOp
from celery_kafka_bridge.codec import Envelope


@dataclass(slots=True)
class Delivery:
    """One broker message; ``generation`` names the session its tag belongs to, and the tag is
    what the pipeline acks once Kafka has every record of the message."""

    generation: int
    tag: int
    envelope: Envelope
    redelivered: bool


class SourceListener(Protocol):
    """Receives what the source thread sees; each method is called on the source thread."""

    def on_attached(self, generation: int) -> None: ...
    def on_detached(self, generation: int) -> None: ...
    def on_deliveries(self, batch: list[Delivery]) -> None: ...
    def on_fatal(self, exc: BaseException) -> None: ...


class SourceThread:
    """A source's thread, its stop signals and the hand-offs to and from the event loop."""

    _listener: SourceListener
    thread_name = "source"

    def __init__(self) -> None:
        self._acks: deque[tuple[int, list[AckOp], int]] = deque()
        self._closed = threading.Event()
        self._stop_consuming = threading.Event()
        self._generation = 0
        self._batch: list[Delivery] = []
        self._handed_off = 0  # batches handed to the event loop (written by this thread only)
        self._processed = 0  # of those, how many it has processed (written by the loop only)
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self, listener: SourceListener) -> None:
        """Connect and consume on the source thread, reporting to ``listener``."""
        self._listener = listener
        self._thread.start()

    def stop_consuming(self) -> None:
        """Take no new messages; acks are still applied until `close`."""
        self._stop_consuming.set()

    def batch_processed(self) -> None:
        """The event loop is done with a handed-off batch (called on the loop thread)."""
        self._processed += 1

    def post_acks(self, generation: int, ops: list[AckOp], acked_through: int) -> None:
        """Queue acks for the source thread (thread-safe); stale generations are dropped there.
        ``acked_through``: every delivery up to this tag is acked once ``ops`` are applied."""
        self._acks.append((generation, ops, acked_through))

    def close(self, timeout: float = 10.0) -> None:
        """Apply the acks already posted and disconnect (unacked messages are the broker's)."""
        self._closed.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake at once when the source is closed."""
        self._closed.wait(seconds)

    @property
    def _loop_idle(self) -> bool:
        """The event loop has processed every batch handed to it."""
        return self._processed == self._handed_off

    def _hand_off(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._handed_off += 1
            self._listener.on_deliveries(batch)

    def _take_acks(self) -> list[tuple[list[AckOp], int]]:
        """The acks posted for the current generation, in order (older ones are dropped)."""
        acks, taken = self._acks, []
        while acks:
            generation, ops, acked_through = acks.popleft()
            if generation == self._generation:
                taken.append((ops, acked_through))
        return taken
