"""How hard and how long each scenario pushes: a short profile for CI, a long one on demand."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Every knob of the scenarios; rates are events per second, durations seconds."""

    name: str
    kill_seconds: float
    kill_interval: float
    kill_rate: float
    restart_seconds: float
    restart_rate: float
    freeze_seconds: float
    freeze_rate: float
    kafka_swap_seconds: float
    kafka_swap_rate: float
    cuts: int
    cut_interval: float
    cut_rate: float
    bad_messages: int
    good_events: int
    soak_seconds: float
    soak_warmup: float
    soak_rate: float
    produce_phase_seconds: float
    produce_rate: float


SHORT = Profile(
    name="short",
    kill_seconds=20,
    kill_interval=4,
    kill_rate=1_000,
    restart_seconds=12,
    restart_rate=1_000,
    freeze_seconds=10,
    freeze_rate=800,
    kafka_swap_seconds=12,
    kafka_swap_rate=800,
    cuts=4,
    cut_interval=3,
    cut_rate=1_000,
    bad_messages=2_000,
    good_events=2_000,
    soak_seconds=30,
    soak_warmup=10,
    soak_rate=1_000,
    produce_phase_seconds=4,
    produce_rate=800,
)

LONG = Profile(
    name="long",
    kill_seconds=60,
    kill_interval=4,
    kill_rate=2_000,
    restart_seconds=30,
    restart_rate=2_000,
    freeze_seconds=30,
    freeze_rate=1_000,
    kafka_swap_seconds=30,
    kafka_swap_rate=1_000,
    cuts=15,
    cut_interval=4,
    cut_rate=2_000,
    bad_messages=10_000,
    good_events=10_000,
    soak_seconds=600,
    soak_warmup=60,
    soak_rate=2_000,
    produce_phase_seconds=15,
    produce_rate=1_500,
)

PROFILES = {p.name: p for p in (SHORT, LONG)}
