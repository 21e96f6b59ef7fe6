"""`run` and `materialize` freeze their start-up heap, so collections skip the modules."""

from __future__ import annotations

import gc

from celery_kafka_bridge import heap


def test_freeze_startup_heap_moves_the_start_up_heap_out_of_the_collectors_reach() -> None:
    before = gc.get_freeze_count()
    heap.freeze_startup_heap()
    try:
        assert gc.get_freeze_count() > max(before, 10_000)
        assert (
            sum(len(gc.get_objects(generation)) for generation in range(3)) < gc.get_freeze_count()
        )
    finally:
        gc.unfreeze()


def test_long_lived_garbage_is_still_collected_when_full_collections_are_rarer() -> None:
    """materialize's setting: full collections are considered ten times less often than by
    default, yet garbage cycles that outlived the young generations are still freed."""
    before = gc.get_threshold()
    heap.collect_long_lived_less_often()
    try:
        assert gc.get_threshold() == (before[0], before[1], heap.FULL_COLLECTION_EVERY)
        gc.collect()
        full_before = gc.get_stats()[2]["collections"]
        survivors: list[list[object]] = []
        for _ in range(1_000_000):  # cycles that live through young collections, then die
            cycle: list[object] = []
            cycle.append(cycle)
            survivors.append(cycle)
            if len(survivors) == 20_000:
                survivors = []
        assert gc.get_stats()[2]["collections"] > full_before
    finally:
        gc.set_threshold(*before)
