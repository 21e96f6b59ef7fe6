"""Where kombu's Redis transport publishes Celery's events, and what a published message holds:
pure functions, no I/O.

On Redis, Celery's event exchange is a fanout (`celery.events.event.get_exchange`); kombu PUBLISHes
each event on the channel ``<global_keyprefix><fanout prefix><exchange>[/<routing key>]``, the
fanout prefix being ``/<db>.`` unless the workers' ``fanout_prefix`` says otherwise, the routing
key present when ``fanout_patterns`` is on. The message is kombu's JSON wrapper of the event body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from celery_kafka_bridge.codec import Envelope
from celery_kafka_bridge.redis.options import TransportOptions

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True, slots=True)
class Subscription:
    """A channel name, or a pattern (PSUBSCRIBE) when each routing key has its own channel."""

    name: str
    pattern: bool


def subscription(exchange: str, db: int, options: TransportOptions) -> Subscription:
    """What to subscribe to for every event the workers publish on ``exchange``."""
    prefix = options.fanout_prefix
    fanout = f"/{db}." if prefix is True else (prefix or "")
    base = f"{options.global_keyprefix}{fanout}{exchange}"
    if options.fanout_patterns:
        return Subscription(_GLOB_SPECIAL.sub(r"\\\1", base) + "/*", pattern=True)
    return Subscription(base, pattern=False)


def message_id(data: bytes) -> bytes:
    """The same for every replica that received this publish (kombu gives each a fresh uuid
    delivery tag, so two publishes of one event differ)."""
    return hashlib.blake2b(data, digest_size=16).digest()


def envelope(channel: bytes, data: bytes, received_at_ms: int) -> Envelope:
    """The event body and its labels from kombu's wrapper; a wrapper that is not one keeps the raw
    bytes without a content type, so the codec dead-letters it."""
    try:
        wrapper = orjson.loads(data)
        return Envelope(
            _body(wrapper),
            wrapper.get("content-type"),
            wrapper.get("content-encoding"),
            wrapper["properties"]["delivery_info"]["routing_key"],
            received_at_ms,
        )
    except (orjson.JSONDecodeError, binascii.Error, KeyError, TypeError, AttributeError):
        routing_key = channel.rpartition(b"/")[2].decode(errors="replace")
        return Envelope(data, None, None, routing_key, received_at_ms)


def _body(wrapper: dict[str, Any]) -> bytes:
    body = wrapper["body"]
    if wrapper["properties"].get("body_encoding") == "base64":
        return base64.b64decode(body, validate=True)
    return body.encode() if isinstance(body, str) else bytes(body)
