"""Applying the rules to decoded records: drops, routes, field actions, task names, ids."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import msgpack
import orjson
from hypothesis import given
from hypothesis import strategies as st

from celery_kafka_bridge import jsoncompat
from celery_kafka_bridge.codec import (
    NOT_STRICT_HEADER,
    DeadLetter,
    Envelope,
    EventRecord,
    Outcome,
    decode,
    digest,
)
from celery_kafka_bridge.rules import parse_rules
from celery_kafka_bridge.shaper import MASK, Shaper

KEY = "a hash key of some 32 bytes ...."


def shaper(*rules: dict[str, Any], **top: Any) -> Shaper:
    return Shaper(parse_rules({"rules": list(rules), **top}, {"KEY": KEY}))


HASHING = {"hash_key": {"env": "KEY"}}


def records(
    *events: dict[str, Any], rules: Shaper | None = None, content_type: str = "application/json"
) -> list[Outcome]:
    """The events as the codec makes records of them (alone, or a list when several), shaped by
    ``rules`` if given."""
    payload: Any = events[0] if len(events) == 1 else list(events)
    if content_type == "application/json":
        body = json.dumps(payload).encode()
    else:
        body = msgpack.packb(payload)
    return decode(Envelope(body, content_type, "utf-8", "task.x", 1), 100_000, rules)


def settled(
    rules: Shaper, *events: dict[str, Any], content_type: str = "application/json"
) -> tuple[list[Outcome], list[EventRecord]]:
    return rules.settle(records(*events, rules=rules, content_type=content_type))


def event(kind: str, uuid: str = "t-1", **fields: Any) -> dict[str, Any]:
    return {"type": kind, "uuid": uuid, "hostname": "w@h", "timestamp": 1.0, **fields}


def shaped(shaper: Shaper, *events: dict[str, Any]) -> list[EventRecord]:
    kept, _ = settled(shaper, *events)
    assert all(isinstance(r, EventRecord) for r in kept)
    return [r for r in kept if isinstance(r, EventRecord)]


def value_of(record: EventRecord) -> Any:
    return json.loads(record.value)


def hashed(text: str) -> str:
    return hmac.new(KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def assert_id_of_what_is_written(record: EventRecord) -> None:
    assert dict(record.headers)["event_id"] == digest(record.value).encode()


def test_dropped_event_types_are_handed_back_apart_and_counted() -> None:
    rules = shaper({"name": "beats", "event_type": "worker-heart*", "drop": True})
    beat = {"type": "worker-heartbeat", "hostname": "w@h"}
    kept, dropped = settled(rules, beat, event("task-started"), beat)
    assert [r.event_type for r in dropped] == ["worker-heartbeat"] * 2
    assert [r.event_type for r in kept if isinstance(r, EventRecord)] == ["task-started"]
    assert rules.applied == {("beats", "drop"): 2}


def test_field_actions_change_the_value_and_event_id_is_computed_on_it() -> None:
    rules = shaper(
        {
            "name": "redact",
            "event_type": "task-received",
            "fields": {"kwargs": "hash", "args": "mask", "eta": "drop", "name": {"truncate": 3}},
        },
        **HASHING,
    )
    received = event("task-received", kwargs="{'password': 's3cr3t'}", args="(1,)", eta=None)
    (record,) = shaped(rules, {**received, "name": "tests.add"})
    value = value_of(record)
    assert value["kwargs"] == hashed("{'password': 's3cr3t'}")
    assert value["args"] == MASK
    assert "eta" not in value
    assert value["name"] == "tes"
    assert b"s3cr3t" not in record.value
    assert record.value == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)  # canonical JSON
    assert_id_of_what_is_written(record)
    headers = dict(record.headers)
    assert headers["shaped_by"] == b"redact"
    assert headers["task_name"] == b"tests.add"  # the name as the task has it, not as written
    assert rules.applied == {
        ("redact", "drop_field"): 1,
        ("redact", "hash"): 1,
        ("redact", "mask"): 1,
        ("redact", "truncate"): 1,
    }


def test_a_record_no_rule_changes_keeps_its_bytes_and_id() -> None:
    rules = shaper({"event_type": "task-failed", "fields": {"traceback": "mask"}})
    (original,) = records(event("task-started"))
    (record,) = shaped(rules, event("task-started"))
    assert isinstance(original, EventRecord)
    assert (record.value, record.topic) == (original.value, None)
    assert record.headers == original.headers
    assert not shaper().applied


def test_the_task_name_follows_the_task_so_later_events_match_by_it() -> None:
    rules = shaper(
        {"name": "billing", "task_name": "billing.*", "route": "billing-events"},
        {"name": "hide", "task_name": "billing.*", "fields": {"result": "mask"}},
    )
    started, succeeded, other = shaped(
        rules,
        event("task-received", name="billing.charge"),
        event("task-started"),
        event("task-succeeded", result="'4 EUR'"),
        event("task-succeeded", uuid="t-unknown", result="'x'"),
    )[1:]
    assert started.topic == succeeded.topic == "billing-events"
    assert dict(started.headers)["task_name"] == b"billing.charge"
    assert value_of(succeeded)["result"] == MASK
    assert dict(succeeded.headers)["shaped_by"] == b"hide,billing"
    assert other.topic is None
    assert "task_name" not in dict(other.headers)  # never named: no header, no match


def test_the_task_name_cache_keeps_the_last_half_of_its_size_and_no_more() -> None:
    rules = shaper(task_name_cache=4)
    shaped(rules, *[event("task-received", uuid=f"t-{i}", name=f"n{i}") for i in range(6)])
    later = [event("task-started", uuid=f"t-{i}") for i in range(6)]
    names = [dict(r.headers).get("task_name") for r in shaped(rules, *later)]
    assert names == [None, None, None, None, b"n4", b"n5"]


def test_a_task_name_looked_up_lately_is_kept() -> None:
    rules = shaper(task_name_cache=4)
    learn = [event("task-received", uuid=f"t-{i}", name=f"n{i}") for i in range(4)]
    shaped(rules, learn[0], learn[1], event("task-started", uuid="t-0"), learn[2], learn[3])
    later = [event("task-succeeded", uuid=f"t-{i}") for i in (1, 0)]  # t-1 made way for t-2
    names = [dict(r.headers).get("task_name") for r in shaped(rules, *later)]
    assert names == [None, b"n0"]


def test_values_only_python_json_reads_stay_marked_until_redacted_away() -> None:
    rules = shaper({"fields": {"ratio": "mask"}})
    (kept,) = shaped(rules, event("task-progress", ratio=float("nan"), note="\udc80"))
    assert NOT_STRICT_HEADER in kept.headers  # the surrogate is still there
    assert jsoncompat.loads_python(kept.value)["note"] == "\udc80"
    (strict,) = shaped(rules, event("task-progress", ratio=float("nan")))
    assert NOT_STRICT_HEADER not in strict.headers
    assert value_of(strict)["ratio"] == MASK
    assert_id_of_what_is_written(strict)


def test_msgpack_events_are_redacted_and_keep_their_markers() -> None:
    rules = shaper({"fields": {"kwargs": "mask"}})
    sent = event("task-received", kwargs="secret", blob=b"\xff\x00")
    kept, _ = settled(rules, sent, content_type="application/x-msgpack")
    (record,) = kept
    assert isinstance(record, EventRecord)
    assert value_of(record)["blob"] == {"__type__": "base64", "__value__": "/wA="}
    assert b"secret" not in record.value
    assert_id_of_what_is_written(record)


def test_dead_letters_are_withheld_only_when_rules_redact() -> None:
    body = b'{"no type": "a secret"}'
    (dead,) = decode(Envelope(body, "application/json", None, "task.x", 1), 100_000)
    redacting = shaper({"fields": {"kwargs": "mask"}})
    (withheld,), _ = redacting.settle([dead])
    assert isinstance(withheld, DeadLetter)
    assert withheld.value == b""
    headers = dict(withheld.headers)
    assert headers["withheld"] == b"true"
    assert headers["original_size"] == str(len(dead.value)).encode()
    assert headers["reason"] == b"missing_type"
    assert b"secret" not in b"".join(headers.values())
    assert redacting.withheld == 1
    (kept,), _ = shaper({"drop": True, "event_type": "x"}).settle([dead])
    assert kept is dead


@given(st.text(), st.text())
def test_hashes_are_equal_exactly_for_equal_values_and_ids_follow(a: str, b: str) -> None:
    rules = shaper({"fields": {"kwargs": "hash"}}, **HASHING)
    first, again, other = shaped(
        rules, event("task-received", kwargs=a), event("task-received", kwargs=a)
    ) + shaped(rules, event("task-received", kwargs=b))
    assert first.value == again.value
    assert dict(first.headers)["event_id"] == dict(again.headers)["event_id"]
    assert (first.value == other.value) == (a == b)
    assert_id_of_what_is_written(other)
    assert (
        jsoncompat.loads_python(first.value)["kwargs"]
        == hmac.new(KEY.encode(), a.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
    )
