"""Fidelity: whatever Celery's own receiver reads reaches the events topic, as Celery reads it.

kombu's serializers write the events here (Python's json: NaN, infinities, lone surrogates,
integers of any size, type markers for bytes, datetimes, decimals and UUIDs; msgpack: bytes, ext
types, bytes keys); what the bridge's records give back through the readers' decoding must equal
what kombu decodes from the original body.
"""

from __future__ import annotations

import copy
import math
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import orjson
import pytest
from celery import Celery
from celery.events.receiver import EventReceiver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection  # type: ignore[attr-defined]
from kombu.serialization import dumps, loads

from celery_kafka_bridge import jsoncompat
from celery_kafka_bridge.codec import (
    DeadLetter,
    Envelope,
    EventRecord,
    Outcome,
    Reason,
    decode,
    event_id,
)
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.reader.events import Event
from celery_kafka_bridge.reader.replay import EventExchange, replay
from celery_kafka_bridge.reader.stream import Scan, read_events
from harness.support import Names, Rabbit, new_vhost, poll
from tests.conftest import BridgeFactory

MAX = 1_000_000
MSGPACK = "application/x-msgpack"
EVENT_TYPES = ["task-received", "task-succeeded", "worker-heartbeat", "task-progress"]
cases = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kombu_body(payload: Any, serializer: str) -> tuple[bytes, str, str]:
    """The body, content type and encoding kombu publishes ``payload`` with."""
    content_type, encoding, data = dumps(payload, serializer=serializer)
    return (data.encode() if isinstance(data, str) else data), content_type, encoding


def kombu_reads(body: bytes, content_type: str, encoding: str) -> Any:
    """What Celery's receiver decodes from a body (kombu's registry, msgpack allowed)."""
    return loads(body, content_type, encoding, force=True)


def run(body: bytes, content_type: str, encoding: str, rk: str = "task.x") -> list[Outcome]:
    return decode(Envelope(body, content_type, encoding, rk, 1_700_000_000_000), MAX)


def read_back(record: EventRecord) -> Any:
    """A record's value as the readers (`reader.stream`) decode it."""
    strict = dict(record.headers).get("json_strict") != b"false"
    return jsoncompat.loads(record.value, strict)[0]


def shape(value: Any) -> Any:
    """A comparable form that tells int from float and bool, and equates NaN with NaN."""
    if isinstance(value, bool | int):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    if isinstance(value, list):
        return ("list", tuple(shape(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((shape(k), shape(v)) for k, v in value.items()), key=repr)))
    return (type(value).__name__, repr(value))


def assert_faithful(outcomes: list[Outcome], expected: list[dict[str, Any]]) -> None:
    """One record per event, each read back as kombu read it, its id the canonical one."""
    assert all(isinstance(o, EventRecord) for o in outcomes), outcomes
    assert len(outcomes) == len(expected)
    for record, event in zip(outcomes, expected, strict=True):
        assert isinstance(record, EventRecord)
        assert shape(read_back(record)) == shape(event)
        headers = dict(record.headers)
        assert headers["event_id"].decode() == event_id(jsoncompat.loads_python(record.value))
        if "json_strict" not in headers:  # a strict parser reads it exactly
            strict_view = shape(orjson.loads(record.value))
            assert strict_view == shape(jsoncompat.loads_python(record.value))


surrogates = st.sampled_from(["\udc80", "\ud800", "a\udfffb", "\ud83d"])
texts = st.text(st.characters(exclude_categories=()), max_size=10) | surrogates
integers = (
    st.integers(-(2**63), 2**64 - 1) | st.integers(2**64, 2**300) | st.integers(-(2**300), -1)
)
json_leaves = (
    st.none()
    | st.booleans()
    | integers
    | st.floats()
    | texts
    | st.binary(max_size=6)  # kombu's JSON encoder writes type markers for these four
    | st.datetimes()
    | st.decimals(allow_nan=False, allow_infinity=False, places=3)
    | st.uuids()
)
msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=6)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=6))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**34 - 1), st.integers(0, 999_999_999))
)


def nested(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> Any:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
        max_leaves=12,
    )


def events(
    values: st.SearchStrategy[Any], names: st.SearchStrategy[str], ints: st.SearchStrategy[int]
) -> Any:
    fields = st.dictionaries(names, values, max_size=5)
    head = st.fixed_dictionaries(
        {"type": st.sampled_from(EVENT_TYPES) | names.filter(bool), "uuid": st.uuids().map(str)},
        optional={"hostname": names, "timestamp": st.floats() | ints},
    )
    return st.builds(lambda f, h: {**f, **h}, fields, head)


json_events = events(nested(json_leaves, texts), texts, integers)
# kombu's msgpack reads str and bytes keys (strict_map_key); an event's own fields have names.
msgpack_events = events(
    nested(msgpack_leaves, st.text(max_size=6) | st.binary(max_size=4)),
    st.text(max_size=10),
    st.integers(-(2**63), 2**64 - 1),
)


@cases
@given(st.lists(json_events, min_size=1, max_size=4), st.booleans())
def test_json_events_reach_the_topic_as_kombu_reads_them(
    batch: list[dict[str, Any]], single: bool
) -> None:
    body, content_type, encoding = kombu_body(batch[0] if single else batch, "json")
    expected = kombu_reads(body, content_type, encoding)
    outcomes = run(body, content_type, encoding, "task.x" if single else "task.multi")
    assert_faithful(outcomes, [expected] if single else expected)
    if single:
        assert outcomes[0].value == body, "a single event is written as sent"


@cases
@given(st.lists(msgpack_events, min_size=1, max_size=4), st.booleans())
def test_msgpack_events_reach_the_topic_as_kombu_reads_them(
    batch: list[dict[str, Any]], single: bool
) -> None:
    body, content_type, encoding = kombu_body(batch[0] if single else batch, "msgpack")
    expected = kombu_reads(body, content_type, encoding)
    outcomes = run(body, content_type, encoding)
    assert_faithful(outcomes, [expected] if single else expected)


def event(**fields: Any) -> dict[str, Any]:
    return {"type": "task-progress", "uuid": "u-1", "hostname": "w@h", "clock": 1, **fields}


def test_a_nan_event_keeps_its_bytes_and_says_it_is_not_strict_json() -> None:
    body = b'{"type": "task-progress", "uuid": "u-1", "ratio": NaN, "top": -Infinity}'
    (record,) = run(body, "application/json", "utf-8")
    assert isinstance(record, EventRecord)
    assert record.value == body
    assert dict(record.headers)["json_strict"] == b"false"
    assert record.key == b"u-1"
    assert read_back(record)["top"] == -math.inf


def test_a_list_element_orjson_refuses_leaves_its_siblings_as_the_fast_path_writes_them() -> None:
    good, other = event(clock=1), event(uuid="u-2", clock=2)
    body = b"[%s, %s, %s]" % (
        orjson.dumps(good),
        b'{"type": "task-progress", "uuid": "u-3", "name": "\\udc80", "n": Infinity}',
        orjson.dumps(other),
    )
    outcomes = run(body, "application/json", "utf-8", "task.multi")
    assert all(isinstance(o, EventRecord) for o in outcomes)
    fast = run(orjson.dumps([good, other]), "application/json", "utf-8", "task.multi")
    assert [outcomes[0].value, outcomes[2].value] == [o.value for o in fast]
    assert [outcomes[0].headers, outcomes[2].headers] == [o.headers for o in fast]
    odd = dict(outcomes[1].headers)
    assert odd["json_strict"] == b"false"
    assert odd["task_id"] == b"u-3"
    assert (
        outcomes[1].value == b'{"n":Infinity,"name":"\\udc80","type":"task-progress","uuid":"u-3"}'
    )


def test_an_integer_past_64_bits_in_a_list_stays_an_integer() -> None:
    body = b'[{"type": "task-progress", "uuid": "u-1", "n": 123456789012345678901234567890}]'
    (record,) = run(body, "application/json", "utf-8", "task.multi")
    assert isinstance(record, EventRecord)
    assert b'"n":123456789012345678901234567890' in record.value
    assert read_back(record)["n"] == 123456789012345678901234567890
    assert dict(record.headers)["json_strict"] == b"false", "orjson would read it as a float"


def test_ordinary_events_never_reach_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the fallback ran on a strict event")

    monkeypatch.setattr(jsoncompat, "loads_python", refuse)
    monkeypatch.setattr(jsoncompat, "canonical", refuse)
    eta = event(eta="2026-12-04T00:00:00+00:00", runtime=1e-7, big=2**64 - 1, small=-(2**63))
    for body in (orjson.dumps(eta), orjson.dumps([eta, event(clock=2)])):
        outcomes = run(body, "application/json", "utf-8")
        assert all(isinstance(o, EventRecord) for o in outcomes)
        assert all("json_strict" not in dict(o.headers) for o in outcomes)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (b"caf\xc3\xa9", {"__type__": "bytes", "__value__": "café"}),
        (b"\xff\x00", {"__type__": "base64", "__value__": "/wA="}),
        (
            msgpack.ExtType(5, b"ab"),
            {"__type__": "msgpack_ext", "__value__": {"code": 5, "data": "YWI="}},
        ),
        (
            msgpack.Timestamp(1, 0),
            {"__type__": "msgpack_ext", "__value__": {"code": -1, "data": "AAAAAQ=="}},
        ),
        (
            {1: "a", b"k": "b"},
            {
                "__type__": "msgpack_map",
                "__value__": [[1, "a"], [{"__type__": "bytes", "__value__": "k"}, "b"]],
            },
        ),
        (
            {"__type__": "bytes", "__value__": "x"},
            {"__type__": "msgpack_map", "__value__": [["__type__", "bytes"], ["__value__", "x"]]},
        ),
    ],
)
def test_msgpack_values_json_cannot_hold_follow_one_convention(value: Any, written: Any) -> None:
    body = msgpack.packb(event(blob=value), use_bin_type=True)
    (record,) = run(body, MSGPACK, "binary")
    assert isinstance(record, EventRecord)
    assert orjson.loads(record.value)["blob"] == written
    assert shape(read_back(record)["blob"]) == shape(
        msgpack.unpackb(body, strict_map_key=False)["blob"]
    )


def test_an_event_whose_field_names_are_not_all_strings_is_dead_lettered() -> None:
    fields: dict[Any, Any] = {**event(), 7: "x"}
    (dead,) = run(msgpack.packb(fields), MSGPACK, "binary")
    assert isinstance(dead, DeadLetter)
    assert dead.reason is Reason.UNENCODABLE


def test_headers_and_labels_of_a_lone_surrogate_event_are_valid_utf8() -> None:
    body = b'{"type": "task-\\udc80", "uuid": "u-\\ud800", "hostname": "w\\udfff"}'
    (record,) = run(body, "application/json", "utf-8")
    assert isinstance(record, EventRecord)
    assert record.event_type == "task-\\udc80"
    assert dict(record.headers)["task_id"] == b"u-\\ud800"
    assert record.key == b"u-\\ud800"
    assert record.hostname == "w\\udfff"


def test_a_redelivered_non_strict_event_gets_the_same_event_id() -> None:
    body = b'{"type": "task-progress", "n": NaN, "m": 1}'
    ids = {dict(run(body, "application/json", "utf-8")[0].headers)["event_id"] for _ in range(2)}
    other = b'{"type": "task-progress", "n": 1, "m": NaN}'
    assert len(ids) == 1
    assert dict(run(other, "application/json", "utf-8")[0].headers)["event_id"] not in ids


ODD_EVENTS: list[tuple[Any, str]] = [
    (event(uuid="f-1", ratio=math.nan, name="\udc80", n=2**80), "json"),
    (
        [
            event(uuid="f-2", clock=1),
            event(uuid="f-3", clock=2, top=math.inf),
            event(uuid="f-4", n=-(2**70)),
        ],
        "json",
    ),
    (event(uuid="f-5", blob=b"\xff", sent=uuid.UUID(int=5)), "json"),
    (event(uuid="f-6", blob=b"\x00\x01", ext=msgpack.ExtType(3, b"z"), keys={b"k": 1}), "msgpack"),
    ([event(uuid="f-7", at=msgpack.Timestamp(5, 6)), event(uuid="f-8", ratio=math.nan)], "msgpack"),
]


@pytest.fixture
def replay_vhost() -> Iterator[str]:
    with new_vhost(f"fidelity-{uuid.uuid4().hex[:8]}") as url:
        yield url


def test_odd_events_through_rabbitmq_and_kafka_read_back_and_replay_as_celery_reads_them(
    names: Names,
    kafka: EmbeddedKafka,
    rabbit: Rabbit,
    start_bridge: BridgeFactory,
    replay_vhost: str,
) -> None:
    """Singles and task.multi lists, JSON and msgpack, through the real RabbitMQ, a bridge and
    Tansu; the reader library decodes each event as kombu did, and a Celery receiver (msgpack
    accepted, as an app with event_serializer=msgpack does) reads the replay the same."""
    start_bridge()
    expected: dict[str, Any] = {}
    for payload, serializer in ODD_EVENTS:
        body, content_type, encoding = kombu_body(payload, serializer)
        sent = kombu_reads(body, content_type, encoding)
        expected.update((e["uuid"], shape(e)) for e in (sent if isinstance(sent, list) else [sent]))
        rk = "task.multi" if isinstance(payload, list) else "task.progress"
        rabbit.publish(names.exchange, rk, body, content_type, content_encoding=encoding)
    scan = Scan(kafka.bootstrap_servers, names.topic, idle_seconds=0.5)

    def everything_read() -> list[Any]:
        read = list(read_events(scan))
        return read if len(read) >= len(expected) else []

    read = poll(everything_read, 30, what="every event in the topic")
    assert {e.task_id: shape(e.data) for e in read} == expected
    assert {e.task_id for e in read if e.serializer == "msgpack"} == {"f-6", "f-7"}
    assert rabbit.queue_state(names.queue)[0] == 0
    assert received_by_celery(replay_vhost, read) == expected


class RecordingReceiver(EventReceiver):  # type: ignore[misc]
    """Celery's own event receiver, keeping each body as kombu decoded it."""

    def __init__(self, *args: Any, wanted: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wanted = wanted
        self.bodies: list[dict[str, Any]] = []

    def _receive(self, body: Any, message: Any) -> None:
        # A copy: the receiver adds local_received and adjusts timestamps in place.
        self.bodies.extend(copy.deepcopy(body if isinstance(body, list) else [body]))
        self.should_stop = len(self.bodies) >= self.wanted
        super()._receive(body, message)


def received_by_celery(url: str, events: list[Any]) -> dict[str, Any]:
    """Replay ``events`` onto the vhost's event exchange; what a Celery receiver decodes."""
    ready = threading.Event()
    with Connection(url) as connection:
        app = Celery(set_as_current=False)
        receiver = RecordingReceiver(
            connection,
            handlers={"*": lambda _: None},
            app=app,
            accept={"json", "msgpack"},
            wanted=len(events),
        )
        receiver.on_consume_ready = lambda *args, **kwargs: ready.set()
        capture = threading.Thread(target=receiver.capture, kwargs={"timeout": 30, "wakeup": False})
        capture.start()
        try:
            poll(ready.is_set, 10, what="the receiver to consume")
            with EventExchange(url, "celeryev") as target:
                replay(events, target)
            capture.join(30)
        finally:
            receiver.should_stop = True
            capture.join(5)
    return {body["uuid"]: shape(body) for body in receiver.bodies}


def test_a_json_line_is_the_stored_value_on_one_line_even_when_not_strict() -> None:
    value = b'{"type": "task-progress",\n "n": NaN,\r\n "s": "a\\nb"}'
    stored = Event({}, value, "id", partition=0, offset=0, timestamp_ms=0, received_at=None)
    line = stored.json_line()
    assert b"\n" not in line
    assert b"\r" not in line
    assert shape(jsoncompat.loads_python(line)) == shape(jsoncompat.loads_python(value))


def test_the_readers_fall_back_to_pythons_json_for_a_value_without_the_header() -> None:
    value = (
        b'{"type": "x", "n": NaN, "b": {"__type__": "bytes", "__value__": "k"},'
        b' "u": {"__type__": "nope", "__value__": 1}}'
    )
    data, msgpack_only = jsoncompat.loads(value)
    assert math.isnan(data["n"])
    assert data["b"] == b"k"
    assert data["u"] == {"__type__": "nope", "__value__": 1}, "unknown markers stay as they are"
    assert not msgpack_only
