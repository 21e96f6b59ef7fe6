"""Times and durations as the audit commands accept them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from celery_kafka_bridge.reader.timeparse import format_time, parse_duration, parse_time

NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-90s", NOW - 90),
        ("-15m", NOW - 900),
        ("-1h", NOW - 3600),
        ("-1h30m", NOW - 5400),
        ("-2d", NOW - 172_800),
        ("-1w", NOW - 604_800),
        ("-0.5h", NOW - 1800),
        ("now", NOW),
        ("2024-05-01T11:00:00Z", NOW - 3600),
        ("2024-05-01T13:00:00+02:00", NOW - 3600),
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC).timestamp()),
        ("1714564800", NOW),
        ("1714564800.25", NOW + 0.25),
    ],
)
def test_relative_iso_and_epoch_times_parse_to_epoch_seconds(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == pytest.approx(expected)


def test_a_naive_iso_time_is_read_as_utc() -> None:
    assert parse_time("2024-05-01T12:00:00", now=0) == NOW


@pytest.mark.parametrize("text", ["yesterday", "-1y", "1h", "2024-13-01", ""])
def test_anything_else_is_rejected_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time(text, now=NOW)


def test_durations_accept_units_or_plain_seconds() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45") == 45
    with pytest.raises(ValueError, match="duration"):
        parse_duration("ten minutes")


def test_times_are_printed_as_utc_iso_with_milliseconds() -> None:
    assert format_time(NOW + 0.1234) == "2024-05-01T12:00:00.123Z"
