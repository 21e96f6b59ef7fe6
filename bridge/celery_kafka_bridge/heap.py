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
