"""Which partition a record key maps to: one rule for the bridge's producer and its readers."""

from __future__ import annotations

import random
from collections.abc import Sequence

from murmurhash2 import murmurhash2

_KAFKA_SEED = 0x9747B28C
"""The seed of Kafka's murmur2 (Java's ``Utils.murmur2``, aiokafka's ``murmur2``)."""


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """Kafka's default partitioner (aiokafka's and Java's): murmur2 of the key modulo the
    partition count, over ``partitions`` sorted by id; a random partition for no key."""
    if key is None:
        return random.choice(partitions)
    return partitions[(murmurhash2(key, _KAFKA_SEED) & 0x7FFFFFFF) % len(partitions)]
