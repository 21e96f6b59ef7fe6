"""Which replica writes each event, agreed through Redis itself.

Every replica receives every publish. Each tries to claim the message (``SET key replica NX PX
ttl``); the one that wins writes it to Kafka and, once Kafka confirmed it, marks it done
(``SET key done PX 4*ttl``). The others keep the message on standby until the claim could have
expired: done, they forget it; the claim gone unconfirmed (its holder died or lost Redis), they
claim it themselves and write it. So each event is normally written once, and a replica's death
loses nothing that another replica received. One round trip per batch for each step.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from enum import Enum
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")

DONE = b"done"
_DONE_TTL_FACTOR = 4
_STANDBY_MARGIN_SECONDS = 0.5
"""Past the claim's expiry, so the holder's confirmation (or the expiry) has reached Redis."""


class State(Enum):
    DONE = "done"
    FREE = "free"
    """Claimed by nobody: the claim expired unconfirmed."""
    HELD = "held"


class Claims:
    """Claims of one bridge deployment (``namespace``) by one replica."""

    def __init__(self, client: Any, namespace: str, replica: str, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = f"{namespace}/claim/".encode()
        self._replica = replica.encode()
        self.ttl_ms = max(1, int(ttl_seconds * 1000))

    def claim(self, ids: Sequence[bytes]) -> list[bool]:
        """Try to claim each message; True where this replica won it."""
        pipe = self._client.pipeline(transaction=False)
        for message_id in ids:
            pipe.set(self._prefix + message_id, self._replica, nx=True, px=self.ttl_ms)
        return [bool(won) for won in pipe.execute()]

    def confirm(self, ids: Sequence[bytes]) -> None:
        """Kafka has these messages: no other replica writes them."""
        pipe = self._client.pipeline(transaction=False)
        for message_id in ids:
            pipe.set(self._prefix + message_id, DONE, px=self.ttl_ms * _DONE_TTL_FACTOR)
        pipe.execute()

    def states(self, ids: Sequence[bytes]) -> list[State]:
        values = self._client.mget([self._prefix + message_id for message_id in ids])
        return [
            State.FREE if value is None else State.DONE if value == DONE else State.HELD
            for value in values
        ]


class Standby(Generic[Item]):
    """Messages another replica claimed, kept until its claim could have expired."""

    def __init__(self, ttl_seconds: float) -> None:
        self._wait = ttl_seconds + _STANDBY_MARGIN_SECONDS
        self._heap: list[tuple[float, int, bytes, Item]] = []
        self._order = itertools.count()  # ties keep arrival order, and items are never compared

    def __len__(self) -> int:
        return len(self._heap)

    def keep(self, message_id: bytes, item: Item, now: float) -> None:
        heapq.heappush(self._heap, (now + self._wait, next(self._order), message_id, item))

    def due(self, now: float) -> list[tuple[bytes, Item]]:
        """The messages whose claims could have expired by ``now``, oldest first."""
        heap, taken = self._heap, []
        while heap and heap[0][0] <= now:
            _, _, message_id, item = heapq.heappop(heap)
            taken.append((message_id, item))
        return taken
