"""The Celery app the tests' real workers run: tasks that succeed, fail, retry and report."""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.exceptions import Reject

app = Celery(
    "bridge_tests", broker=os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1//")
)
app.conf.update(
    event_exchange=os.environ.get("TEST_EVENT_EXCHANGE", "celeryev"),
    task_default_queue=os.environ.get("TEST_TASK_QUEUE", "celery"),
    task_send_sent_event=True,
    control_exchange=os.environ.get("TEST_CONTROL_EXCHANGE", "celery"),
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
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True, max_retries=2, default_retry_delay=0.1)
def flaky(self: Any) -> str:
    if self.request.retries < 2:
        raise self.retry(exc=RuntimeError("not yet"))
    return "done"


@app.task(bind=True)
def report(self: Any, progress: int) -> int:
    self.send_event("task-progress", progress=progress)
    return progress


@app.task(bind=True, acks_late=True)
def refuse(self: Any) -> None:
    """Rejected without requeue: the worker sends task-rejected (acks_late, or it acked)."""
    raise Reject("refused", requeue=False)


@app.task
def login(user: str, password: str) -> str:
    """Called with a secret: the shaping tests check that it never reaches Kafka."""
    return f"{user} logged in"


@app.task
def nap(seconds: float) -> None:
    """Runs long enough to be revoked, or to be running when its worker is killed."""
    time.sleep(seconds)
