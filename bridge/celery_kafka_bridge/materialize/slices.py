"""How materialize replicas share the work: each holds one slice of the events topic's tasks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_TASK = b"task-"
_STARTED = b"task-started"


@dataclass(frozen=True)
class Slice:
    """The tasks of every ``count``-th partition of the events topic, from ``index`` on.

    A task's events share its partition, so a slice computes its tasks' rows alone. Every slice
    reads the worker events (a task is lost when its worker is); slice 0 also keeps the workers'
    table, their completeness tallies (which count the ``task-started`` events of every
    partition) and ``worker-lost``.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"slice {self.index} of {self.count}")

    def __str__(self) -> str:
        return f"{self.index}-of-{self.count}"

    @property
    def keeps_workers(self) -> bool:
        return self.index == 0

    def owns(self, partition: int) -> bool:
        return partition % self.count == self.index

    def reads(self, partition: int, headers: Mapping[str, bytes]) -> bool:
        """Whether this slice needs a record decoded, by its partition and ``event_type``
        header: task events of other slices' partitions are passed over undecoded, except
        ``task-started`` for slice 0."""
        if self.count == 1 or self.owns(partition):
            return True
        kind = headers.get("event_type")
        if kind is None or not kind.startswith(_TASK):
            return True
        return kind == _STARTED and self.keeps_workers


WHOLE = Slice()
"""One replica does all the work."""
