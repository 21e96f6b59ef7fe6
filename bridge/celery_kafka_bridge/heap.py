"""Garbage-collector settings for a process that allocates a few objects per event."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Move the start-up heap out of the collector's reach (``gc.freeze``).

    Every full collection would otherwise re-scan the ~200,000 objects of the imported modules,
    which never become garbage: about a sixth of the bridge's CPU while it drains a deep queue
    (0.9 s of 5.4 s for 200,000 events; 0.4 s once frozen). Called before anything that may
    become garbage is made: a frozen object is never collected.
    """
    gc.collect()
    gc.freeze()


FULL_COLLECTION_EVERY = 100
"""Young-generation-1 collections between two full ones considered (Python's default: 10)."""


def collect_long_lived_less_often() -> None:
    """Consider a full collection every `FULL_COLLECTION_EVERY` collections of generation 1.

    For a process whose long-lived heap grows by design (materialize's State: about 25
    collector-tracked objects per task held): at Python's default, a full collection runs each
    time that heap grows by a quarter, re-scanning all of it to find next to nothing (13 full
    collections, 2.5 s of 12 s of CPU over 200,000 events from empty tables). Garbage cycles
    (a dropped Celery `Task` is one) are still collected, after up to 700,000 allocations.
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
