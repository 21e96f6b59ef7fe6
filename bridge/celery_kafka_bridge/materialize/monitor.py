"""The materializer's metrics (a registry of its own) and readiness."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from celery_kafka_bridge.materialize.slices import Slice
from celery_kafka_bridge.metrics import NAMESPACE

WRITE_STALE_SECONDS = 30.0
"""Unready when changes have waited this long for Kafka to take them."""


class MaterializeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        metric: dict[str, Any] = {"namespace": NAMESPACE, "registry": self.registry}
        self.events = Counter(
            "materialize_events",
            "Records of the events topic read (applied, or passed over as another slice's).",
            **metric,
        )
        self.records = Counter(
            "materialize_records",
            "Table records Kafka confirmed, by table (tombstones included).",
            ["table"],
            **metric,
        )
        self.derived = Counter(
            "derived_events", "Derived events Kafka confirmed, by type.", ["type"], **metric
        )
        self.missing = Counter(
            "events_missing",
            "Task events a worker's heartbeats counted that never arrived (see events-missing).",
            ["hostname"],
            **metric,
        )
        self.write_retries = Counter(
            "materialize_write_retries", "Flushes Kafka did not take, sent again.", **metric
        )
        self.tasks = Gauge("materialize_tasks", "Tasks held in the state.", **metric)
        self.lag = Gauge(
            "materialize_lag_seconds",
            "Age of the last event applied (0 while the input is idle).",
            **metric,
        )
        self.ready = Gauge("materialize_ready", "1 while /readyz answers ready.", **metric)
        self.slices = Gauge(
            "materialize_slices",
            "The slices the replicas share (BRIDGE_MATERIALIZE_SLICES): as many should be ready.",
            **metric,
        )


class MaterializeHealth:
    """Ready once a slice's lease is held and the tables are loaded, while writes go through."""

    def __init__(self, metrics: MaterializeMetrics) -> None:
        self._metrics = metrics
        self.slice: Slice | None = None
        """The slice whose lease this replica holds."""
        self.loaded = False
        self.draining = False
        self._waiting_since: float | None = None

    def writes_pending(self, pending: bool) -> None:
        """Whether a flush is waiting for Kafka (since when is tracked here)."""
        if not pending:
            self._waiting_since = None
        elif self._waiting_since is None:
            self._waiting_since = time.monotonic()
        self._metrics.ready.set(int(self.status()[0]))

    def status(self) -> tuple[bool, dict[str, Any]]:
        waiting = self._waiting_since
        stale = waiting is not None and time.monotonic() - waiting > WRITE_STALE_SECONDS
        checks: dict[str, Any] = {
            "lease": "held" if self.slice else "waiting",
            "slice": str(self.slice) if self.slice else None,
            "tables": "loaded" if self.loaded else "loading",
            "kafka_writes": "stalled" if stale else "ok",
            "draining": self.draining,
        }
        ready = self.slice is not None and self.loaded and not stale and not self.draining
        return ready, checks
