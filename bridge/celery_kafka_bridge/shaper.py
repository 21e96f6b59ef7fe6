"""Apply the shaping rules (`rules`) to decoded records before they reach Kafka: pure, no I/O.

Per record, one dict lookup by (event type, task name) finds what the rules do to it (its
plan, built once per pair). Only records whose fields a rule changes, and the ``task-sent`` and
``task-received`` events that name a task, are parsed; a changed record is written as its
canonical JSON and its ``event_id`` computed on that, so copies of an event still share it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from celery_kafka_bridge import jsoncompat
from celery_kafka_bridge.codec import (
    NOT_STRICT_HEADER,
    DeadLetter,
    EventRecord,
    Headers,
    Outcome,
    digest,
)
from celery_kafka_bridge.rules import FieldAction, Rules

MASK = "[masked]"
_NAMING = frozenset({"task-sent", "task-received"})
"""Task events that carry the task's name."""
_MAX_PLANS = 10_000
"""(event type, task name) pairs whose plan is kept; beyond, the plans are built again."""
_WITHHELD = ("withheld", b"true")
_FIELD_LABELS = {"drop": "drop_field", "mask": "mask", "hash": "hash", "truncate": "truncate"}
"""The ``action`` label of each field action in the rule metric (``drop`` is a whole event)."""

_Counted = tuple[str, str]
"""(rule name, action): a series of ``rule_applied_total``."""
_Fields = tuple[tuple[_Counted, FieldAction], ...]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the rules do to events of one type and task name."""

    drop: _Counted | None = None
    route: tuple[_Counted, str] | None = None
    fields: _Fields = ()


class Shaper:
    """Drops, routes and redacts records by the rules; counts what each rule did."""

    def __init__(self, rules: Rules) -> None:
        self._rules = rules
        self._hmac = hmac.new(rules.hash_key or b"", digestmod=hashlib.sha256)
        # Most values hashed are few and repeated ("{}", "()"): each is hashed once.
        self._hash_text = lru_cache(maxsize=4096)(self._hash_bytes)
        self._redacts = rules.redacts
        self._names: OrderedDict[bytes, tuple[str, bytes]] = OrderedDict()
        """Task id to task name (and as header bytes), least recently used first, learnt from
        task-sent and task-received events."""
        self._plans: dict[tuple[str, str | None], _Plan] = {}
        self.applied: dict[_Counted, int] = {}
        """How often each rule did each of its actions, every series from the start."""
        for rule in rules.rules:
            actions = {"drop"} if rule.drop else {"route"} if rule.route else set()
            actions.update(_FIELD_LABELS[a.action] for a in rule.fields)
            for action in sorted(actions):
                self.applied[(rule.name, action)] = 0
        self.withheld = 0
        """Dead letters written without their value."""

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics records may be routed to, besides the events and dead-letter topics."""
        return self._rules.topics

    def shape(self, outcomes: list[Outcome]) -> tuple[list[Outcome], list[EventRecord]]:
        """What to write, in order, and the records the rules dropped."""
        kept: list[Outcome] = []
        dropped: list[EventRecord] = []
        for outcome in outcomes:
            if isinstance(outcome, DeadLetter):
                kept.append(self._withhold(outcome) if self._redacts else outcome)
                continue
            shaped = self._record(outcome)
            if shaped is None:
                dropped.append(outcome)
            else:
                kept.append(shaped)
        return kept, dropped

    def _record(self, record: EventRecord) -> EventRecord | None:
        task_id = _task_id(record.headers)
        event: dict[str, Any] | None = None
        name: tuple[str, bytes] | None = None
        if task_id is not None:
            if record.event_type in _NAMING:
                event = _parse(record)
                name = self._learn(task_id, event.get("name"))
            else:
                name = self._recall(task_id)
        plan = self._plan(record.event_type, name[0] if name is not None else None)
        if plan.drop is not None:
            self.applied[plan.drop] += 1
            return None
        shaped_by: list[str] = []
        if plan.fields:
            shaped_by = self._redact(record, event or _parse(record), plan.fields)
        if plan.route is not None:
            counted, record.topic = plan.route
            self.applied[counted] += 1
            shaped_by.append(counted[0])
        if name is not None:
            record.headers.append(("task_name", name[1]))
        if shaped_by:
            record.headers.append(("shaped_by", ",".join(dict.fromkeys(shaped_by)).encode()))
        return record

    def _redact(self, record: EventRecord, event: dict[str, Any], fields: _Fields) -> list[str]:
        """Apply the field actions to ``event`` and write it into ``record``; the rules that
        changed something."""
        applied: list[str] = []
        for counted, action in fields:
            if action.field not in event:
                continue
            if action.action == "drop":
                del event[action.field]
            else:
                event[action.field] = self._value(action, event[action.field])
            self.applied[counted] += 1
            applied.append(counted[0])
        if not applied:
            return applied
        strict = NOT_STRICT_HEADER not in record.headers
        if strict:
            value = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
        else:
            value, strict = jsoncompat.canonical(event)
        record.value = value
        event_id = ("event_id", digest(value).encode())
        record.headers = [
            event_id if h[0] == "event_id" else h
            for h in record.headers
            if not (strict and h == NOT_STRICT_HEADER)
        ]
        return applied

    def _value(self, action: FieldAction, value: Any) -> Any:
        if action.action == "mask":
            return MASK
        if action.action == "truncate":
            return value[: action.limit] if isinstance(value, str) else value
        if isinstance(value, str):
            return self._hash_text(value)
        return self._hash_bytes(jsoncompat.canonical(value)[0])

    def _hash_bytes(self, data: str | bytes) -> str:
        """HMAC-SHA256 in hex; text as UTF-8 (lone surrogates as they are)."""
        mac = self._hmac.copy()  # the keyed state, computed once
        mac.update(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        return mac.hexdigest()

    def _learn(self, task_id: bytes, name: Any) -> tuple[str, bytes] | None:
        if not isinstance(name, str):
            return self._recall(task_id)
        names = self._names
        named = names[task_id] = (name, name.encode("utf-8", "backslashreplace"))
        names.move_to_end(task_id)
        if len(names) > self._rules.task_name_cache:
            names.popitem(last=False)
        return named

    def _recall(self, task_id: bytes) -> tuple[str, bytes] | None:
        named = self._names.get(task_id)
        if named is not None:
            self._names.move_to_end(task_id)
        return named

    def _plan(self, event_type: str, task_name: str | None) -> _Plan:
        key = (event_type, task_name)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = self._build_plan(event_type, task_name)
        return plan

    def _build_plan(self, event_type: str, task_name: str | None) -> _Plan:
        """A drop rule wins; the first route counts; every field action applies, in order."""
        route = None
        fields: list[tuple[_Counted, FieldAction]] = []
        for rule in self._rules.rules:
            if not rule.matches(event_type, task_name):
                continue
            if rule.drop:
                return _Plan(drop=(rule.name, "drop"))
            if rule.route and route is None:
                route = ((rule.name, "route"), rule.route)
            fields += [((rule.name, _FIELD_LABELS[a.action]), a) for a in rule.fields]
        return _Plan(route=route, fields=tuple(fields))

    def _withhold(self, dead: DeadLetter) -> DeadLetter:
        """A dead letter without its value, which no rule could redact (it is no event)."""
        self.withheld += 1
        extra: Headers = [_WITHHELD]
        if not any(name == "original_size" for name, _ in dead.headers):
            extra.append(("original_size", str(len(dead.value)).encode()))
        return DeadLetter(dead.reason, b"", dead.headers + extra)


def _task_id(headers: Headers) -> bytes | None:
    """The ``task_id`` header, which follows ``event_type`` and perhaps ``hostname``."""
    for name, value in headers[1:3]:
        if name == "task_id":
            return value
    return None


def _parse(record: EventRecord) -> dict[str, Any]:
    """The record's event as the codec read it (type markers left as objects)."""
    event: dict[str, Any]
    if NOT_STRICT_HEADER in record.headers:
        event = jsoncompat.loads_python(record.value)
    else:  # strict JSON, which orjson reads exactly
        event = orjson.loads(record.value)
    return event
