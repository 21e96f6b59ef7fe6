"""Only the contiguous prefix of Kafka-confirmed deliveries is acked, never past a gap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from celery_kafka_bridge.acks import AckTracker


def tracker_with(tags: list[int]) -> AckTracker:
    tracker = AckTracker()
    for tag in tags:
        tracker.add(tag)
    return tracker


def test_a_completed_prefix_is_acked_with_one_multiple_ack() -> None:
    tracker = tracker_with([1, 2, 3, 4])
    for tag in (1, 2, 3):
        tracker.complete(tag)
    assert tracker.take_acks() == ([(3, True)], 3)
    assert tracker.take_acks() == ([], 0)


def test_a_later_completion_waits_for_the_earlier_delivery() -> None:
    tracker = tracker_with([1, 2, 3])
    tracker.complete(3)
    tracker.complete(2)
    assert tracker.take_acks() == ([], 0)
    tracker.complete(1)
    assert tracker.take_acks() == ([(3, True)], 3)


def test_a_tag_lost_on_the_way_is_never_swept_up_by_a_multiple_ack() -> None:
    tracker = tracker_with([1, 2, 4, 5])  # 3 never reached the tracker
    for tag in (1, 2, 4, 5):
        tracker.complete(tag)
    assert tracker.take_acks() == ([(2, True), (4, False), (5, False)], 4)
    assert tracker.acked_through == 2, "3 is unacked, so nothing past 2 is acked through"
    tracker.add(6)
    tracker.complete(6)
    assert tracker.take_acks() == ([(6, False)], 1)


@given(st.permutations(list(range(1, 30))), st.integers(0, 29))
def test_every_delivery_is_acked_exactly_once_and_only_after_completion(
    order: list[int], lost: int
) -> None:
    tags = [t for t in range(1, 30) if t != lost]
    tracker = tracker_with(tags)
    completed: set[int] = set()
    covered: list[int] = []
    for tag in (t for t in order if t != lost):
        tracker.complete(tag)
        completed.add(tag)
        ops, _ = tracker.take_acks()
        for acked, multiple in ops:
            span = range((max(covered) if covered else 0) + 1, acked + 1) if multiple else [acked]
            assert lost not in span, "a multiple ack swept up a delivery the tracker never saw"
            assert set(span) <= completed
            covered.extend(span)
        assert set(range(1, tracker.acked_through + 1)) <= set(covered)
    assert sorted(covered) == tags
    assert tracker.acked_through == (lost - 1 if lost else 29)
