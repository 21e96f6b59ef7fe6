"""Which AMQP deliveries may be acked: the completed prefix, never past a gap."""

from __future__ import annotations

from collections import deque
from typing import Any

AckOp = tuple[int, bool]
"""``(delivery_tag, multiple)`` as passed to ``basic_ack``."""


class AckTracker:
    """Deliveries of one channel, in the order they arrived, and which of them Kafka confirmed.

    A multiple-ack also acks every earlier unacked delivery on the channel, so it is used only
    while the acked tags form an unbroken run 1..n. If a tag never reached the tracker (lost on
    the way), the run is broken: from then on each delivery is acked on its own, and the lost one
    stays unacked until RabbitMQ redelivers it.
    """

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._last_acked = 0
        self._unbroken = True
        self.acked_through = 0
        """Every delivery up to this tag is acked: the end of the unbroken run."""

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, tag: int) -> None:
        """A delivery arrived; it blocks acks of later ones until it completes."""
        self._pending.append(tag)

    def complete(self, tag: int) -> None:
        """Every record of this delivery is in Kafka."""
        self._done.add(tag)

    def take_acks(self) -> tuple[list[AckOp], int]:
        """The acks that are safe now, in order, and how many deliveries they cover."""
        ops: list[AckOp] = []
        count = 0
        run_end = 0
        pending, done = self._pending, self._done
        while pending and pending[0] in done:
            tag = pending.popleft()
            done.discard(tag)
            count += 1
            if self._unbroken and tag == self._last_acked + 1:
                run_end = tag
            else:
                self._unbroken = False
                ops.append((tag, False))
            self._last_acked = tag
        if run_end:
            ops.insert(0, (run_end, True))
            self.acked_through = run_end
        return ops, count


class SessionTags:
    """A session's deliveries over all its channels, numbered 1, 2, ... in arrival order: the
    tags the pipeline sees. Acks of those are applied as each channel's own delivery tags."""

    def __init__(self) -> None:
        self._unacked: deque[tuple[Any, int] | None] = deque()
        """(channel, its delivery tag) of every tag from ``_first`` on; None once acked alone."""
        self._first = 1
        self.last = 0
        """The session tag of the last delivery (0: none yet)."""

    def add(self, channel: Any, channel_tag: int) -> int:
        """A delivery arrived on ``channel``; its session tag."""
        self._unacked.append((channel, channel_tag))
        self.last += 1
        return self.last

    def ack(self, ops: list[AckOp]) -> None:
        """Apply `AckTracker` ops: a multiple-ack becomes one multiple-ack per channel."""
        unacked = self._unacked
        for tag, multiple in ops:
            if multiple:
                last: dict[Any, int] = {}
                for _ in range(tag - self._first + 1):
                    delivered = unacked.popleft()
                    if delivered is not None:
                        last[delivered[0]] = delivered[1]
                self._first = tag + 1
                for channel, channel_tag in last.items():
                    channel.basic_ack(channel_tag, multiple=True)
                continue
            index = tag - self._first
            delivered = unacked[index]
            assert delivered is not None, f"delivery {tag} acked twice"
            delivered[0].basic_ack(delivered[1])
            unacked[index] = None
            while unacked and unacked[0] is None:
                unacked.popleft()
                self._first += 1
