"""Publish, then close at once: what a worker's last events risk, and what confirms cost it.

Celery's event dispatcher publishes without publisher confirms, so a connection that closes
right after a burst (scale-in, redeploy, OOM kill) can lose the tail of it on the way into a
quorum queue, before the bridge could see it. Celery's remedy is kombu's transport option
(``broker_transport_options={'confirm_publish': True}``): every publish, events included, waits
for RabbitMQ's confirm. Each trial sends a burst on a fresh connection, closes the connection at
once, and counts what a quorum queue declared like the bridge's holds:

- ``bare``: a py-amqp publisher at full speed without confirms, the burst that exposes the loss
  (Celery's dispatcher alone publishes too slowly to leave much in flight at the close);
- ``dispatcher``: ``app.events.Dispatcher`` with ``confirm_publish`` off, then on, alternating:
  the cost to the worker's thread, and what each setting delivered.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import amqp
import orjson

from bench.loadgen import Event, event_app, task_events
from bench.queues import Rabbit
from harness.support import amqp_connection

_SETTLE_SECONDS = 2.0
"""A queue depth unchanged this long is final (a lost tail never arrives)."""

Burst = Callable[[str, str, list[Event]], tuple[float, float]]
"""Sends events to an exchange on a fresh connection, closed at once: (wall, CPU) seconds."""


@dataclass(frozen=True)
class Publishing:
    """Trials of one publisher and setting: what the queue got of each burst, and the time the
    publisher spent."""

    publisher: str
    confirm_publish: bool
    trials: int
    events: int
    """Per trial."""
    lost: int
    """Over every trial."""
    trials_with_loss: int
    wall_us_per_event: float
    cpu_us_per_event: float


def run(
    amqp_url: str, prefix: str, bare_events: int, dispatcher_events: int, trials: int
) -> list[Publishing]:
    """``trials`` bursts of each kind: bare, then the dispatcher without and with confirms."""
    exchange, queue = f"{prefix}-p", f"celeryev.{prefix}-p"
    stream = list(itertools.islice(_stream(random.Random(0)), max(bare_events, dispatcher_events)))
    rabbit = Rabbit(amqp_url)
    try:
        rabbit.channel.queue_declare(
            queue, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
        rabbit.bind(queue, exchange)

        def trial(burst: Burst, events: list[Event]) -> tuple[int, float, float]:
            wall, cpu = burst(amqp_url, exchange, events)
            got = rabbit.settled_depth(queue, len(events), _SETTLE_SECONDS)
            rabbit.channel.queue_purge(queue)
            return len(events) - got, wall, cpu

        bare = [trial(_bare_burst, stream[:bare_events]) for _ in range(trials)]
        by_setting: dict[bool, list[tuple[int, float, float]]] = {False: [], True: []}
        for _, confirm in itertools.product(range(trials), (False, True)):
            burst = partial(_dispatcher_burst, confirm=confirm)
            by_setting[confirm].append(trial(burst, stream[:dispatcher_events]))
    finally:
        rabbit.channel.queue_delete(queue)
        rabbit.channel.exchange_delete(exchange)
        rabbit.close()
    return [
        _summary("bare py-amqp, full speed", False, bare, bare_events),
        *(
            _summary("Celery dispatcher", c, runs, dispatcher_events)
            for c, runs in by_setting.items()
        ),
    ]


def _summary(
    publisher: str, confirm: bool, runs: list[tuple[int, float, float]], events: int
) -> Publishing:
    total = len(runs) * events
    return Publishing(
        publisher,
        confirm,
        len(runs),
        events,
        sum(lost for lost, _, _ in runs),
        sum(lost > 0 for lost, _, _ in runs),
        round(sum(wall for _, wall, _ in runs) / total * 1e6, 2),
        round(sum(cpu for _, _, cpu in runs) / total * 1e6, 2),
    )


def _stream(rng: random.Random) -> itertools.chain[Event]:
    """Task events with the fields Celery 5 sends, task after task."""
    return itertools.chain.from_iterable(task_events(rng) for _ in itertools.count())


def _dispatcher_burst(
    amqp_url: str, exchange: str, events: list[Event], confirm: bool
) -> tuple[float, float]:
    """Celery's dispatcher, with ``broker_transport_options={'confirm_publish': confirm}``."""
    app = event_app(amqp_url, exchange)
    app.conf.broker_transport_options = {"confirm_publish": confirm}
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="burst@bench")
        wall, cpu = time.perf_counter(), time.process_time()
        for event_type, fields in events:
            dispatcher.send(event_type, **fields)
        return time.perf_counter() - wall, time.process_time() - cpu


def _bare_burst(amqp_url: str, exchange: str, events: list[Event]) -> tuple[float, float]:
    """The events, encoded beforehand, published as fast as py-amqp can."""
    bodies = [orjson.dumps({"type": event_type, **fields}) for event_type, fields in events]
    conn = amqp_connection(amqp_url)
    try:
        channel = conn.channel()
        wall, cpu = time.perf_counter(), time.process_time()
        for body in bodies:
            message = amqp.Message(body, content_type="application/json")
            channel.basic_publish(message, exchange=exchange, routing_key="task.burst")
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        conn.close()
