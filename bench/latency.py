"""Latency at fixed rates: events from Celery's dispatcher, through the bridge, to a consumer.

Per rate, a fresh bridge replica (own exchange, queue and topic) runs while a separate load
generator process publishes at that rate, and a Kafka consumer in this process times each
event's arrival against the ``timestamp`` the dispatcher put in it.
"""

from __future__ import annotations

import asyncio
import math
import signal
import sys
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench.drains import RssSampler, Setup, bridge_config, consuming_since, replicas
from bench.kafka import Arrivals, arrivals_recorder, read
from celery_kafka_bridge.embedded import free_port
from harness.support import ROOT, BridgeProcess

ACK_WITHIN_SECONDS = 0.025
"""A bucket bound of the bridge's event-age histogram: the p99 target, read exactly."""
AGE_HISTOGRAM = "celery_kafka_bridge_event_age_seconds"


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of_histogram(cls, buckets: list[tuple[float, float]]) -> Percentiles:
        """Estimated from cumulative ``(upper bound, count)`` buckets in seconds, interpolating
        within a bucket as Prometheus's ``histogram_quantile`` does; ``max`` is the upper bound
        of the highest bucket that holds an event."""
        total = buckets[-1][1] if buckets else 0.0

        def at(q: float) -> float:
            rank, lower, below = q * total, 0.0, 0.0
            for upper, count in buckets:
                if count >= rank and count > below:
                    return round(
                        1000 * (lower + (upper - lower) * (rank - below) / (count - below)), 2
                    )
                lower, below = upper, count
            return 0.0

        top = next((upper for upper, count in buckets if count >= total), 0.0)
        return cls(at(0.50), at(0.95), at(0.99), round(1000 * top, 2))

    @classmethod
    def of(cls, samples: list[float]) -> Percentiles:
        ordered = sorted(samples) or [0.0]

        def at(q: float) -> float:  # the nearest-rank percentile
            return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 2)

        return cls(at(0.50), at(0.95), at(0.99), round(ordered[-1], 2))


@dataclass(frozen=True)
class Latency:
    """One rate: what was asked, what was achieved, and the two latency distributions (ms)."""

    rate: float
    achieved_rate: float
    sent: int
    received: int
    to_send: Percentiles
    to_ack: Percentiles
    """Estimated from the bridge's event-age histogram (see `Percentiles.of_histogram`)."""
    to_consumer: Percentiles
    acked_within_25ms_pct: float
    """Share of events Kafka acked within 25 ms of their timestamp (the bridge's histogram)."""
    peak_rss_mb: float


async def _load(setup: Setup, exchange: str, events: int, rate: float) -> tuple[int, float]:
    """Run the load generator process; the events it sent and how long it took."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.loadgen",
        "--amqp-url",
        setup.amqp_url,
        "--exchange",
        exchange,
        "--hostname",
        exchange,
        "--events",
        str(events),
        "--rate",
        str(rate),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    _, sent, seconds = out.decode().split()
    return int(sent), float(seconds)


async def _measure(
    setup: Setup, topic: str, exchange: str, events: int, rate: float
) -> tuple[Arrivals, int, int, float]:
    arrivals = Arrivals()
    reader = asyncio.ensure_future(
        read(setup.kafka, topic, events, events / rate + 120, on_record=arrivals_recorder(arrivals))
    )
    (sent, seconds), (received, _) = await asyncio.gather(
        _load(setup, exchange, events, rate), reader
    )
    return arrivals, received, sent, seconds


def run_rate(setup: Setup, index: int, rate: float, seconds: float) -> tuple[Latency, Arrivals]:
    """One bridge replica under ``rate`` events/s for ``seconds``."""
    config = bridge_config(setup, f"{setup.prefix}-l{index}").model_copy(
        update={"http_port": free_port()}
    )
    events = max(1, int(rate * seconds))
    with replicas(setup, config, 1) as procs, RssSampler([procs[0].pid]) as rss:
        consuming_since(procs)
        arrivals, received, sent, took = asyncio.run(
            _measure(setup, config.topic, config.event_exchange, events, rate)
        )
        acked_within = _acked_within(procs[0])
        to_ack = Percentiles.of_histogram(_age_buckets(procs[0]))
        procs[0].signal(signal.SIGTERM)
        procs[0].wait(60)
    latency = Latency(
        rate=rate,
        achieved_rate=round(sent / took, 1) if took else 0.0,
        sent=sent,
        received=received,
        to_send=Percentiles.of(arrivals.to_send_ms),
        to_ack=to_ack,
        to_consumer=Percentiles.of(arrivals.to_consumer_ms),
        acked_within_25ms_pct=acked_within,
        peak_rss_mb=round(rss.peak_mb, 1),
    )
    return latency, arrivals


def _acked_within(proc: BridgeProcess) -> float:
    """Percent of events whose timestamp-to-Kafka-ack time was within `ACK_WITHIN_SECONDS`."""
    count = proc.metric(f"{AGE_HISTOGRAM}_count")
    within = proc.metric(f"{AGE_HISTOGRAM}_bucket", le=str(ACK_WITHIN_SECONDS))
    return round(100.0 * within / count, 2) if count else 0.0


def _age_buckets(proc: BridgeProcess) -> list[tuple[float, float]]:
    """The event-age histogram's cumulative buckets, ``(upper bound s, count)``, +Inf last."""
    status, text = proc.http("/metrics")
    assert status == 200, status
    return sorted(
        (float(sample.labels["le"]), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{AGE_HISTOGRAM}_bucket"
    )


def run_rates(setup: Setup, rates: list[float], seconds: float) -> list[tuple[Latency, Arrivals]]:
    return [run_rate(setup, index, rate, seconds) for index, rate in enumerate(rates)]
