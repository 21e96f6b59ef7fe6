"""The shaping rules file (``BRIDGE_RULES_FILE``, YAML), parsed and checked at start: pure.

A bad file raises `ConfigError` with one line naming the rule and key at fault, e.g.
``rules[2].fields.kwargs: unknown action 'hide'``. `shaper.Shaper` applies what this returns.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import translate
from pathlib import Path
from typing import Any, Literal

import yaml

from celery_kafka_bridge.config import ENV_PREFIX, TOPIC_NAME
from celery_kafka_bridge.errors import ConfigError

FieldActionName = Literal["drop", "mask", "hash", "truncate"]
_NAMED_ACTIONS: frozenset[str] = frozenset({"drop", "mask", "hash"})
_RULE_KEYS = frozenset({"name", "event_type", "task_name", "drop", "route", "fields"})
_TOP_KEYS = frozenset({"rules", "hash_key", "task_name_cache"})
_RULE_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
DEFAULT_TASK_NAME_CACHE = 100_000
SETTING = f"{ENV_PREFIX}RULES_FILE"


class RulesError(ValueError):
    """A rules file that cannot be applied; the message names where."""


@dataclass(frozen=True, slots=True)
class FieldAction:
    """What happens to one top-level field of the events a rule matches."""

    field: str
    action: FieldActionName
    limit: int = 0
    """Characters kept, for ``truncate``."""


@dataclass(frozen=True, slots=True)
class Rule:
    """Exactly one of ``drop``, ``route``, ``fields`` says what the rule does."""

    name: str
    event_types: re.Pattern[str]
    task_names: re.Pattern[str] | None
    """None: any event, its task name known or not."""
    drop: bool = False
    route: str | None = None
    fields: tuple[FieldAction, ...] = ()

    def matches(self, event_type: str, task_name: str | None) -> bool:
        if not self.event_types.match(event_type):
            return False
        if self.task_names is None:
            return True
        return task_name is not None and self.task_names.match(task_name) is not None


@dataclass(frozen=True, slots=True)
class Rules:
    """Every rule, in file order, and what their actions need."""

    rules: tuple[Rule, ...]
    hash_key: bytes | None = None
    task_name_cache: int = DEFAULT_TASK_NAME_CACHE

    @property
    def topics(self) -> tuple[str, ...]:
        """The topics events are routed to, each once."""
        return tuple(dict.fromkeys(r.route for r in self.rules if r.route))

    @property
    def redacts(self) -> bool:
        """Whether any rule changes fields (then dead letters are withheld)."""
        return any(r.fields for r in self.rules)


def load_rules(path: Path, environ: Mapping[str, str] = os.environ) -> Rules:
    """The rules of a YAML file; `ConfigError` with one line if it cannot be used."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"invalid setting {SETTING}: cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"invalid setting {SETTING}: {path} is not YAML{line}") from exc
    try:
        return parse_rules(document, environ)
    except RulesError as exc:
        raise ConfigError(f"invalid setting {SETTING}: {exc}") from exc


def parse_rules(document: Any, environ: Mapping[str, str] = os.environ) -> Rules:
    """The rules of a parsed YAML document; `RulesError` naming the first fault."""
    top = _mapping(document, "the file", _TOP_KEYS)
    entries = top.get("rules", [])
    if not isinstance(entries, list):
        raise RulesError("rules: a list of rules is expected")
    rules = tuple(_rule(entry, f"rules[{i}]") for i, entry in enumerate(entries))
    names = [r.name for r in rules]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise RulesError(f"rules[{i}].name: {name!r} names an earlier rule too")
    hashes = any(a.action == "hash" for r in rules for a in r.fields)
    key = _hash_key(top.get("hash_key"), environ) if "hash_key" in top else None
    if hashes and key is None:
        raise RulesError("hash_key: a rule hashes a field; give hash_key.file or hash_key.env")
    cache = top.get("task_name_cache", DEFAULT_TASK_NAME_CACHE)
    if not isinstance(cache, int) or isinstance(cache, bool) or cache < 1:
        raise RulesError("task_name_cache: a positive integer is expected")
    return Rules(rules, key, cache)


def _rule(entry: Any, where: str) -> Rule:
    spec = _mapping(entry, where, _RULE_KEYS)
    name = spec.get("name", where)  # unnamed rules are named by their place
    if "name" in spec and not (isinstance(name, str) and _RULE_NAME.fullmatch(name)):
        raise RulesError(f"{where}.name: 1-100 of [A-Za-z0-9._-] expected")
    does = [key for key in ("drop", "route", "fields") if key in spec]
    if len(does) != 1:
        raise RulesError(f"{where}: exactly one of drop, route, fields expected")
    event_types = _patterns(spec.get("event_type", "*"), f"{where}.event_type")
    task_names = _patterns(spec["task_name"], f"{where}.task_name") if "task_name" in spec else None
    if does == ["drop"]:
        if spec["drop"] is not True:
            raise RulesError(f"{where}.drop: only true is allowed (leave the rule out instead)")
        return Rule(name, event_types, task_names, drop=True)
    if does == ["route"]:
        topic = spec["route"]
        if not isinstance(topic, str) or not TOPIC_NAME.fullmatch(topic):
            raise RulesError(f"{where}.route: a Kafka topic name (1-249 of [A-Za-z0-9._-])")
        return Rule(name, event_types, task_names, route=topic)
    fields = _mapping(spec["fields"], f"{where}.fields", None)
    if not fields:
        raise RulesError(f"{where}.fields: at least one field expected")
    actions = tuple(_field_action(f, a, f"{where}.fields.{f}") for f, a in fields.items())
    return Rule(name, event_types, task_names, fields=actions)


def _field_action(field: Any, spec: Any, where: str) -> FieldAction:
    if not isinstance(field, str) or not field:
        raise RulesError(f"{where}: a field name is text")
    if isinstance(spec, str) and spec in _NAMED_ACTIONS:
        return FieldAction(field, spec)  # type: ignore[arg-type]  # one of the named literals
    if isinstance(spec, dict) and spec.keys() == {"truncate"}:
        limit = spec["truncate"]
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            return FieldAction(field, "truncate", limit)
        raise RulesError(f"{where}.truncate: a number of characters (0 or more) expected")
    shown = spec if isinstance(spec, str) else type(spec).__name__
    raise RulesError(f"{where}: unknown action {shown!r} (drop, mask, hash or truncate: N)")


def _patterns(spec: Any, where: str) -> re.Pattern[str]:
    """Shell-style patterns (`fnmatch`, case-sensitive), one or a list, as one regex."""
    patterns = spec if isinstance(spec, list) else [spec]
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise RulesError(f"{where}: a pattern or a list of patterns (text) expected")
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns))


def _hash_key(spec: Any, environ: Mapping[str, str]) -> bytes:
    """The HMAC key, from a file (its bytes, surrounding whitespace stripped) or a variable."""
    source = _mapping(spec, "hash_key", frozenset({"file", "env"}))
    if len(source) != 1:
        raise RulesError("hash_key: exactly one of file, env expected")
    if "env" in source:
        value = environ.get(str(source["env"]), "").strip()
        if not value:
            raise RulesError(f"hash_key.env: {source['env']} is not set or empty")
        key = value.encode()
    else:
        try:
            key = Path(str(source["file"])).read_bytes().strip()
        except OSError as exc:
            detail = f"cannot read {source['file']}: {exc.strerror}"
            raise RulesError(f"hash_key.file: {detail}") from exc
    if len(key) < 16:
        raise RulesError("hash_key: at least 16 bytes expected")
    return key


def _mapping(value: Any, where: str, allowed: frozenset[str] | None) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise RulesError(f"{where}: a mapping expected")
    if allowed is None:
        return value
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise RulesError(f"{where}: unknown key {unknown[0]!r} ({', '.join(sorted(allowed))})")
    return value
