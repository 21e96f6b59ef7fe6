"""(m) materialize: how fast the state tables are built from the events topic drain (c) filled."""

from __future__ import annotations

import time

from bench.drains import Drain, RssSampler, Setup, bridge_config, bridge_env
from celery_kafka_bridge.embedded import free_port
from harness.support import BridgeProcess, poll

APPLIED = "celery_kafka_bridge_materialize_events_total"


def materialize(setup: Setup) -> Drain:
    """Every event of drain (c)'s topic applied to the state, from a fresh start (tables empty):
    timed from the moment the tables are loaded to the last event applied; run after (c)."""
    source = f"{setup.prefix}-c"
    env = {
        **bridge_env(bridge_config(setup, source)),
        "BRIDGE_NODE_ID": f"{source}-m",
        "BRIDGE_HTTP_PORT": str(free_port()),
        **{
            f"BRIDGE_{table.upper()}_TOPIC": f"{source}.{table}"
            for table in ("tasks", "workers", "derived", "offsets")
        },
    }
    process = BridgeProcess(env, setup.workdir / f"{source}-m.log", command="materialize")
    process.start()
    try:
        with RssSampler([process.pid]) as rss:
            poll(lambda: "materialize state loaded" in process.log() or not process.alive(), 60)
            assert process.alive(), process.log()[-2000:]
            started = time.perf_counter()
            while process.metric(APPLIED) < setup.events:
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"materialize applied {process.metric(APPLIED):.0f} events")
                time.sleep(0.02)  # pacing the scrapes, not synchronisation
            finished = time.perf_counter()
    finally:
        process.kill()
    label = "materialize (events topic into the state tables)"
    return Drain("m", label, setup.events, len(setup.messages), finished - started, rss.peak_mb)
