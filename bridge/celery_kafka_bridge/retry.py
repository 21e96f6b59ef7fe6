"""The one retry policy: exponential backoff with jitter, for the AMQP and Kafka sides alike."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from celery_kafka_bridge.logs import describe

log = logging.getLogger(__name__)

Result = TypeVar("Result")
MAX_WAIT = 15.0
SLOW_FIRST_WAIT = 5.0
SLOW_MAX_WAIT = 30.0
"""Waits when only an operator can fix the failure (Kafka refuses the bridge's principal)."""


def backoff_delay(attempt: int, first: float = 0.5, max_wait: float = MAX_WAIT) -> float:
    """The wait before retry ``attempt`` (1, 2, ...): ``first`` doubling up to ``max_wait``,
    plus up to 0.5 s of jitter so replicas do not retry in step."""
    return min(max_wait, first * 2.0 ** max(0, attempt - 1)) + random.uniform(0.0, 0.5)


def slow_delay(attempt: int) -> float:
    """`backoff_delay` for failures an operator must fix: 5 s, 10 s, 20 s, then every 30 s."""
    return backoff_delay(attempt, SLOW_FIRST_WAIT, SLOW_MAX_WAIT)


def backoff_policy(what: str, max_wait: float = MAX_WAIT) -> dict[str, Any]:
    """Keyword arguments for tenacity's (Async)Retrying: retry forever, log each wait once."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed: %s; retrying in %.1fs", what, describe(exc), wait)

    return {
        "wait": lambda state: backoff_delay(state.attempt_number, max_wait=max_wait),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def backoff(what: str, errors: tuple[type[BaseException], ...]) -> AsyncRetrying:
    """Retry an operation failing with ``errors`` until it succeeds, with backoff."""
    return AsyncRetrying(retry=retry_if_exception_type(errors), **backoff_policy(what))


async def retried(
    what: str, operation: Callable[[], Awaitable[Result]], errors: tuple[type[BaseException], ...]
) -> Result:
    """``operation()``, retried with `backoff` once it failed with ``errors``. Setting up the
    retries costs about 20 us, too much for a call made per hand-off batch that nearly always
    succeeds."""
    try:
        return await operation()
    except errors:
        return await backoff(what, errors)(operation)
