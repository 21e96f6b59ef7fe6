"""`retry.retried`: one plain call when it works, the backoff loop only once it failed."""

from __future__ import annotations

import pytest

from celery_kafka_bridge.errors import TransientError
from celery_kafka_bridge.retry import backoff_delay, retried, slow_delay


async def test_a_failing_operation_is_retried_until_it_succeeds() -> None:
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("not yet")
        return 7

    assert await retried("flaky", flaky, (TransientError,)) == 7
    assert calls == 3


async def test_an_error_that_is_not_transient_is_raised_at_once() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError, match="a bug"):
        await retried("broken", broken, (TransientError,))
    assert calls == 1


def test_the_backoff_doubles_from_half_a_second_and_stops_at_its_cap() -> None:
    first, second, late = backoff_delay(1), backoff_delay(2), backoff_delay(20)
    assert 0.5 <= first <= 1.0
    assert 1.0 <= second <= 1.5
    assert 15.0 <= late <= 15.5, "capped at 15 s plus jitter"


def test_the_slow_backoff_for_what_only_an_operator_can_fix_waits_5_to_30_seconds() -> None:
    assert 5.0 <= slow_delay(1) <= 5.5
    assert 30.0 <= slow_delay(10) <= 30.5
