"""CloudEvents binary-mode headers (the CloudEvents Kafka protocol binding) for event records.

Added to a record's own headers when ``BRIDGE_CLOUDEVENTS=binary``; the value stays the event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote

from celery_kafka_bridge.codec import JSON_CONTENT_TYPE, EventRecord, Headers

_SPEC = ("ce_specversion", b"1.0")
_CONTENT_TYPE = ("content-type", JSON_CONTENT_TYPE.encode())
_NO_SOURCE = b"celery://unknown"
_URI_SAFE = "@:.-_~!$&'()*+,;="
"""Characters a URI authority may hold as they are; the rest of a hostname is escaped."""


def cloudevent_headers(record: EventRecord) -> Headers:
    """ce_specversion, ce_id (the event_id), ce_source (celery://<hostname>), ce_type
    (celery.<type>), ce_time (the event's timestamp, when it has one), ce_subject (the task
    id, for task events) and content-type."""
    own = dict(record.headers)
    headers: Headers = [
        _SPEC,
        ("ce_id", own["event_id"]),
        ("ce_source", _source(record.hostname) if record.hostname else _NO_SOURCE),
        ("ce_type", b"celery." + own["event_type"]),
    ]
    time = _rfc3339(record.timestamp)
    if time is not None:
        headers.append(("ce_time", time))
    if "task_id" in own:
        headers.append(("ce_subject", own["task_id"]))
    headers.append(_CONTENT_TYPE)
    return headers


@lru_cache(maxsize=4096)  # a fleet has a few hostnames; quoting one costs more than the rest
def _source(hostname: str) -> bytes:
    return b"celery://" + quote(hostname, safe=_URI_SAFE).encode()


def _rfc3339(timestamp: float | None) -> bytes | None:
    """The Unix time in RFC 3339 (UTC, microseconds); None if there is none or it is out of
    range."""
    if timestamp is None:
        return None
    try:
        moment = datetime.fromtimestamp(timestamp, tz=UTC)
    except (OverflowError, ValueError, OSError):
        return None
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z").encode()
