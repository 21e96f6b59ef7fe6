"""Malformed messages of every kind a broken or hostile publisher can send, and their fates."""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgpack

from celery_kafka_bridge.codec import Reason

_EVENT = {"type": "task-received", "uuid": "bad-1", "hostname": "w@h", "clock": 1}
_UNNAMED_FIELD: dict[Any, Any] = {**_EVENT, 7: "x"}
"""An event with a field name that is not a string: kombu's msgpack refuses it."""

BAD_MESSAGES: list[tuple[bytes, str | None, list[Reason]]] = [
    (b'{"type": "task-received", "uuid": ', "application/json", [Reason.UNDECODABLE]),
    (b'{"type": "task-\xff\xfe"}', "application/json", [Reason.UNDECODABLE]),
    (b"[1, 2, 3]", "application/json", [Reason.NOT_AN_OBJECT] * 3),
    (b'{"uuid": "x", "hostname": "w@h"}', "application/json", [Reason.MISSING_TYPE]),
    (
        b'{"type": "task-received", "blob": "' + b"x" * 100_000 + b'"}',
        "application/json",
        [Reason.OVERSIZED],
    ),
    (pickle.dumps(_EVENT), "application/x-python-serialize", [Reason.UNSUPPORTED_CONTENT_TYPE]),
    (b"type: task-received", "application/x-yaml", [Reason.UNSUPPORTED_CONTENT_TYPE]),
    (msgpack.packb(_EVENT)[:-5], "application/x-msgpack", [Reason.UNDECODABLE]),
    (b"[]", "application/json", [Reason.EMPTY_LIST]),
    (b'{"type": "task-received"}', None, [Reason.UNSUPPORTED_CONTENT_TYPE]),
    (b"42", "application/json", [Reason.NOT_AN_OBJECT]),
    (msgpack.packb(_UNNAMED_FIELD), "application/x-msgpack", [Reason.UNENCODABLE]),
]
"""(body, content type, reason of each dead letter it becomes); the huge body assumes a 64 KiB
limit (BRIDGE_MAX_MESSAGE_BYTES=65536)."""


def expected_reasons(kinds: Iterable[int]) -> Counter[str]:
    """The dead letters, by reason, that the messages ``BAD_MESSAGES[k] for k in kinds`` make."""
    wanted: Counter[str] = Counter()
    for kind in kinds:
        wanted.update(reason.value for reason in BAD_MESSAGES[kind][2])
    return wanted
