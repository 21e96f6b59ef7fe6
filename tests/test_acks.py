"""Only the contiguous prefix of Kafka-confirmed deliveries is acked, never past a gap."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from celery_kafka_bridge.acks import AckTracker, SessionTags


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


class RecordingChannel:
    """Stands in for a py-amqp channel: the delivery tags its acks cover."""

    def __init__(self) -> None:
        self.delivered = 0
        self.acked: list[int] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        covered = [t for t in range(1, tag + 1) if t not in self.acked] if multiple else [tag]
        assert tag not in self.acked and covered, "an ack covering nothing new"
        self.acked.extend(covered)


@given(
    arrivals=st.lists(st.integers(0, 2), min_size=1, max_size=40),
    order=st.randoms(use_true_random=False),
)
def test_session_tags_ack_each_channel_delivery_once_and_only_once_kafka_has_it(
    arrivals: list[int], order: Any
) -> None:
    """Deliveries of three channels interleave; Kafka completes them in any order. Every ack
    reaches the delivery's own channel and tag, covers only completed deliveries, and in the
    end every delivery is acked exactly once."""
    channels = [RecordingChannel() for _ in range(3)]
    tags, tracker = SessionTags(), AckTracker()
    origin: dict[int, tuple[RecordingChannel, int]] = {}
    for index in arrivals:
        channel = channels[index]
        channel.delivered += 1
        tag = tags.add(channel, channel.delivered)
        origin[tag] = (channel, channel.delivered)
        tracker.add(tag)
    completion = list(origin)
    order.shuffle(completion)
    completed: set[tuple[int, int]] = set()
    for tag in completion:
        tracker.complete(tag)
        channel, channel_tag = origin[tag]
        completed.add((id(channel), channel_tag))
        tags.ack(tracker.take_acks()[0])
        for each in channels:
            assert {(id(each), t) for t in each.acked} <= completed
    for channel in channels:
        assert sorted(channel.acked) == list(range(1, channel.delivered + 1))
