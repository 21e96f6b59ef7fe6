"""Send a steady stream of demo tasks until SIGTERM: ``python -m demo.producer``."""

from __future__ import annotations

import os
import random
import signal
import threading

from demo.tasks import add, flaky, sometimes_fail


def send_one() -> None:
    """One task, mostly plain successes with some failures and retries mixed in."""
    roll = random.random()
    if roll < 0.1:
        flaky.delay()
    elif roll < 0.3:
        sometimes_fail.delay(0.5)
    else:
        add.delay(random.randint(0, 100), random.randint(0, 100))


def main() -> None:
    rate = float(os.environ.get("DEMO_TASKS_PER_SECOND", "5"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    sent = 0
    while not stop.wait(1 / rate):
        send_one()
        sent += 1
        if sent % 100 == 0:
            print(f"sent {sent} tasks", flush=True)


if __name__ == "__main__":
    main()
