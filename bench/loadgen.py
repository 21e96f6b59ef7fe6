"""Realistic Celery events, published through Celery's own event dispatcher.

Two simulated workers: one buffers task events into ``task.multi`` lists of 2-5 (as a worker
with an event loop does, ``buffer_group=['task']``), the other sends every event on its own (as
a solo/threads worker does). Tasks go through received, started, then succeeded or failed; each
worker also sends heartbeats. Field sets are those Celery 5 workers send.

Run as ``python -m bench.loadgen`` to publish at a fixed rate from a separate process.
"""

from __future__ import annotations

import argparse
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from celery import Celery

Event = tuple[str, dict[str, Any]]

_TASKS = ("proj.tasks.add", "proj.tasks.resize_image", "proj.tasks.send_email", "proj.tasks.sync")
_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/app/proj/tasks.py", line 42, in sync\n'
    '    raise ValueError(f"upstream answered {status}")\n'
    "ValueError: upstream answered 503\n"
)
_HEARTBEAT_EVERY = 60
"""One heartbeat per this many task events: a busy worker sends one every 2 s."""


def event_app(amqp_url: str, exchange: str) -> Celery:
    """A Celery app whose events go to ``exchange``."""
    app = Celery(broker=amqp_url, set_as_current=False)
    app.conf.update(event_exchange=exchange, event_serializer="json")
    return app


def task_events(rng: random.Random) -> Iterator[Event]:
    """The events of one task, in order, with the fields a Celery 5 worker sends."""
    task_id = str(uuid.UUID(int=rng.getrandbits(128)))
    name = rng.choice(_TASKS)
    yield (
        "task-received",
        {
            "uuid": task_id,
            "name": name,
            "args": f"({rng.randint(0, 10_000)}, {rng.randint(0, 10_000)})",
            "kwargs": "{'priority': 'normal'}" if rng.random() < 0.3 else "{}",
            "root_id": task_id,
            "parent_id": None,
            "retries": 0,
            "eta": None,
            "expires": None,
        },
    )
    yield "task-started", {"uuid": task_id}
    if rng.random() < 0.9:
        yield (
            "task-succeeded",
            {
                "uuid": task_id,
                "result": repr(rng.randint(0, 20_000)),
                "runtime": rng.uniform(0.001, 2.5),
            },
        )
    else:
        yield (
            "task-failed",
            {
                "uuid": task_id,
                "exception": "ValueError('upstream answered 503')",
                "traceback": _TRACEBACK,
            },
        )


def heartbeat(rng: random.Random, processed: int) -> dict[str, Any]:
    return {
        "freq": 2.0,
        "sw_ident": "py-celery",
        "sw_ver": "5.4.0",
        "sw_sys": "Linux",
        "active": rng.randint(0, 8),
        "processed": processed,
        "loadavg": [round(rng.uniform(0, 4), 2) for _ in range(3)],
    }


class Workers:
    """Two simulated workers sending through `app.events.Dispatcher` on one connection."""

    def __init__(self, app: Celery, hostname: str, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._conn = app.connection_for_write()
        self._buffered = app.events.Dispatcher(
            self._conn, hostname=f"{hostname}-a@bench", buffer_group=["task"], buffer_limit=2
        )
        self._single = app.events.Dispatcher(self._conn, hostname=f"{hostname}-b@bench")
        self.sent = 0

    def events(self) -> Iterator[tuple[Any, str, dict[str, Any]]]:
        """Endless (dispatcher, type, fields): tasks spread over both workers, heartbeats."""
        rng = self._rng
        while True:
            dispatcher = self._buffered if rng.random() < 0.7 else self._single
            for kind, fields in task_events(rng):
                yield dispatcher, kind, fields
                if rng.randrange(_HEARTBEAT_EVERY) == 0:
                    yield dispatcher, "worker-heartbeat", heartbeat(rng, self.sent)

    def send(self, count: int, rate: float | None = None) -> None:
        """Send ``count`` events, at ``rate`` per second if given, then flush the buffers."""
        started = time.perf_counter()
        for dispatcher, kind, fields in self.events():
            if self.sent >= count:
                break
            if rate:
                ahead = started + self.sent / rate - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
            self._send(dispatcher, kind, fields)
        self._buffered.flush()

    def _send(self, dispatcher: Any, kind: str, fields: dict[str, Any]) -> None:
        grouped = dispatcher is self._buffered and kind.startswith("task-")
        dispatcher.send(kind, **fields)
        self.sent += 1
        if grouped and not dispatcher._group_buffer["task"]:
            # A list was just published: vary the length of the next one (2-5 events).
            dispatcher.buffer_limit = self._rng.randint(2, 5)

    def close(self) -> None:
        self._buffered.close()
        self._single.close()
        self._conn.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--rate", type=float, default=None, help="events per second")
    args = parser.parse_args()
    workers = Workers(event_app(args.amqp_url, args.exchange), args.hostname, seed=1)
    started = time.perf_counter()
    try:
        workers.send(args.events, args.rate)
    finally:
        workers.close()
    print(f"sent {workers.sent} {time.perf_counter() - started:.3f}", flush=True)


if __name__ == "__main__":
    main()
