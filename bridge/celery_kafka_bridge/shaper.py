"""Apply the shaping rules (`rules`) to events before they reach Kafka: pure, no I/O.

The codec calls the `Shaper` with each event it parsed, before encoding it: one dict lookup by
(event type, task name) finds what the rules do (its plan, built once per pair), field actions
change the event in place, and the `codec.Verdict` says the rest (drop, route, headers). A
changed event is written as its canonical JSON, on which the codec computes ``event_id``, so
copies of an event still share it. Nothing is parsed or encoded twice.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from celery_kafka_bridge import jsoncompat
from celery_kafka_bridge.codec import (
    DeadLetter,
    EventRecord,
    FixedHeaders,
    Headers,
    Outcome,
    Verdict,
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
_Change = Callable[[Any], Any] | None
"""A field action as a function of the field's value; None: the field is dropped."""
_Fields = tuple[tuple[_Counted, str, _Change], ...]
"""(rule and action, field name, change) of each field action, in order."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the rules do to events of one type and task name."""

    verdict: Verdict
    """The verdict when no field action changes the event."""
    name_header: FixedHeaders
    fields: _Fields = ()
    changed: dict[tuple[_Counted, ...], Verdict] = field(default_factory=dict)
    """The verdicts when field actions change it, by the actions taken."""


def _changed(plan: _Plan, applied: tuple[_Counted, ...]) -> Verdict:
    """The verdict of an event of ``plan`` that the ``applied`` field actions changed."""
    unchanged = plan.verdict
    rules = [rule for rule, _ in applied]
    if unchanged.topic is not None:  # the route rule is the first of the unchanged verdict
        rules.append(unchanged.applied[0][0])
    shaped_by = ("shaped_by", ",".join(dict.fromkeys(rules)).encode())
    return Verdict(
        changed=True,
        topic=unchanged.topic,
        headers=(*plan.name_header, shaped_by),
        applied=unchanged.applied + applied,
    )


class Shaper:
    """Called by the codec with each event (`codec.Shaper`): learns task names, changes fields;
    `settle` then drops, counts and withholds what the rules say."""

    def __init__(self, rules: Rules) -> None:
        self._rules = rules
        self._redacts = rules.redacts
        self._hmac = hmac.new(rules.hash_key or b"", digestmod=hashlib.sha256)
        # Most values hashed are few and repeated ("{}", "()"): each is hashed once.
        self._hash_text = lru_cache(maxsize=4096)(self._hash_bytes)
        # Task id to task name, learnt from task-sent and task-received events, in two plain
        # dicts that take turns (no bookkeeping per lookup, unlike an LRU): the current names
        # (learnt, or recalled from the older ones) and, once they reach half the cache, the
        # older names they replace. At most `Rules.task_name_cache` names in all; the last
        # half of it learnt or recalled are always known.
        self._names: dict[str, str] = {}
        self._older: dict[str, str] = {}
        self._half = (rules.task_name_cache + 1) // 2
        self._interned: dict[str, str] = {}
        """One string per task name, so the caches do not hold a copy per task."""
        self._plans: dict[str, dict[str | None, _Plan]] = {}
        """By event type, then task name."""
        self._plan_count = 0
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

    def __call__(self, event: dict[str, Any], event_type: str) -> Verdict:
        uuid = event.get("uuid")
        name = None
        if isinstance(uuid, str):
            name = event.get("name") if event_type in _NAMING else None
            if isinstance(name, str):
                self._learn(uuid, name)
            else:  # the common case, inline: most task events are not the first of their task
                name = self._names.get(uuid)
                if name is None:
                    name = self._recall(uuid)
        plans = self._plans.get(event_type)
        plan = None if plans is None else plans.get(name)
        if plan is None:
            plan = self._plan(event_type, name)
        if not plan.fields:
            return plan.verdict
        applied = self._redact(event, plan.fields)
        if not applied:
            return plan.verdict
        verdict = plan.changed.get(applied)
        if verdict is None:  # the first event of its plan changed by exactly these actions
            verdict = plan.changed[applied] = _changed(plan, applied)
        return verdict

    def settle(self, outcomes: list[Outcome]) -> tuple[list[Outcome], list[EventRecord]]:
        """What to write, in order, and the records the rules dropped; counts both."""
        kept: list[Outcome] = []
        dropped: list[EventRecord] = []
        counts = self.applied
        for outcome in outcomes:
            if isinstance(outcome, DeadLetter):
                kept.append(self._withhold(outcome) if self._redacts else outcome)
                continue
            verdict = outcome.verdict
            if verdict is not None and verdict.applied:
                for counted in verdict.applied:
                    counts[counted] += 1
                if verdict.drop:
                    dropped.append(outcome)
                    continue
            kept.append(outcome)
        return kept, dropped

    def _redact(self, event: dict[str, Any], fields: _Fields) -> tuple[_Counted, ...]:
        """Apply the field actions to ``event`` in place; the (rule, action) of each taken."""
        applied: list[_Counted] = []
        for counted, name, change in fields:
            if name not in event:
                continue
            if change is None:
                del event[name]
            else:
                event[name] = change(event[name])
            applied.append(counted)
        return tuple(applied)

    def _change(self, action: FieldAction) -> _Change:
        """What ``action`` does to a field's value, as a function (None: drop the field)."""
        if action.action == "drop":
            return None
        if action.action == "mask":
            return lambda _: MASK
        if action.action == "truncate":
            limit = action.limit
            return lambda value: value[:limit] if isinstance(value, str) else value
        return self._hash

    def _hash(self, value: Any) -> str:
        if isinstance(value, str):
            return self._hash_text(value)
        # Any other value as its canonical JSON (bytes of a msgpack event as kombu's markers).
        return self._hash_bytes(jsoncompat.canonical(value, msgpack_source=True)[0])

    def _hash_bytes(self, data: str | bytes) -> str:
        """HMAC-SHA256 in hex; text as UTF-8 (lone surrogates as they are)."""
        mac = self._hmac.copy()  # the keyed state, computed once
        mac.update(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        return mac.hexdigest()

    def _learn(self, task_id: str, name: str) -> None:
        interned = self._interned
        if len(interned) >= _MAX_PLANS:  # as many names as plans: rather a bug than tasks
            interned.clear()
        self._remember(task_id, interned.setdefault(name, name))

    def _recall(self, task_id: str) -> str | None:
        """The name of a task not learnt or recalled lately, moved on to the current names."""
        name = self._older.pop(task_id, None)
        if name is not None:
            self._remember(task_id, name)
        return name

    def _remember(self, task_id: str, name: str) -> None:
        names = self._names
        names[task_id] = name
        if len(names) >= self._half:  # the current names become the older ones
            self._older, self._names = names, {}

    def _plan(self, event_type: str, task_name: str | None) -> _Plan:
        """A new plan, kept for the next events of its type and task name."""
        self._plan_count += 1
        if self._plan_count > _MAX_PLANS:
            self._plans.clear()
            self._plan_count = 1
        plan = self._build_plan(event_type, task_name)
        self._plans.setdefault(event_type, {})[task_name] = plan
        return plan

    def _build_plan(self, event_type: str, task_name: str | None) -> _Plan:
        """A drop rule wins; the first route counts; every field action applies, in order."""
        name_header: FixedHeaders = ()
        if task_name is not None:
            name_header = (("task_name", task_name.encode("utf-8", "backslashreplace")),)
        route: tuple[str, str] | None = None
        fields: list[tuple[_Counted, str, _Change]] = []
        for rule in self._rules.rules:
            if not rule.matches(event_type, task_name):
                continue
            if rule.drop:
                return _Plan(Verdict(drop=True, applied=((rule.name, "drop"),)), name_header)
            if rule.route and route is None:
                route = (rule.name, rule.route)
            fields += [
                ((rule.name, _FIELD_LABELS[a.action]), a.field, self._change(a))
                for a in rule.fields
            ]
        if route is None:
            verdict = Verdict(headers=name_header)
        else:
            routed_by = (("shaped_by", route[0].encode()),)
            verdict = Verdict(
                topic=route[1], headers=name_header + routed_by, applied=((route[0], "route"),)
            )
        return _Plan(verdict, name_header, tuple(fields))

    def _withhold(self, dead: DeadLetter) -> DeadLetter:
        """A dead letter without its value, which no rule could redact (it is no event)."""
        self.withheld += 1
        extra: Headers = [_WITHHELD]
        if not any(name == "original_size" for name, _ in dead.headers):
            extra.append(("original_size", str(len(dead.value)).encode()))
        return DeadLetter(dead.reason, b"", dead.headers + extra)
