"""The bridge's partitioner is Kafka's default one, bit for bit."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from celery_kafka_bridge.kafka.partitions import partition_for


@given(key=st.binary(max_size=200), count=st.integers(min_value=1, max_value=64))
def test_partition_matches_kafkas_default_partitioner(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert partition_for(key, partitions) == expected


@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_java_client_partitions(key: bytes, partition: int) -> None:
    """Partitions Kafka's Java client picks among 1,000 (kafka-python's compatibility table)."""
    assert partition_for(key, range(1000)) == partition


def test_no_key_picks_one_of_the_partitions() -> None:
    assert {partition_for(None, [3, 5]) for _ in range(200)} == {3, 5}
