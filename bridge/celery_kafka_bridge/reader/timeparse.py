"""Points in time from the command line: ISO-8601, relative (``-1h30m``), ``now`` or epoch."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import click

_UNITS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_SPAN = r"(?:\d+(?:\.\d+)?[wdhms])+"
_RELATIVE = re.compile("-" + _SPAN)
_DURATION = re.compile(_SPAN)
_PART = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_EPOCH = re.compile(r"\d{9,}(?:\.\d+)?")


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds for ``text``; a naive ISO-8601 time is UTC.

    Relative forms count back from ``now`` (default: the wall clock): ``-90s``, ``-15m``,
    ``-1h30m``, ``-2d``, ``-1w``. Plain numbers of 9+ digits are epoch seconds.
    """
    text = text.strip()
    reference = time.time() if now is None else now
    if text.lower() == "now":
        return reference
    if _RELATIVE.fullmatch(text):
        return reference - parse_duration(text[1:])
    if _EPOCH.fullmatch(text):
        return float(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use ISO-8601 (2024-05-01T12:00:00Z), "
            "a relative time (-1h, -30m, -2d) or 'now'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number of seconds, or units as in ``90s``, ``10m``, ``1h30m``."""
    text = text.strip()
    if _DURATION.fullmatch(text):
        return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration: use seconds or units (90s, 10m, 1h30m)"
        ) from None


def format_time(epoch: float) -> str:
    """ISO-8601 in UTC with milliseconds, for output."""
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A click parameter converted by one of the parsers above."""

    def __init__(self, name: str, parse: Callable[[str], float]) -> None:
        self.name = name
        self._parse = parse

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        try:
            return self._parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = _Parsed("time", parse_time)
DURATION = _Parsed("duration", parse_duration)
