"""`retry.retried`: one plain call when it works, the backoff loop only once it failed."""

from __future__ import annotations

import pytest

from celery_kafka_bridge.errors import TransientError
from celery_kafka_bridge.retry import retried


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
