"""Command line: flags mirror the ``BRIDGE_*`` settings; the work lives in the library."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import click

from celery_kafka_bridge import heap
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.demo import run_demo
from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.logs import describe, setup_logging
from celery_kafka_bridge.materialize.service import run_materialize
from celery_kafka_bridge.options import setting_options
from celery_kafka_bridge.reader.commands import COMMANDS
from celery_kafka_bridge.runner import run_bridge
from celery_kafka_bridge.schemas import schema_names, schema_text
from celery_kafka_bridge.sources import sources_of

log = logging.getLogger(__name__)

config_options = setting_options(*Config.model_fields)
"""One flag per `Config` field; a flag given on the command line beats the variable."""


def load_config(flags: dict[str, Any]) -> Config:
    """Settings from the environment and the flags given; exit 2 with one line if invalid."""
    try:
        config = Config.from_flags(flags)
        sources_of(config)  # a bad sources file fails here, as a bad variable does
        return config
    except ConfigError as exc:
        click.echo(f"celery-kafka-bridge: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Every Celery monitoring event into a durable Kafka topic, at-least-once."""


@main.command()
@config_options
def run(**flags: Any) -> None:
    """Drain Celery's events from RabbitMQ or Redis into Kafka until SIGTERM/SIGINT."""
    config = load_config(flags)
    setup_logging(config.log_level, config.log_format)
    heap.freeze_startup_heap()
    try:
        asyncio.run(run_bridge(config))
    except ConfigError as exc:  # found once connected, e.g. a queue with other arguments
        log.critical("%s", exc)
        sys.exit(2)
    except Exception as exc:
        log.critical("stopped by %s", describe(exc))
        sys.exit(1)


@main.command()
@config_options
def materialize(**flags: Any) -> None:
    """Keep the task and worker state tables and the derived events until SIGTERM/SIGINT."""
    config = load_config(flags)
    setup_logging(config.log_level, config.log_format)
    heap.freeze_startup_heap()  # before the tables are loaded: dropped tasks must be collected
    heap.collect_long_lived_less_often()
    try:
        asyncio.run(run_materialize(config))
    except Exception as exc:
        log.critical("stopped by %s", describe(exc))
        sys.exit(1)


@main.command()
@click.option("--seconds", default=30.0, show_default=True, help="How long the demo runs.")
def demo(seconds: float) -> None:
    """Two replicas, a real worker (-E) and a task stream; watch records land in Kafka."""
    run_demo(load_config({}), seconds)


@main.command()
@click.argument("name", required=False)
def schema(name: str | None) -> None:
    """Print the JSON Schema of a record value (NAME: an event type, or custom for any other
    type) or of the record headers (NAME: headers); without NAME, list the names."""
    if name is None:
        click.echo("\n".join(schema_names()))
        return
    try:
        click.echo(schema_text(name), nl=False)
    except KeyError:
        raise click.BadParameter(
            f"no schema {name!r}; one of: {', '.join(schema_names())}", param_hint="NAME"
        ) from None


for _command in COMMANDS:
    main.add_command(_command)
