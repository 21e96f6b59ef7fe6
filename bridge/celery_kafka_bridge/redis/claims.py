"""Which replica writes each event, agreed through Redis itself.

Every replica receives every publish. One replica holds the lease (`Lease`) and claims each
message as it arrives (``SET key replica NX PX ttl``), writes it to Kafka and, once Kafka confirmed
it, marks it done (``SET key done PX 4*ttl``). The others keep every message on standby until a
claim could have expired: done, they forget it; unclaimed or the claim gone unconfirmed (the
leaseholder died or lost Redis), they claim it themselves and write it. So each event is normally
written once, by one replica in the order Redis delivered it, and a replica's death loses nothing
that another replica received. One round trip per batch for each step.
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


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


_CLAIM = """
local won = {}
for i, key in ipairs(KEYS) do
    won[i] = redis.call('set', key, ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
end
return won
"""
_CONFIRM = """
for _, key in ipairs(KEYS) do
    redis.call('set', key, ARGV[1], 'PX', ARGV[2])
end
return 0
"""
"""One script call per batch instead of a pipeline of SETs: a quarter of the bridge's CPU per
message (bench/redis.py measures it)."""


class Lease:
    """Which replica claims messages as they arrive: the one holding the lease key."""

    def __init__(self, client: Any, namespace: str, replica: str, ttl_seconds: float) -> None:
        self._client = client
        self._key = f"{namespace}/leaseholder"
        self._replica = replica
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def hold(self) -> bool:
        """Renew the lease if this replica holds it, else take it if free; whether it holds it
        now (also after a reconnection, while its lease has not expired)."""
        key, replica = self._key, self._replica
        return bool(self._renew(keys=[key], args=[replica, self._ttl_ms])) or bool(
            self._client.set(key, replica, nx=True, px=self._ttl_ms)
        )

    def release(self) -> None:
        """Give the lease up (stopping), so another replica takes it at once."""
        self._release(keys=[self._key], args=[self._replica])


class Claims:
    """Claims of one bridge deployment (``namespace``) by one replica."""

    def __init__(self, client: Any, namespace: str, replica: str, ttl_seconds: float) -> None:
        self._client = client
        self._prefix = f"{namespace}/claim/".encode()
        self._replica = replica.encode()
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self._claim = client.register_script(_CLAIM)
        self._confirm = client.register_script(_CONFIRM)

    def claim(self, ids: Sequence[bytes]) -> list[bool]:
        """Try to claim each message; True where this replica won it."""
        keys = [self._prefix + message_id for message_id in ids]
        return [bool(won) for won in self._claim(keys=keys, args=[self._replica, self.ttl_ms])]

    def confirm(self, ids: Sequence[bytes]) -> None:
        """Kafka has these messages: no other replica writes them."""
        keys = [self._prefix + message_id for message_id in ids]
        self._confirm(keys=keys, args=[DONE, self.ttl_ms * _DONE_TTL_FACTOR])

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
