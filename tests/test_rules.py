"""The rules file: what parses, and one line naming the fault for what does not."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.rules import FieldAction, RulesError, load_rules, parse_rules
from harness.support import run_cli

KEY_ENV = {"HASH_KEY": "k" * 32}
EXAMPLE = Path(__file__).parent.parent / "deploy" / "rules.example.yaml"


def test_a_full_rules_file_parses_into_typed_rules(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"0123456789abcdef0123\n")
    rules = parse_rules(
        {
            "hash_key": {"file": str(key_file)},
            "task_name_cache": 10,
            "rules": [
                {"name": "beats", "event_type": "worker-heartbeat", "drop": True},
                {"task_name": ["billing.*", "pay?"], "route": "celery.billing"},
                {
                    "name": "secrets",
                    "event_type": "task-*",
                    "fields": {"kwargs": "hash", "args": "mask", "x": "drop"},
                },
                {"fields": {"traceback": {"truncate": 100}}},
            ],
        }
    )
    assert rules.hash_key == b"0123456789abcdef0123"
    assert rules.task_name_cache == 10
    assert [r.name for r in rules.rules] == ["beats", "rules[1]", "secrets", "rules[3]"]
    assert rules.topics == ("celery.billing",)
    assert rules.redacts
    beats, billing, secrets, tracebacks = rules.rules
    assert beats.drop and beats.matches("worker-heartbeat", None)
    assert not beats.matches("worker-online", None)
    assert billing.matches("task-started", "billing.charge")
    assert billing.matches("task-started", "pay1")
    assert not billing.matches("task-started", None)  # a task name rule needs a known name
    assert not billing.matches("task-started", "Billing.charge")  # case-sensitive
    assert secrets.fields[0] == FieldAction("kwargs", "hash")
    assert tracebacks.fields == (FieldAction("traceback", "truncate", 100),)
    assert tracebacks.matches("anything", None)  # no event_type: every event


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "the file: a mapping expected"),
        ({"rulez": []}, "the file: unknown key 'rulez'"),
        ({"rules": {}}, "rules: a list of rules is expected"),
        ({"rules": [{"drop": True, "route": "t"}]}, r"rules\[0\]: exactly one of drop, route"),
        ({"rules": [{"event_type": "x"}]}, r"rules\[0\]: exactly one of drop, route"),
        ({"rules": [{"drop": False}]}, r"rules\[0\].drop: only true"),
        ({"rules": [{"route": "a topic"}]}, r"rules\[0\].route: a Kafka topic name"),
        ({"rules": [{"drop": True, "colour": 1}]}, r"rules\[0\]: unknown key 'colour'"),
        ({"rules": [{"drop": True, "event_type": []}]}, r"rules\[0\].event_type: a pattern"),
        ({"rules": [{"drop": True, "task_name": 3}]}, r"rules\[0\].task_name: a pattern"),
        ({"rules": [{"name": "a b", "drop": True}]}, r"rules\[0\].name: 1-100 of"),
        (
            {"rules": [{"name": "a", "drop": True}, {"name": "a", "drop": True}]},
            r"rules\[1\].name: 'a' names an earlier rule",
        ),
        ({"rules": [{"fields": {}}]}, r"rules\[0\].fields: at least one field"),
        (
            {"rules": [{"drop": True}, {"drop": True}, {"fields": {"kwargs": "hide"}}]},
            r"rules\[2\].fields.kwargs: unknown action 'hide'",
        ),
        ({"rules": [{"fields": {"kwargs": {"truncate": -1}}}]}, r"kwargs.truncate: a number"),
        ({"rules": [{"fields": {"kwargs": {"cut": 3}}}]}, r"kwargs: unknown action 'dict'"),
        ({"rules": [{"fields": {"kwargs": "hash"}}]}, "hash_key: a rule hashes a field"),
        ({"hash_key": {"env": "NOPE"}}, "hash_key.env: NOPE is not set"),
        ({"hash_key": {"env": "SHORT"}}, "hash_key: at least 16 bytes"),
        ({"hash_key": {"file": "/nonexistent/key"}}, "hash_key.file: cannot read"),
        ({"hash_key": {"env": "HASH_KEY", "file": "k"}}, "hash_key: exactly one of file, env"),
        ({"task_name_cache": 0}, "task_name_cache: a positive integer"),
    ],
)
def test_a_bad_rule_is_named_in_one_line(document: Any, message: str) -> None:
    with pytest.raises(RulesError, match=message) as caught:
        parse_rules(document, {**KEY_ENV, "SHORT": "short"})
    assert "\n" not in str(caught.value)


def test_a_file_that_is_not_yaml_names_the_setting_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - drop: true\n  bad: [\n")
    with pytest.raises(ConfigError, match=r"BRIDGE_RULES_FILE: .* is not YAML at line \d"):
        load_rules(path)


def test_the_shipped_example_parses() -> None:
    rules = load_rules(EXAMPLE, {"BRIDGE_HASH_KEY": "an example key of 32 bytes......"})
    assert rules.rules and rules.redacts
    assert yaml.safe_load(EXAMPLE.read_text())["rules"]


def test_the_cli_exits_2_with_one_line_naming_the_bad_rule(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {drop: true}\n  - {drop: true}\n  - fields: {kwargs: hide}\n")
    env = {**os.environ, "BRIDGE_RULES_FILE": str(path), "BRIDGE_HTTP_PORT": "0"}
    result = run_cli("run", env=env, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "BRIDGE_RULES_FILE: rules[2].fields.kwargs: unknown action 'hide'" in line
