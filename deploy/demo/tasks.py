"""A tiny Celery app whose tasks succeed, fail now and then, and retry: varied demo events."""

from __future__ import annotations

import os
import random
from typing import Any

from celery import Celery

app = Celery("demo", broker=os.environ.get("DEMO_BROKER_URL", "amqp://guest:guest@localhost//"))
app.conf.update(
    task_default_queue=os.environ.get("DEMO_TASK_QUEUE", "celery"),
    # task-sent events come from the producer side, so they must be switched on there.
    task_send_sent_event=True,
    broker_connection_retry_on_startup=True,
    result_backend=None,
    # RabbitMQ 4.3 refuses transient queues that are not exclusive: Celery's own event-receiver
    # and control (pidbox) queues are declared exclusive.
    event_queue_exclusive=True,
    control_queue_exclusive=True,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def sometimes_fail(failure_rate: float) -> str:
    if random.random() < failure_rate:
        raise RuntimeError("demo failure")
    return "ok"


@app.task(bind=True, max_retries=3, default_retry_delay=1)
def flaky(self: Any) -> int:
    """Fails its first attempts, so the stream shows task-retried events."""
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError("demo transient error"))
    return int(self.request.retries)
