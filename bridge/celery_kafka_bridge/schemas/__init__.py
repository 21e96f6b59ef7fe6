"""JSON Schemas (draft 2020-12) of the events topic: one per Celery event type for the record
value, ``custom`` for any other type (events a task sends), and ``headers`` for the headers."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import orjson

HEADERS = "headers"
CUSTOM = "custom"


def schema_names() -> list[str]:
    """Every schema shipped: the event types, ``custom`` and ``headers``."""
    return sorted(
        p.name.removesuffix(".json") for p in files(__name__).iterdir() if p.name.endswith(".json")
    )


def schema_text(name: str) -> str:
    """The schema file as shipped; KeyError if there is none of that name."""
    if name not in schema_names():
        raise KeyError(name)
    return files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def schema_for(event_type: str) -> dict[str, Any]:
    """The schema a record value of this event type follows (``custom`` for unlisted types)."""
    names = schema_names()
    name = event_type if event_type in names and event_type not in {HEADERS, CUSTOM} else CUSTOM
    schema: dict[str, Any] = orjson.loads(schema_text(name))
    return schema
