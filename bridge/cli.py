"""Command line: flags mirror the ``BRIDGE_*`` settings; the work lives in the library."""

from __future__ import annotations

import asyncio
import sys
import typing
from collections.abc import Callable
from typing import Any

import click

from bridge.audit_cli import COMMANDS
from bridge.config import ENV_PREFIX, Config
from bridge.demo import run_demo
from bridge.errors import ConfigError
from bridge.logs import describe, setup_logging
from bridge.runner import run_bridge

F = typing.TypeVar("F", bound=Callable[..., Any])


def config_options(func: F) -> F:
    """Add one flag per `Config` field; a flag given on the command line beats the variable."""
    for name, field in reversed(Config.model_fields.items()):
        flag = "--" + name.replace("_", "-")
        env = f"{ENV_PREFIX}{name.upper()}"
        default = "unset" if field.default is None else field.default
        help_text = f"{field.description} [env: {env}; default: {default}]"
        choices = _literal_choices(field.annotation)
        if field.annotation is bool:
            flag = f"{flag}/--no-{flag[2:]}"
        option = click.option(
            flag,
            name,
            default=None,
            help=help_text,
            type=click.Choice(choices) if choices else None,
        )
        func = option(func)
    return func


def _literal_choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return []


def load_config(flags: dict[str, Any]) -> Config:
    """Settings from the environment and the flags given; exit 2 with one line if invalid."""
    try:
        return Config.load(**{k: v for k, v in flags.items() if v is not None})
    except ConfigError as exc:
        click.echo(f"celery-kafka-bridge: {exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Every Celery monitoring event into a durable Kafka topic, at-least-once."""


@main.command()
@config_options
def run(**flags: Any) -> None:
    """Drain Celery's events from RabbitMQ into Kafka until SIGTERM/SIGINT."""
    config = load_config(flags)
    setup_logging(config.log_level, config.log_format)
    try:
        asyncio.run(run_bridge(config))
    except ConfigError as exc:
        click.echo(f"celery-kafka-bridge: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        click.echo(f"celery-kafka-bridge: stopped by {describe(exc)}", err=True)
        sys.exit(1)


@main.command()
@click.option("--seconds", default=30.0, show_default=True, help="How long the demo runs.")
def demo(seconds: float) -> None:
    """Two replicas, a real worker (-E) and a task stream; watch records land in Kafka."""
    run_demo(load_config({}), seconds)


for _command in COMMANDS:
    main.add_command(_command)
