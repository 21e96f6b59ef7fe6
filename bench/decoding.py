"""The codec's own cost per event, in this process: the captured messages decoded without rules
and with the typical rules file (the share of drain (e)'s extra CPU the shaper itself explains)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.queues import Captured
from celery_kafka_bridge.codec import Envelope, decode
from celery_kafka_bridge.rules import load_rules
from celery_kafka_bridge.shaper import Shaper

_ROUNDS = 3
_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Decoding:
    """Microseconds per event, best of `_ROUNDS` rounds over every message."""

    without_rules_us: float
    with_rules_us: float


def decoding_cost(messages: list[Captured], rules: Path, hash_key: str) -> Decoding:
    """Decode (and, with rules, shape and settle) every message; rounds alternate."""
    envelopes = [
        Envelope(
            m.body,
            m.properties.get("content_type"),
            m.properties.get("content_encoding"),
            m.routing_key,
            0,
        )
        for m in messages
    ]
    parsed = load_rules(rules, {"BRIDGE_HASH_KEY": hash_key})
    events = sum(len(decode(envelope, _MAX_BYTES)) for envelope in envelopes)

    def seconds(shaper: Shaper | None) -> float:
        started = time.perf_counter()
        for envelope in envelopes:
            outcomes = decode(envelope, _MAX_BYTES, shaper)
            if shaper is not None:
                shaper.settle(outcomes)
        return time.perf_counter() - started

    plain, shaped = [], []
    for _ in range(_ROUNDS):
        plain.append(seconds(None))
        shaped.append(seconds(Shaper(parsed)))  # a fresh shaper: its task-name cache fills
    return Decoding(round(min(plain) / events * 1e6, 2), round(min(shaped) / events * 1e6, 2))
