"""State tables, derived events and completeness checks materialized from the events topic
(`service.run_materialize`; the record formats in `tables` and `derived`)."""

from celery_kafka_bridge.materialize.derived import DERIVED_TYPES

__all__ = ["DERIVED_TYPES"]
