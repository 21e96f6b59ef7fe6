"""``python -m bench.run``: throughput, latency and memory of the bridge, written to a report.

Needs RabbitMQ; starts an embedded Kafka (Tansu) unless ``--kafka`` names one.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import click

from bench import confirms, drains
from bench.acking import ack_cost
from bench.decoding import decoding_cost
from bench.drains import Drain, Setup
from bench.latency import run_rates
from bench.materialize import materialize
from bench.ordering import run_topologies
from bench.queues import Rabbit, event_count, generate
from bench.redis import run_redis
from bench.report import Report
from celery_kafka_bridge.embedded import EmbeddedKafka

QUICK_EVENTS = 20_000
QUICK_RATES = "500,2000"
QUICK_SECONDS = 5.0
QUICK_TASKS = 300
BARE_BURST = 150_000
"""Events of a bare publisher's burst: enough in flight at the close to expose the loss."""
DISPATCHER_BURST = 10_000
"""Events of a dispatcher's burst (with confirms, each publish waits a round trip)."""


@contextlib.contextmanager
def kafka_at(bootstrap: str | None, workdir: Path) -> Iterator[str]:
    """``bootstrap`` if given, else a Tansu broker started for the run."""
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedKafka(log_path=workdir / "tansu.log") as broker:
        yield broker.bootstrap_servers


def clean_up(amqp_url: str, prefix: str, rates: int, pairs: int) -> None:
    """Delete the run's queues and exchanges (one of each per consumer, per rate and per extra
    shaping pair)."""
    extra = [f"{letter}{i}" for i in range(2, pairs + 1) for letter in "ce"]
    latency = [f"l{i}" for i in range(rates)]
    names = [f"{prefix}-{n}" for n in ("a", "b", "c", "d", "e", *extra, *latency)]
    rabbit = Rabbit(amqp_url)
    try:
        for name in names:
            for queue in (f"celeryev.{name}", f"celeryev.{name}.competing"):  # ordered, (d)
                rabbit.channel.queue_delete(queue)
            rabbit.channel.exchange_delete(name)
    finally:
        rabbit.close()


DRAINS: dict[str, Callable[[Setup], Drain]] = {
    "a": drains.receiver,
    "b": drains.bare_kombu,
    "c": partial(drains.bridge, count=1),
    "d": partial(drains.bridge, count=2),
    "e": partial(drains.bridge, count=1, rules=drains.RULES),
    "m": partial(materialize, slices=1),  # reads the topic (c) wrote: after it
    "n": partial(materialize, slices=2),
}


def throughput(setup: Setup, which: str) -> list[Drain]:
    results = []
    for run in (DRAINS[name] for name in which):
        result = run(setup)
        click.echo(f"  ({result.name}) {result.label}: {result.events_per_second:,.0f} events/s")
        results.append(result)
    return results


def shaping_pairs(setup: Setup, drained: list[Drain], pairs: int) -> list[list[float | None]]:
    """Bridge CPU per event of (c) and (e) in ``pairs`` alternating pairs: the drains' own,
    then ``pairs - 1`` more of each, so the shaping target does not rest on one pair."""
    first = {d.name: d.cpu_us_per_event for d in drained}
    measured = [[first["c"], first["e"]]]
    for run in range(2, pairs + 1):
        plain = drains.bridge(setup, count=1, run=run)
        shaped = drains.bridge(setup, count=1, rules=drains.RULES, run=run)
        measured.append([plain.cpu_us_per_event, shaped.cpu_us_per_event])
        click.echo(
            f"  shaping pair {run}: (c) {plain.cpu_us_per_event:.1f}, (e) "
            f"{shaped.cpu_us_per_event:.1f} us of bridge CPU per event"
        )
    return measured


def in_process_costs(setup: Setup, which: str) -> dict[str, Any]:
    """The codec's cost per event (with drain e) and the ack bookkeeping's per message (with
    drain c), measured in this process."""
    costs: dict[str, Any] = {}
    if "e" in which:
        cost = decoding_cost(setup.messages, drains.RULES, drains.BENCH_HASH_KEY)
        costs["decoding_us_per_event"] = asdict(cost)
    if "c" in which:
        prefetch = drains.bridge_config(setup, f"{setup.prefix}-c").prefetch
        costs["ack_us_per_message"] = ack_cost(len(setup.messages), prefetch)
    return costs


@click.command()
@click.option(
    "--events",
    type=int,
    default=200_000,
    envvar="BENCH_EVENTS",
    show_default=True,
    help="Events in the pre-filled queue [env: BENCH_EVENTS].",
)
@click.option(
    "--rates",
    default="500,2000,5000",
    envvar="BENCH_RATES",
    show_default=True,
    help="Comma-separated events/s of the latency runs; empty: none [env: BENCH_RATES].",
)
@click.option(
    "--rate-seconds",
    type=float,
    default=10.0,
    envvar="BENCH_RATE_SECONDS",
    show_default=True,
    help="How long each latency rate runs [env: BENCH_RATE_SECONDS].",
)
@click.option(
    "--ordering-tasks",
    type=int,
    default=1500,
    envvar="BENCH_ORDERING_TASKS",
    show_default=True,
    help="Tasks of each topology's ordering run; 0: none [env: BENCH_ORDERING_TASKS].",
)
@click.option(
    "--publish-trials",
    type=int,
    default=3,
    envvar="BENCH_PUBLISH_TRIALS",
    show_default=True,
    help="Publish-then-close trials of each publisher and setting; 0: none "
    "[env: BENCH_PUBLISH_TRIALS].",
)
@click.option(
    "--shaping-pairs",
    "pairs",
    type=click.IntRange(min=1),
    default=3,
    envvar="BENCH_SHAPING_PAIRS",
    show_default=True,
    help="Alternating (c, e) pairs whose median e/c per CPU second is the shaping target "
    "(with drains c and e) [env: BENCH_SHAPING_PAIRS].",
)
@click.option(
    "--quick",
    is_flag=True,
    help=f"{QUICK_EVENTS:,} events, rates {QUICK_RATES}, {QUICK_SECONDS:.0f} s each, "
    f"{QUICK_TASKS} tasks per topology, one publish-then-close trial of each kind.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Where results.json, results.md and latency.png go.",
)
@click.option(
    "--amqp-url",
    default="amqp://guest:guest@127.0.0.1:5672//",
    envvar="BENCH_AMQP_URL",
    show_default=True,
)
@click.option(
    "--kafka",
    default=None,
    envvar="BENCH_KAFKA",
    help="Kafka bootstrap servers; default: start an embedded Tansu broker.",
)
@click.option(
    "--drains",
    "which",
    default="abcdemn",
    show_default=True,
    help="Which throughput drains to run, e.g. 'ac' (empty: none); m and n need c before them.",
)
@click.option(
    "--redis/--no-redis",
    default=True,
    show_default=True,
    help="Also drain the stream through the Redis source (local Redis, db 10-15).",
)
@click.option(
    "--queue-type",
    type=click.Choice(["quorum", "classic"]),
    default="quorum",
    show_default=True,
    help="Type of the bridge queue (and of queue b).",
)
def main(
    *,
    events: int,
    rates: str,
    rate_seconds: float,
    ordering_tasks: int,
    publish_trials: int,
    pairs: int,
    quick: bool,
    out: Path,
    amqp_url: str,
    kafka: str | None,
    queue_type: str,
    which: str,
    redis: bool,
) -> None:
    """Drain N events through each consumer, time events through the bridge at fixed rates,
    count each topology's inversions, and count what a burst loses when its connection closes."""
    if quick:
        events, rates, rate_seconds = min(events, QUICK_EVENTS), QUICK_RATES, QUICK_SECONDS
        ordering_tasks = min(ordering_tasks, QUICK_TASKS)
        publish_trials, pairs = min(publish_trials, 1), 1
    rate_list = [float(r) for r in rates.split(",") if r.strip()]
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = out / "logs"
    workdir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    meta: dict[str, object] = {}
    rabbit = Rabbit(amqp_url)
    try:
        click.echo(f"generating {events:,} events through Celery's dispatcher")
        messages = generate(rabbit, amqp_url, prefix, events)
    finally:
        rabbit.close()
    with kafka_at(kafka, workdir) as bootstrap:
        setup = Setup(
            amqp_url, bootstrap, prefix, messages, event_count(messages), workdir, queue_type
        )
        try:
            click.echo(f"draining {setup.events:,} events ({len(messages):,} messages)")
            drained = throughput(setup, which)
            if "c" in which and "e" in which:
                meta["shaping_cpu_us_per_event"] = shaping_pairs(setup, drained, pairs)
            meta.update(in_process_costs(setup, which))
            click.echo(f"latency at {', '.join(f'{r:,.0f}' for r in rate_list) or 'no'} events/s")
            latencies = run_rates(setup, rate_list, rate_seconds)
            click.echo(f"ordering: {ordering_tasks:,} tasks per topology, three replicas")
            orderings = run_topologies(setup, ordering_tasks)
            if redis:
                click.echo("redis: a bare subscriber, the bridge x1 and x2, claims, ordering")
                redis_run = run_redis(setup, ordering_tasks)
                drained += redis_run.drains
                orderings += redis_run.orderings
                meta["claim_us_per_message"] = round(redis_run.claim_us, 2)
            click.echo(f"publish, then close: {publish_trials} trials of each kind")
            publishing = (
                confirms.run(amqp_url, prefix, BARE_BURST, DISPATCHER_BURST, publish_trials)
                if publish_trials
                else []
            )
        finally:
            clean_up(amqp_url, prefix, len(rate_list), pairs)
    meta |= {
        "started": started,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "events": setup.events,
        "messages": len(messages),
        "queue_type": queue_type,
        "rates": rate_list,
        "rate_seconds": rate_seconds,
        "prefix": prefix,
    }
    report = Report(
        meta,
        drained,
        [lat for lat, _ in latencies],
        [a for _, a in latencies],
        orderings,
        publishing,
    )
    paths = report.write(out)
    click.echo("\n" + report.markdown())
    click.echo("written: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
