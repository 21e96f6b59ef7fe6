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
