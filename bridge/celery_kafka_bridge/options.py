"""Command-line flags generated from `Config`, so flags and ``BRIDGE_*`` variables never drift."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import click

from celery_kafka_bridge.config import ALIASES, ENV_PREFIX, Config

F = typing.TypeVar("F", bound=Callable[..., Any])


def setting_options(*names: str) -> Callable[[F], F]:
    """One flag per named `Config` field; unset flags fall back to ``BRIDGE_*``, then defaults."""

    def decorate(func: F) -> F:
        for name in reversed(names):
            field = Config.model_fields[name]
            flag = "--" + name.replace("_", "-")
            env = f"{ENV_PREFIX}{name.upper()}"
            default = "unset" if field.default is None else field.default
            help_text = f"{field.description} [env: {env}; default: {default}]"
            choices = _literal_choices(field.annotation)
            if field.annotation is bool:
                flag = f"{flag}/--no-{flag[2:]}"
            old_flags = ["--" + alias.replace("_", "-") for alias in ALIASES.get(name, ())]
            option = click.option(
                flag,
                *old_flags,
                name,
                default=None,
                help=help_text,
                type=click.Choice(choices) if choices else None,
            )
            func = option(func)
        return func

    return decorate


def _literal_choices(annotation: Any) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(arg) for arg in typing.get_args(annotation)]
    return []
