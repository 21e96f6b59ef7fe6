"""Exponential backoff for broker connections, shared by the AMQP and Kafka sides."""

from __future__ import annotations

import logging
from typing import Any

from tenacity import RetryCallState, wait_exponential_jitter

from celery_kafka_bridge.logs import describe

log = logging.getLogger(__name__)


def backoff_wait(max_wait: float = 15.0) -> wait_exponential_jitter:
    """Exponential backoff from 0.5 s up to ``max_wait``, with jitter."""
    return wait_exponential_jitter(multiplier=0.5, max=max_wait, jitter=0.5)


def backoff_policy(what: str, max_wait: float = 15.0) -> dict[str, Any]:
    """Keyword arguments for tenacity's (Async)Retrying: retry forever, log each wait once."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed: %s; retrying in %.1fs", what, describe(exc), wait)

    return {
        "wait": backoff_wait(max_wait),
        "before_sleep": before_sleep,
        "reraise": True,
    }
