"""Turn one Celery event message into Kafka records: pure functions, no I/O.

A message body is one event (a JSON object) or a list of events (``task.multi``). Each event
becomes one record; anything that is not a valid event becomes a dead letter carrying its
original bytes and the reason. Pickle and other unknown serializers are never deserialized.

orjson parses and writes JSON on the fast path. What it refuses, or could have altered (an
integer past 64 bits, which it reads as a float), is read again as kombu reads it
(`jsoncompat`), so whatever Celery's own receiver accepts becomes a record.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import msgpack
import orjson

from celery_kafka_bridge import jsoncompat

JSON_CONTENT_TYPE = "application/json"
MSGPACK_CONTENT_TYPE = "application/x-msgpack"
"""What kombu labels msgpack with."""
MSGPACK_CONTENT_TYPES = frozenset({MSGPACK_CONTENT_TYPE, "application/msgpack"})
_JSON_HEADER = ("content_type", JSON_CONTENT_TYPE.encode())
NOT_STRICT_HEADER = ("json_strict", b"false")
"""On records whose value only Python's json reads (NaN, infinities, lone surrogates, integers
past 64 bits)."""
_MAX_ERROR_CHARS = 300
_NUMBER = (int, float)  # a tuple: isinstance with an `int | float` union is twice as slow
_PLUS = ord("+")

_FAST, _PYTHON, _MSGPACK = "orjson", "python", "msgpack"
"""Which parser read the body: orjson (the fast path), Python's json (the exact fallback for
JSON), msgpack."""

_Header = tuple[str, bytes]
Headers = list[_Header]
FixedHeaders = tuple[_Header, ...]


class Reason(StrEnum):
    """Why a message, or one element of a list, was dead-lettered."""

    OVERSIZED = "oversized"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    UNDECODABLE = "undecodable"
    NOT_AN_OBJECT = "not_an_object"
    EMPTY_LIST = "empty_list"
    MISSING_TYPE = "missing_type"
    UNENCODABLE = "unencodable"
    KAFKA_REJECTED = "kafka_rejected"
    """A record Kafka refused for good (too large, invalid), dead-lettered by the writer."""


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
    topic: str | None = None
    """Where a rule routes it; None: the events topic."""
    verdict: Verdict | None = None
    """What the shaping rules made of it, when there are rules."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the shaping rules do to one event (`Shaper`)."""

    changed: bool = False
    """A rule changed a field: the value is the canonical JSON of the changed event."""
    drop: bool = False
    topic: str | None = None
    headers: FixedHeaders = ()
    """Added to the record's own (``task_name``, ``shaped_by``)."""
    applied: tuple[tuple[str, str], ...] = ()
    """(rule, action) of each action taken, for the metrics."""


class Shaper(Protocol):
    """Called with each event before it is encoded; may change the event in place."""

    def __call__(self, event: dict[str, Any], event_type: str) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that is not a valid event, ready for the dead-letter topic."""

    reason: Reason
    value: bytes
    headers: Headers


Outcome = EventRecord | DeadLetter


def event_id(event: dict[str, Any]) -> str:
    """Deterministic id: BLAKE2b-128 of the event's canonical JSON (`jsoncompat.canonical`:
    keys sorted, orjson's bytes for strict JSON); ``event`` as parsed, without kombu's hook."""
    return digest(jsoncompat.canonical(event)[0])


def _canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def digest(canonical: bytes) -> str:
    """The ``event_id`` of an event written as ``canonical`` (its canonical JSON)."""
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def decode(envelope: Envelope, max_bytes: int, shaper: Shaper | None = None) -> list[Outcome]:
    """Every event of the message as a record, every bad part as a dead letter; ``shaper``
    (the rules) sees each event first."""
    body = envelope.body
    if len(body) > max_bytes:
        size = str(len(body)).encode()
        truncated = [("truncated", b"true"), ("original_size", size)]
        detail = f"{len(body)} bytes > {max_bytes}"
        return [_dead(envelope, Reason.OVERSIZED, detail, body[:max_bytes], truncated)]
    content_type = (envelope.content_type or "").partition(";")[0].strip().lower()
    if content_type == JSON_CONTENT_TYPE:
        try:
            return _outcomes(envelope, orjson.loads(body), body, _FAST, shaper)
        except (orjson.JSONDecodeError, _Inexact):
            return _exact_json(envelope, shaper)
    if content_type in MSGPACK_CONTENT_TYPES:
        try:
            payload = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            return [_dead(envelope, Reason.UNDECODABLE, str(exc), body)]
        return _outcomes(envelope, payload, None, _MSGPACK, shaper)
    detail = f"content type {content_type or 'missing'!r} is not json or msgpack"
    return [_dead(envelope, Reason.UNSUPPORTED_CONTENT_TYPE, detail, body)]


class _Inexact(Exception):
    """The fast path met a value orjson cannot write or may have altered."""


def _exact_json(envelope: Envelope, shaper: Shaper | None) -> list[Outcome]:
    """A JSON body orjson refused or may have altered, read as kombu reads it."""
    try:
        payload = jsoncompat.loads_python(envelope.body)
    except (ValueError, RecursionError) as exc:
        detail = str(exc) or type(exc).__name__
        return [_dead(envelope, Reason.UNDECODABLE, detail, envelope.body)]
    return _outcomes(envelope, payload, envelope.body, _PYTHON, shaper)


def _outcomes(
    envelope: Envelope, payload: Any, raw: bytes | None, parser: str, shaper: Shaper | None
) -> list[Outcome]:
    """``raw``: the body, when it is JSON that can be passed through."""
    received_at = ("received_at", str(envelope.received_at_ms).encode())
    if isinstance(payload, dict):
        return [_judge(envelope, received_at, payload, raw, None, parser, shaper)]
    if isinstance(payload, list) and payload:
        return [
            _judge(envelope, received_at, item, None, i, parser, shaper)
            for i, item in enumerate(payload)
        ]
    if isinstance(payload, list):
        return [_dead(envelope, Reason.EMPTY_LIST, "list holds no events", envelope.body)]
    kind = type(payload).__name__
    return [_dead(envelope, Reason.NOT_AN_OBJECT, f"body is a {kind}", envelope.body)]


def _judge(  # noqa: PLR0917 - positional: called once per event
    envelope: Envelope,
    received_at: _Header,
    item: Any,
    raw: bytes | None,
    index: int | None,
    parser: str,
    shaper: Shaper | None,
) -> Outcome:
    """One decoded event (or list element) as a record, or a dead letter saying why not.

    ``raw`` is the message body when it holds exactly this one event: it is written as is.
    Otherwise the value is the canonical JSON that ``event_id`` hashes, so it is encoded once.
    ``shaper`` sees (and may change) the event before anything is read from it; a changed
    event is written as its canonical JSON, on which ``event_id`` is computed.
    """
    event_type = item.get("type") if isinstance(item, dict) else None
    if not isinstance(event_type, str) or not event_type:
        return _untyped(envelope, item, index, parser)
    verdict = None
    if shaper is not None:
        verdict = shaper(item, event_type)
        if verdict.changed:
            raw = None
    hostname, uuid, timestamp = item.get("hostname"), item.get("uuid"), item.get("timestamp")
    if parser is _FAST:
        canonical, strict = _strict_canonical(item), True
    else:
        exact = _exact(envelope, item, index, parser)
        if isinstance(exact, DeadLetter):
            return exact
        canonical, strict, event_type, hostname, uuid, timestamp = exact
    # The headers in contract order: event_type, hostname, task_id (when strings), then the rest.
    headers: Headers = [("event_type", event_type.encode())]
    host = task_id = None
    if isinstance(hostname, str):
        host = hostname.encode()
        headers.append(("hostname", host))
    else:
        hostname = None
    if isinstance(uuid, str):
        task_id = uuid.encode()
        headers.append(("task_id", task_id))
    headers += (("event_id", digest(canonical).encode()), _JSON_HEADER, received_at)
    if not strict:
        headers.append(NOT_STRICT_HEADER)
    topic = None
    if verdict is not None:
        headers += verdict.headers
        topic = verdict.topic
    return EventRecord(
        task_id or host or None,  # the key: the task uuid, else the worker hostname, else none
        canonical if raw is None else raw,
        headers,
        event_type,
        hostname,
        float(timestamp) if isinstance(timestamp, _NUMBER) else None,
        topic,
        verdict,
    )


def _untyped(envelope: Envelope, item: Any, index: int | None, parser: str) -> DeadLetter:
    """An element that is no object, or an event without a type, as a dead letter."""
    if isinstance(item, dict):
        reason, detail = Reason.MISSING_TYPE, "no string 'type' field"
    else:
        reason, detail = Reason.NOT_AN_OBJECT, f"element is a {type(item).__name__}"
    return _dead(envelope, reason, detail, _reencode(item, parser), _index(index))


def _strict_canonical(item: dict[str, Any]) -> bytes:
    """The fast path's canonical JSON; `_Inexact` where orjson cannot write it as kombu reads."""
    try:
        canonical = _canonical(item)
    except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes
        raise _Inexact from exc
    # orjson writes floats of 1e16 and up with "e+"; an integer past 64 bits is one now.
    # An int operand makes `in` a memchr: 20 ns where b"e+" alone costs 300.
    if _PLUS in canonical and b"e+" in canonical:
        raise _Inexact
    return canonical


def _exact(
    envelope: Envelope, item: dict[Any, Any], index: int | None, parser: str
) -> tuple[bytes, bool, str, Any, Any, Any] | DeadLetter:
    """An event the fast path did not take: `jsoncompat.canonical`, whether it is strict, and
    its type, hostname, uuid and timestamp fit for headers and metrics; or why it cannot be."""
    try:
        if not all(isinstance(name, str) for name in item):
            raise jsoncompat.NotJson("field names must be strings")
        canonical, strict = jsoncompat.canonical(item, parser is _MSGPACK)
    except (jsoncompat.NotJson, RecursionError, ValueError) as exc:
        dead = _reencode(item, parser)
        return _dead(envelope, Reason.UNENCODABLE, str(exc), dead, _index(index))
    fields = item["type"], item.get("hostname"), item.get("uuid")
    timestamp = item.get("timestamp")
    if strict:
        return canonical, strict, *fields, timestamp
    # A lone surrogate can be neither header bytes nor a metric label; NaN is no time.
    event_type, hostname, uuid = map(_encodable, fields)
    return canonical, strict, event_type, hostname, uuid, timestamp if _finite(timestamp) else None


def _encodable(value: Any) -> Any:
    """A string with its lone surrogates as ``\\uXXXX`` text; anything else as it is."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    return value


def _finite(value: Any) -> bool:
    try:
        return isinstance(value, _NUMBER) and math.isfinite(value)
    except OverflowError:  # an integer past a float's range
        return False


def _index(index: int | None) -> Headers:
    return [] if index is None else [("index", str(index).encode())]


def _reencode(item: Any, parser: str) -> bytes:
    """A decoded element as bytes for the dead-letter topic (JSON where possible)."""
    try:
        return jsoncompat.canonical(item, parser is _MSGPACK)[0]
    except (jsoncompat.NotJson, RecursionError, ValueError):
        pass
    try:
        return repr(item).encode("utf-8", "backslashreplace")
    except RecursionError:
        return b"(nested too deep to write)"


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


_REJECTION_HEADERS = frozenset({"reason", "error", "truncated", "original_size"})


def kafka_rejected(outcome: Outcome, error: str, shrink: bool) -> DeadLetter | None:
    """A record Kafka refused as a dead letter: its value (halved if ``shrink``: refused for its
    size, or a dead letter of this kind refused again), then the rejection headers and the
    record's own; the size of the value first refused stays in ``original_size``.
    None once there is nothing left to shrink."""
    headers = dict(outcome.headers)
    first_refusal = not (
        isinstance(outcome, DeadLetter) and outcome.reason is Reason.KAFKA_REJECTED
    )
    original_size = len(outcome.value) if first_refusal else int(headers["original_size"])
    value = outcome.value
    if shrink or not first_refusal:
        if not value:
            return None
        value = value[: len(value) // 2]
    rejection: Headers = [
        ("reason", Reason.KAFKA_REJECTED.value.encode()),
        ("error", error[:_MAX_ERROR_CHARS].encode(errors="replace")),
        ("truncated", b"true" if len(value) < original_size else b"false"),
        ("original_size", str(original_size).encode()),
    ]
    if first_refusal and isinstance(outcome, DeadLetter):
        rejection.append(("original_reason", outcome.reason.value.encode()))
    kept = [h for h in outcome.headers if h[0] not in _REJECTION_HEADERS]
    return DeadLetter(Reason.KAFKA_REJECTED, value, rejection + kept)
