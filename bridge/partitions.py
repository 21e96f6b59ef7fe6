"""Which partition a record key maps to: one rule for the bridge's producer and its readers."""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=4096)
def _hash(key: bytes) -> int:
    """murmur2 is pure Python in aiokafka; a task's several events, which arrive within
    seconds of each other, share one key (4,096 keys: about 1 MB)."""
    return int(murmur2(key)) & 0x7FFFFFFF


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """Kafka's default partitioner (aiokafka's and Java's): murmur2 of the key modulo the
    partition count, over ``partitions`` sorted by id; a random partition for no key."""
    if key is None:
        return random.choice(partitions)
    return partitions[_hash(key) % len(partitions)]
