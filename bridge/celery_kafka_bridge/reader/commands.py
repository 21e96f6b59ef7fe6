"""Commands for the topic's readers: tail, timeline, replay and state. Thin: the logic lives in
`audit`, `stream` and `replay` beside this module."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import click
import orjson
from aiokafka.errors import KafkaError
from amqp.exceptions import AMQPError
from kombu.exceptions import KombuError

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.errors import BridgeError, ConfigError
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.options import setting_options
from celery_kafka_bridge.reader.audit import (
    EventFilter,
    StateBuilder,
    build_timeline,
    format_event,
    format_summary,
    format_timeline,
    summarise,
    timeline_from_row,
)
from celery_kafka_bridge.reader.replay import RateLimiter, open_target, replay
from celery_kafka_bridge.reader.stream import Scan, read_events
from celery_kafka_bridge.reader.tables import lookup_task, read_table, table_state
from celery_kafka_bridge.reader.timeparse import DURATION, TIME

_READER_SETTINGS = ("kafka_bootstrap_servers", "topic")


def _settings(flags: dict[str, Any]) -> Config:
    try:
        return Config.from_flags(flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def _scan(flags: dict[str, Any], **options: Any) -> Scan:
    config = _settings(flags)
    return Scan(config.kafka_bootstrap_servers, config.topic, **options)


@contextmanager
def _reported() -> Iterator[None]:
    """Broker and input failures as one masked line (exit 1), not a traceback."""
    try:
        yield
    except (BridgeError, KafkaError, KombuError, AMQPError, OSError) as exc:
        raise click.ClickException(describe(exc)) from exc


def _checked_target(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        open_target(value, "")
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def _dump(value: Any) -> str:
    return orjson.dumps(dataclasses.asdict(value), default=repr).decode()


@click.command()
@setting_options(*_READER_SETTINGS)
@click.option("--type", "types", multiple=True, help="Event type, e.g. task-failed or 'task-*'.")
@click.option("--task-name", "task_names", multiple=True, help="Task name (pattern).")
@click.option("--hostname", "hostnames", multiple=True, help="Worker or client hostname (pattern).")
@click.option("--task-id", "task_ids", multiple=True, help="Task id.")
@click.option("--since", type=TIME, help="Start from this time instead of now.")
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line, as stored.")
@click.option("--count", type=click.IntRange(min=1), help="Exit after this many events.")
def tail(
    *,
    types: tuple[str, ...],
    task_names: tuple[str, ...],
    hostnames: tuple[str, ...],
    task_ids: tuple[str, ...],
    since: float | None,
    as_json: bool,
    count: int | None,
    **flags: Any,
) -> None:
    """Show events as they land (filters repeat; each given filter must match)."""
    wanted = EventFilter(
        frozenset(types), frozenset(task_names), frozenset(hostnames), frozenset(task_ids)
    )
    scan = _scan(flags, since=since, follow=True)
    shown = 0
    with _reported(), suppress(KeyboardInterrupt):  # Ctrl-C is how a live view ends
        for event in read_events(scan):
            if not wanted.matches(event.data):
                continue
            click.echo(event.json_line().decode() if as_json else format_event(event.data))
            shown += 1
            if shown == count:
                return


SOURCE = click.option(
    "--source",
    type=click.Choice(["auto", "tables", "events"]),
    default="auto",
    show_default=True,
    help="tables: the materializer's tables (fast); events: the events topic; auto: the tables "
    "when they exist and hold the answer.",
)


def _from_table(config: Config, source: str, read: Callable[[], Any]) -> Any:
    """What ``read`` finds in the tables, or None to use the events topic instead."""
    if source == "events":
        return None
    try:
        with _reported():
            return read()
    except click.ClickException:
        if source == "tables":
            raise
        return None


@click.command()
@click.argument("task_id")
@setting_options(*_READER_SETTINGS, "tasks_topic")
@click.option("--since", type=TIME, help="Skip records before this time (faster on big topics).")
@click.option("--json", "as_json", is_flag=True, help="The timeline as one JSON object.")
@SOURCE
def timeline(task_id: str, since: float | None, as_json: bool, source: str, **flags: Any) -> None:
    """Every event of one task in order, the time between steps and the final state.

    From the events topic it reads only the partition the task id maps to; from the tasks
    table, one step per state the task reached.
    """
    config = _settings(flags)
    row = _from_table(
        config,
        source,
        lambda: lookup_task(config.bootstrap_servers, task_id, config.tasks_topic),
    )
    if row is not None:
        result, used = timeline_from_row(task_id, row), config.tasks_topic
    elif source == "tables":
        raise click.ClickException(f"no task {task_id} in {config.tasks_topic}")
    else:
        scan = Scan(
            config.kafka_bootstrap_servers,
            config.topic,
            task_id=task_id,
            since=since,
            progress=True,
        )
        with _reported():
            events = [event.data for event in read_events(scan)]
        if not events:
            raise click.ClickException(f"no events for task {task_id} in {scan.topic}")
        result, used = build_timeline(task_id, events), config.topic
    if as_json:
        click.echo(orjson.dumps({**dataclasses.asdict(result), "source": used}, default=repr))
    else:
        click.echo(f"{format_timeline(result)}\nsource: {used}")


@click.command("replay")
@setting_options(*_READER_SETTINGS, "event_exchange")
@click.option("--since", type=TIME, required=True, help="Start of the range.")
@click.option("--until", type=TIME, help="End of the range (default: the end of the topic).")
@click.option("--type", "types", multiple=True, help="Only these event types (patterns).")
@click.option(
    "--to",
    "target",
    required=True,
    callback=_checked_target,
    help="jsonl:PATH (jsonl:- for stdout) or an amqp:// URL (vhost in the path).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=1000.0,
    show_default=True,
    help="At most this many events per second (0: no limit).",
)
def replay_command(
    since: float,
    until: float | None,
    types: tuple[str, ...],
    target: str,
    rate: float,
    **flags: Any,
) -> None:
    """Export a time range to a file, or re-publish it unchanged onto a Celery event exchange."""
    config = _settings(flags)
    scan = Scan(
        config.kafka_bootstrap_servers, config.topic, since=since, until=until, progress=True
    )
    wanted = EventFilter(types=frozenset(types))
    limiter = RateLimiter(rate, burst=max(1, int(rate / 10))) if rate else None
    with _reported(), open_target(target, config.event_exchange) as sink:
        events = (event for event in read_events(scan) if wanted.matches(event.data))
        count = replay(events, sink, limiter)
    click.echo(f"replayed {count} events", err=True)


@click.command()
@setting_options(*_READER_SETTINGS, "tasks_topic", "workers_topic")
@click.option("--at", type=TIME, help="The state as it was at this time (default: now).")
@click.option("--since", type=TIME, help="Ignore older records (faster; older tasks partial).")
@click.option(
    "--stuck-after",
    type=DURATION,
    default="10m",
    show_default=True,
    help="Report tasks in RECEIVED or STARTED for longer than this.",
)
@click.option(
    "--max-tasks",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Tasks kept in memory (the oldest are forgotten beyond it).",
)
@click.option("--json", "as_json", is_flag=True, help="The summary as one JSON object.")
@SOURCE
def state(
    *,
    at: float | None,
    since: float | None,
    stuck_after: float,
    max_tasks: int,
    as_json: bool,
    source: str,
    **flags: Any,
) -> None:
    """The cluster's task state (celery.events.state), summarised: from the materializer's
    tables, or rebuilt from the events topic (always with --at or --since)."""
    config = _settings(flags)
    moment = time.time() if at is None else at
    historic = at is not None or since is not None
    state = (
        None if historic else _from_table(config, source, lambda: _table_state(config, max_tasks))
    )
    used = config.tasks_topic
    if state is None:
        if source == "tables" and historic:
            raise click.UsageError("--at and --since need --source events")
        if source == "tables":
            raise click.ClickException(f"no tasks in {config.tasks_topic}")
        scan = _scan(flags, since=since, until=moment, progress=True)
        builder = StateBuilder(max_tasks)
        with _reported():
            for event in read_events(scan):
                builder.feed(event.data, event.received_at)
        state, used = builder.state, config.topic
    summary = summarise(state, moment, stuck_after, used)
    click.echo(_dump(summary) if as_json else format_summary(summary))


def _table_state(config: Config, max_tasks: int) -> Any:
    async def read() -> Any:
        tasks, workers = await asyncio.gather(
            read_table(config.bootstrap_servers, config.tasks_topic),
            read_table(config.bootstrap_servers, config.workers_topic),
        )
        return table_state(tasks, workers, max_tasks) if tasks else None

    return asyncio.run(read())


COMMANDS = (tail, timeline, replay_command, state)
