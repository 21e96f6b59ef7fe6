"""Decoding Celery event messages into records: splitting, keys, headers, ids, dead letters."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_kafka_bridge.codec import (
    DeadLetter,
    Envelope,
    EventRecord,
    Reason,
    decode,
    event_id,
)

MAX = 10_000


def envelope(
    body: bytes, content_type: str | None = "application/json", rk: str = "task.x"
) -> Envelope:
    return Envelope(body, content_type, "utf-8", rk, 1_700_000_000_123)


def task_event(**fields: Any) -> dict[str, Any]:
    return {
        "type": "task-started",
        "uuid": "u-1",
        "hostname": "w@h",
        "clock": 3,
        "timestamp": 1.5,
        "pid": 10,
        "utcoffset": 0,
        **fields,
    }


def test_a_single_json_event_keeps_its_exact_bytes_and_gets_every_header() -> None:
    body = b'{"type":"task-started", "uuid":"u-1","hostname":"w@h"}'
    (record,) = decode(envelope(body), MAX)
    assert isinstance(record, EventRecord)
    assert record.value == body
    assert record.key == b"u-1"
    assert dict(record.headers) == {
        "event_type": b"task-started",
        "hostname": b"w@h",
        "task_id": b"u-1",
        "event_id": event_id(orjson.loads(body)).encode(),
        "content_type": b"application/json",
        "received_at": b"1700000000123",
    }


def test_a_list_becomes_one_record_per_event_in_order() -> None:
    events = [task_event(uuid=f"u-{i}", clock=i) for i in range(4)]
    outcomes = decode(envelope(orjson.dumps(events), rk="task.multi"), MAX)
    assert [orjson.loads(o.value) for o in outcomes] == events
    assert all(isinstance(o, EventRecord) for o in outcomes)
    assert [o.key for o in outcomes if isinstance(o, EventRecord)] == [
        f"u-{i}".encode() for i in range(4)
    ]


def test_each_list_element_is_judged_on_its_own() -> None:
    body = orjson.dumps([task_event(), 5, {"no": "type"}, task_event(uuid="u-2")])
    outcomes = decode(envelope(body, rk="task.multi"), MAX)
    kinds = [o.reason if isinstance(o, DeadLetter) else "ok" for o in outcomes]
    assert kinds == ["ok", Reason.NOT_AN_OBJECT, Reason.MISSING_TYPE, "ok"]
    assert dict(outcomes[1].headers)["index"] == b"1"
    assert outcomes[2].value == b'{"no":"type"}'


def test_worker_events_are_keyed_by_hostname_and_have_no_task_id() -> None:
    (record,) = decode(envelope(orjson.dumps({"type": "worker-heartbeat", "hostname": "w@h"})), MAX)
    assert isinstance(record, EventRecord)
    assert record.key == b"w@h"
    assert "task_id" not in dict(record.headers)


def test_msgpack_events_are_written_as_json() -> None:
    event = task_event()
    (record,) = decode(envelope(msgpack.packb(event), "application/x-msgpack"), MAX)
    assert isinstance(record, EventRecord)
    assert orjson.loads(record.value) == event
    assert dict(record.headers)["content_type"] == b"application/json"


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        (
            pickle.dumps(task_event()),
            "application/x-python-serialize",
            Reason.UNSUPPORTED_CONTENT_TYPE,
        ),
        (b"type: x", "application/x-yaml", Reason.UNSUPPORTED_CONTENT_TYPE),
        (b'{"type": "x"}', None, Reason.UNSUPPORTED_CONTENT_TYPE),
        (b'{"type": ', "application/json", Reason.UNDECODABLE),
        (b'{"type": "\xff"}', "application/json", Reason.UNDECODABLE),
        (msgpack.packb(task_event())[:-3], "application/x-msgpack", Reason.UNDECODABLE),
        (b"[1, 2, 3]", "application/json", Reason.NOT_AN_OBJECT),
        (b'"a string"', "application/json", Reason.NOT_AN_OBJECT),
        (b"[]", "application/json", Reason.EMPTY_LIST),
        (b'{"uuid": "u"}', "application/json", Reason.MISSING_TYPE),
        (b'{"type": ""}', "application/json", Reason.MISSING_TYPE),
    ],
)
def test_bad_input_is_dead_lettered_with_its_reason(
    body: bytes, content_type: str | None, reason: Reason
) -> None:
    outcomes = decode(envelope(body, content_type), MAX)
    assert all(isinstance(o, DeadLetter) for o in outcomes)
    assert reason in {o.reason for o in outcomes if isinstance(o, DeadLetter)}
    headers = dict(outcomes[0].headers)
    assert headers["reason"] == reason.value.encode()
    assert headers["routing_key"] == b"task.x"
    assert headers["content_type"] == (content_type or "").encode()


def test_pickle_is_never_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("unpickled broker input")

    monkeypatch.setattr(pickle, "loads", refuse)
    (dead,) = decode(envelope(pickle.dumps(task_event()), "application/x-python-serialize"), MAX)
    assert isinstance(dead, DeadLetter)
    assert dead.value == pickle.dumps(task_event())


def test_an_oversized_body_is_dead_lettered_truncated_with_its_size() -> None:
    body = orjson.dumps(task_event(result="x" * 20_000))
    (dead,) = decode(envelope(body), MAX)
    assert isinstance(dead, DeadLetter)
    assert dead.reason is Reason.OVERSIZED
    assert dead.value == body[:MAX]
    assert dict(dead.headers)["original_size"] == str(len(body)).encode()


def test_event_id_ignores_key_order_and_serialization() -> None:
    event = task_event()
    reordered = dict(reversed(list(event.items())))
    assert event_id(event) == event_id(reordered)
    assert event_id(event) != event_id({**event, "clock": 4})


def record_key(event: dict[str, Any]) -> bytes | None:
    (record,) = decode(envelope(orjson.dumps(event)), MAX)
    assert isinstance(record, EventRecord)
    return record.key


def test_key_prefers_uuid_then_hostname_then_none() -> None:
    assert record_key({"type": "t", "uuid": "u", "hostname": "h"}) == b"u"
    assert record_key({"type": "t", "uuid": "", "hostname": "h"}) == b"h"
    assert record_key({"type": "t", "uuid": 7, "hostname": "h"}) == b"h"
    assert record_key({"type": "x"}) is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
events = st.dictionaries(st.text(), json_values, max_size=6).map(
    lambda fields: {**fields, "type": "task-custom"}
)


@given(st.lists(events, min_size=1, max_size=6))
def test_any_list_of_events_round_trips_field_for_field(batch: list[dict[str, Any]]) -> None:
    outcomes = decode(envelope(orjson.dumps(batch), rk="task.multi"), 1_000_000)
    assert [orjson.loads(o.value) for o in outcomes] == batch
    assert [dict(o.headers)["event_id"].decode() for o in outcomes] == [event_id(e) for e in batch]


@given(
    st.binary(max_size=300),
    st.sampled_from(
        ["application/json", "application/x-msgpack", "application/x-python-serialize", None]
    ),
)
def test_any_bytes_decode_to_records_or_dead_letters_and_never_raise(
    body: bytes, content_type: str | None
) -> None:
    outcomes = decode(envelope(body, content_type), 1_000_000)
    assert outcomes
    for outcome in outcomes:
        assert isinstance(outcome, EventRecord | DeadLetter)
        if isinstance(outcome, EventRecord):
            assert isinstance(orjson.loads(outcome.value), dict)


def test_a_list_element_is_written_as_the_canonical_json_its_event_id_hashes() -> None:
    events = [{"type": "task-sent", "uuid": "u1", "b": 1, "a": 2}, {"type": "worker-heartbeat"}]
    for event, outcome in zip(
        events, decode(envelope(orjson.dumps(events), rk="task.multi"), MAX), strict=True
    ):
        assert isinstance(outcome, EventRecord)
        assert outcome.value == orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
        assert dict(outcome.headers)["event_id"].decode() == event_id(orjson.loads(outcome.value))
