"""(m), (n) materialize: how fast the state tables are built from the events topic drain (c)
filled, by one replica and by two slices."""

from __future__ import annotations

import time

from bench.drains import Drain, RssSampler, Setup, bridge_config, bridge_env
from celery_kafka_bridge.embedded import free_port
from harness.support import BridgeProcess, poll

READ = "celery_kafka_bridge_materialize_events_total"
NAMES = {1: "m", 2: "n"}


def materialize(setup: Setup, slices: int) -> Drain:
    """Every event of drain (c)'s topic read by each of ``slices`` replicas (one slice each),
    from a fresh start (tables empty): timed from the moment all loaded their tables to the
    moment the last read the last event; run after (c)."""
    source = f"{setup.prefix}-c"
    name = NAMES[slices]
    env = {
        **bridge_env(bridge_config(setup, source)),
        "BRIDGE_NODE_ID": f"{source}-{name}",
        "BRIDGE_MATERIALIZE_SLICES": str(slices),
        **{
            f"BRIDGE_{table.upper()}_TOPIC": f"{source}.{name}.{table}"
            for table in ("tasks", "workers", "derived", "offsets")
        },
    }
    processes = [
        BridgeProcess(
            {**env, "BRIDGE_HTTP_PORT": str(free_port())},
            setup.workdir / f"{source}-{name}{i}.log",
            command="materialize",
        )
        for i in range(slices)
    ]
    for process in processes:
        process.start()
    try:
        with RssSampler([p.pid for p in processes]) as rss:
            for process in processes:
                poll(lambda: "materialize state loaded" in process.log() or not process.alive(), 60)  # noqa: B023
                assert process.alive(), process.log()[-2000:]
            started = time.perf_counter()
            behind = list(processes)
            while behind:
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"materialize read {behind[0].metric(READ):.0f} events")
                behind = [p for p in behind if p.metric(READ) < setup.events]
                time.sleep(0.02)  # pacing the scrapes, not synchronisation
            finished = time.perf_counter()
    finally:
        for process in processes:
            process.kill()
    label = f"materialize x{slices} (events topic into the state tables, one slice per replica)"
    return Drain(name, label, setup.events, len(setup.messages), finished - started, rss.peak_mb)
