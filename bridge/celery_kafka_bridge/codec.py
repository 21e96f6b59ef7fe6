"""Turn one Celery event message into Kafka records: pure functions, no I/O.

A message body is one event (a JSON object) or a list of events (``task.multi``). Each event
becomes one record; anything that is not a valid event becomes a dead letter carrying its
original bytes and the reason. Pickle and other unknown serializers are never deserialized.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgpack
import orjson

JSON_CONTENT_TYPE = "application/json"
MSGPACK_CONTENT_TYPES = frozenset({"application/x-msgpack", "application/msgpack"})
_JSON_HEADER = ("content_type", JSON_CONTENT_TYPE.encode())
_MAX_ERROR_CHARS = 300
_NUMBER = (int, float)  # a tuple: isinstance with an `int | float` union is twice as slow

_Header = tuple[str, bytes]
Headers = list[_Header]


class Reason(StrEnum):
    """Why a message, or one element of a list, was dead-lettered."""

    OVERSIZED = "oversized"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    UNDECODABLE = "undecodable"
    NOT_AN_OBJECT = "not_an_object"
    EMPTY_LIST = "empty_list"
    MISSING_TYPE = "missing_type"
    UNENCODABLE = "unencodable"


@dataclass(slots=True)
class Envelope:
    """What the AMQP side received: the raw body and how it was labelled."""

    body: bytes
    content_type: str | None
    content_encoding: str | None
    routing_key: str
    received_at_ms: int


@dataclass(slots=True)
class EventRecord:
    """One event, ready for the events topic (not frozen: a frozen init costs 4x, per event)."""

    key: bytes | None
    value: bytes
    headers: Headers
    event_type: str
    hostname: str | None = None
    timestamp: float | None = None
    """The worker's clock when it sent the event (Celery's ``timestamp`` field)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that is not a valid event, ready for the dead-letter topic."""

    reason: Reason
    value: bytes
    headers: Headers


Outcome = EventRecord | DeadLetter


def event_id(event: dict[str, Any]) -> str:
    """Deterministic id: BLAKE2b-128 of the event's canonical JSON (keys sorted, orjson)."""
    return _digest(_canonical(event))


def _canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def _digest(canonical: bytes) -> str:
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def decode(envelope: Envelope, max_bytes: int) -> list[Outcome]:
    """Every event of the message as a record, every bad part as a dead letter."""
    body = envelope.body
    if len(body) > max_bytes:
        size = str(len(body)).encode()
        truncated = [("truncated", b"true"), ("original_size", size)]
        detail = f"{len(body)} bytes > {max_bytes}"
        return [_dead(envelope, Reason.OVERSIZED, detail, body[:max_bytes], truncated)]
    parsed = _parse(envelope)
    if isinstance(parsed, DeadLetter):
        return [parsed]
    payload, raw = parsed
    received_at = ("received_at", str(envelope.received_at_ms).encode())
    if isinstance(payload, dict):
        return [_judge(envelope, received_at, payload, raw, index=None)]
    if isinstance(payload, list) and payload:
        return [
            _judge(envelope, received_at, item, None, index=i) for i, item in enumerate(payload)
        ]
    if isinstance(payload, list):
        return [_dead(envelope, Reason.EMPTY_LIST, "list holds no events", body)]
    kind = type(payload).__name__
    return [_dead(envelope, Reason.NOT_AN_OBJECT, f"body is a {kind}", body)]


def _parse(envelope: Envelope) -> tuple[Any, bytes | None] | DeadLetter:
    """The decoded body, and the raw bytes when they are JSON that can be passed through."""
    body = envelope.body
    content_type = (envelope.content_type or "").partition(";")[0].strip().lower()
    try:
        if content_type == JSON_CONTENT_TYPE:
            return orjson.loads(body), body
        if content_type in MSGPACK_CONTENT_TYPES:
            return msgpack.unpackb(body, raw=False, strict_map_key=False), None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        return _dead(envelope, Reason.UNDECODABLE, str(exc), body)
    detail = f"content type {content_type or 'missing'!r} is not json or msgpack"
    return _dead(envelope, Reason.UNSUPPORTED_CONTENT_TYPE, detail, body)


def _judge(
    envelope: Envelope, received_at: _Header, item: Any, raw: bytes | None, index: int | None
) -> Outcome:
    """One decoded event (or list element) as a record, or a dead letter saying why not.

    ``raw`` is the message body when it holds exactly this one event: it is written as is.
    Otherwise the value is the canonical JSON that ``event_id`` hashes, so it is encoded once.
    """
    if not isinstance(item, dict):
        detail = f"element is a {type(item).__name__}"
        return _dead(envelope, Reason.NOT_AN_OBJECT, detail, _reencode(item), _index(index))
    event_type = item.get("type")
    if not isinstance(event_type, str) or not event_type:
        detail = "no string 'type' field"
        return _dead(envelope, Reason.MISSING_TYPE, detail, _reencode(item), _index(index))
    try:
        canonical = _canonical(item)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return _dead(envelope, Reason.UNENCODABLE, str(exc), _reencode(item), _index(index))
    # The headers in contract order: event_type, hostname, task_id (when strings), then the rest.
    headers: Headers = [("event_type", event_type.encode())]
    host = task_id = None
    hostname = item.get("hostname")
    if isinstance(hostname, str):
        host = hostname.encode()
        headers.append(("hostname", host))
    else:
        hostname = None
    uuid = item.get("uuid")
    if isinstance(uuid, str):
        task_id = uuid.encode()
        headers.append(("task_id", task_id))
    headers += (("event_id", _digest(canonical).encode()), _JSON_HEADER, received_at)
    timestamp = item.get("timestamp")
    return EventRecord(
        task_id or host or None,  # the key: the task uuid, else the worker hostname, else none
        canonical if raw is None else raw,
        headers,
        event_type,
        hostname,
        float(timestamp) if isinstance(timestamp, _NUMBER) else None,
    )


def _index(index: int | None) -> Headers:
    return [] if index is None else [("index", str(index).encode())]


def _reencode(item: Any) -> bytes:
    """A decoded element as bytes for the dead-letter topic (JSON where possible)."""
    try:
        return orjson.dumps(item)
    except (TypeError, orjson.JSONEncodeError):
        return msgpack.packb(item, default=repr)  # type: ignore[no-any-return]


def _dead(
    envelope: Envelope, reason: Reason, error: str, value: bytes, extra: Headers | None = None
) -> DeadLetter:
    headers: Headers = [
        ("reason", reason.value.encode()),
        ("error", error[:_MAX_ERROR_CHARS].encode(errors="replace")),
        ("routing_key", envelope.routing_key.encode(errors="replace")),
        ("content_type", (envelope.content_type or "").encode(errors="replace")),
        ("content_encoding", (envelope.content_encoding or "").encode(errors="replace")),
        ("received_at", str(envelope.received_at_ms).encode()),
    ]
    return DeadLetter(reason, value, headers + (extra or []))
