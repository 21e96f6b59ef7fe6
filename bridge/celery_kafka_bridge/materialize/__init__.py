"""State tables, derived events and completeness checks materialized from the events topic."""

from celery_kafka_bridge.materialize.derived import DERIVED_TYPES
from celery_kafka_bridge.materialize.service import run_materialize

__all__ = ["DERIVED_TYPES", "run_materialize"]
