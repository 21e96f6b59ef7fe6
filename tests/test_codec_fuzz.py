"""Fuzzing the decoder with near-valid Celery messages: it never raises and accounts for all input.

Generators build what a broken or hostile publisher could send: real-looking events with fields of
the wrong type, JSON mutated byte by byte, truncated msgpack, deep nesting, odd content types.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_kafka_bridge.codec import DeadLetter, Envelope, EventRecord, Outcome, Reason, decode

MAX = 50_000
fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=8)
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.integers(-(2**31), 2**31), inner, max_size=3)
    ),
    max_leaves=10,
)
field_values = st.one_of(st.text(max_size=30), anything)
event_types = st.sampled_from(
    ["task-received", "task-started", "task-succeeded", "worker-heartbeat", "task-progress"]
)


@st.composite
def near_events(draw: st.DrawFn) -> dict[Any, Any]:
    """A Celery event whose fields may be missing, of the wrong type, or joined by junk."""
    event: dict[Any, Any] = {
        "type": draw(event_types),
        "uuid": draw(st.uuids()).hex,
        "hostname": "celery@worker-1",
        "timestamp": 1_700_000_000.5,
        "clock": 7,
        "pid": 42,
        "utcoffset": 0,
    }
    for name in draw(st.lists(st.sampled_from(sorted(event)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del event[name]
        else:
            event[name] = draw(field_values)
    event.update(
        draw(
            st.dictionaries(
                st.text(max_size=8) | st.integers(-(2**31), 2**31), anything, max_size=2
            )
        )
    )
    return event


def deep_json(depth: int, kind: str) -> bytes:
    opener, closer = ("[", "]") if kind == "list" else ('{"a":', "}")
    inner = (opener * depth + "1" + closer * depth) if kind == "dict" else "[" * depth + "]" * depth
    return b'{"type": "task-received", "deep": ' + inner.encode() + b"}"


def deep_msgpack(depth: int) -> bytes:
    """A map {"type": "task-received", "deep": [[[...nil...]]]} nested ``depth`` arrays deep."""
    head: bytes = b"\x82" + msgpack.packb("type") + msgpack.packb("task-received")
    head += msgpack.packb("deep")
    return head + b"\x91" * depth + b"\xc0"


def mutate(data: st.DataObject, body: bytes) -> bytes:
    """Truncate, flip, insert or delete bytes of a valid body."""
    if not body:
        return body
    at = data.draw(st.integers(0, len(body) - 1))
    how = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "none"]))
    if how == "truncate":
        return body[:at]
    if how == "flip":
        return body[:at] + bytes([body[at] ^ data.draw(st.integers(1, 255))]) + body[at + 1 :]
    if how == "insert":
        return body[:at] + data.draw(st.binary(min_size=1, max_size=4)) + body[at:]
    if how == "delete":
        return body[:at] + body[at + data.draw(st.integers(1, 8)) :]
    return body


def encode(payload: Any, fmt: str) -> bytes:
    if fmt == "json":
        return orjson.dumps(payload, default=repr, option=orjson.OPT_NON_STR_KEYS)
    return msgpack.packb(payload, default=repr)  # type: ignore[no-any-return]


CONTENT_TYPES = {"json": "application/json", "msgpack": "application/x-msgpack"}


def decoded_payload(body: bytes, content_type: str | None) -> Any:
    """What the body parses to, independently of the codec; None if it does not parse."""
    try:
        if content_type == CONTENT_TYPES["json"]:
            return orjson.loads(body)
        if content_type in {CONTENT_TYPES["msgpack"], "application/msgpack"}:
            return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    return None


def assert_well_formed(body: bytes, content_type: str | None, outcomes: list[Outcome]) -> None:
    """Every output is a valid record or a dead letter with a known reason; nothing is dropped."""
    assert outcomes
    for outcome in outcomes:
        if isinstance(outcome, EventRecord):
            # As docs/record.md says to read them: non-strict values with Python's json.
            strict = dict(outcome.headers).get("json_strict") != b"false"
            value = orjson.loads(outcome.value) if strict else json.loads(outcome.value)
            assert isinstance(value, dict)
            assert isinstance(value.get("type"), str)
            assert value["type"]
            assert value["type"] == outcome.event_type
            assert len(dict(outcome.headers)["event_id"]) == 32
        else:
            assert isinstance(outcome, DeadLetter)
            assert dict(outcome.headers)["reason"] == Reason(outcome.reason).value.encode()
    payload = decoded_payload(body, content_type) if len(body) <= MAX else None
    if isinstance(payload, list) and payload:
        assert len(outcomes) == len(payload), "a list element was dropped or duplicated"
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, DeadLetter):
                assert dict(outcome.headers)["index"] == str(index).encode()
    else:
        assert len(outcomes) == 1


def run(body: bytes, content_type: str | None) -> list[Outcome]:
    outcomes = decode(Envelope(body, content_type, "utf-8", "task.fuzz", 1), MAX)
    assert_well_formed(body, content_type, outcomes)
    return outcomes


@fuzz
@given(
    st.lists(near_events() | anything, min_size=0, max_size=5),
    st.booleans(),
    st.sampled_from(["json", "msgpack"]),
    st.data(),
)
def test_mutated_near_valid_events_never_raise_and_account_for_every_element(
    batch: list[Any], single: bool, fmt: str, data: st.DataObject
) -> None:
    payload = batch[0] if single and batch else batch
    body = mutate(data, encode(payload, fmt))
    run(body, CONTENT_TYPES[fmt])


@fuzz
@given(near_events(), st.sampled_from(["json", "msgpack"]))
def test_events_with_wrong_field_types_become_records_exactly_when_type_is_a_string(
    event: dict[Any, Any], fmt: str
) -> None:
    body = encode(event, fmt)
    (outcome,) = run(body, CONTENT_TYPES[fmt])
    # Judged on what was sent: JSON has no bytes, so a bytes `type` is sent as its repr.
    sent = decoded_payload(body, CONTENT_TYPES[fmt]) or {}
    has_type = isinstance(sent.get("type"), str) and bool(sent["type"])
    if not has_type:
        assert isinstance(outcome, DeadLetter)
        assert outcome.reason in {Reason.MISSING_TYPE, Reason.UNENCODABLE, Reason.UNDECODABLE}


@fuzz
@given(st.integers(1, 3_000), st.sampled_from(["list", "dict", "msgpack"]))
def test_deep_nesting_is_a_record_or_a_dead_letter_never_a_crash(depth: int, kind: str) -> None:
    if kind == "msgpack":
        run(deep_msgpack(depth), CONTENT_TYPES["msgpack"])
    else:
        run(deep_json(depth, kind), CONTENT_TYPES["json"])


@fuzz
@given(
    near_events(),
    st.sampled_from(["json", "msgpack"]),
    st.one_of(
        st.none(),
        st.sampled_from(
            [
                "application/json; charset=utf-8",
                "APPLICATION/JSON",
                "application/msgpack",
                "application/x-python-serialize",
                "text/plain",
                "",
            ]
        ),
        st.text(max_size=30),
    ),
)
def test_any_content_type_label_is_handled(
    event: dict[Any, Any], fmt: str, label: str | None
) -> None:
    run(encode(event, fmt), label)
