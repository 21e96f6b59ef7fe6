"""JSON as Celery's receiver reads it, for what the strict fast path (orjson) refuses or alters.

kombu reads event bodies with Python's ``json``: it accepts ``NaN``, ``Infinity``,
``-Infinity``, lone surrogate escapes (``"\\udc80"``) and integers of any size, and its object
hook turns type markers (``{"__type__": "bytes", "__value__": ...}``, kombu >= 5.3) back into
Python values. orjson rejects the first three and reads integers past 64 bits as floats.

msgpack values JSON cannot hold are written with markers too: bytes as kombu's JSON encoder
writes them (``bytes`` when they are UTF-8, else ``base64``), ext types (the timestamp type
included) as ``msgpack_ext`` and maps with a key that is not a string as ``msgpack_map``.
`loads` reads all of them back. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgpack
import orjson
from kombu.utils import json as kombu_json

TYPE, VALUE = "__type__", "__value__"
MARKER_KEYS = frozenset({TYPE, VALUE})
MSGPACK_EXT = "msgpack_ext"
"""``{"code": <ext type code>, "data": <base64 of its bytes>}``."""
MSGPACK_MAP = "msgpack_map"
"""``[[key, value], ...]`` in the map's order: a map with a key that is not a string, or a
msgpack map that only looks like a marker (so it is not read back as one)."""
_MSGPACK_ONLY = frozenset({MSGPACK_EXT, MSGPACK_MAP})
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1
_MARKER_PROBE = b'"__type__"'


class NotJson(TypeError):
    """A decoded value that no convention here writes as JSON."""


def loads_python(body: bytes) -> Any:
    """The body as kombu's JSON decoder reads it, without its type hook.

    Raises ValueError (invalid UTF-8 or JSON, an integer of more than 4,300 digits) or
    RecursionError (nested too deep), where kombu fails too.
    """
    return json.loads(body.decode("utf-8"))


def canonical(value: Any, msgpack_source: bool = False) -> tuple[bytes, bool]:
    """The canonical JSON of a decoded value, and whether it is strict JSON.

    Canonical: keys sorted, no whitespace, UTF-8. Strict values (no NaN or infinities, no lone
    surrogates, integers within 64 bits) are written by orjson, so their bytes and ``event_id``
    are the fast path's; others by Python's ``json`` with lone surrogates as ``\\uXXXX``
    escapes. ``msgpack_source``: the value came from msgpack, so bytes, ext types and odd maps
    are written as markers. Raises `NotJson` or RecursionError.
    """
    walk = _Walk(msgpack_source)
    converted = walk.value(value)
    if walk.strict:
        try:
            return orjson.dumps(converted, option=orjson.OPT_SORT_KEYS), True
        except orjson.JSONEncodeError:  # nested deeper than orjson writes (255)
            pass
    text = json.dumps(
        converted, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    )
    return text.encode("utf-8", "backslashreplace"), walk.strict


class _Walk:
    """One pass over a decoded value: markers where JSON has no type, strictness noted."""

    def __init__(self, msgpack_source: bool) -> None:
        self.msgpack_source = msgpack_source
        self.strict = True

    def value(self, item: Any) -> Any:  # noqa: PLR0911 - one branch per type
        if isinstance(item, str):
            self._text(item)
            return item
        if isinstance(item, bool) or item is None:
            return item
        if isinstance(item, int):
            if not _INT64_MIN <= item <= _UINT64_MAX:
                self.strict = False
            return item
        if isinstance(item, float):
            if not math.isfinite(item):
                self.strict = False
            return item
        if isinstance(item, dict):
            return self._mapping(item)
        if isinstance(item, list):
            return [self.value(x) for x in item]
        return self._other(item)

    def _text(self, text: str) -> None:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate
                self.strict = False

    def _mapping(self, mapping: dict[Any, Any]) -> Any:
        if all(isinstance(k, str) for k in mapping):
            for key in mapping:
                self._text(key)
            if not (self.msgpack_source and mapping.keys() == MARKER_KEYS):
                return {k: self.value(v) for k, v in mapping.items()}
        pairs = [[self.value(k), self.value(v)] for k, v in mapping.items()]
        return {TYPE: MSGPACK_MAP, VALUE: pairs}

    def _other(self, item: Any) -> Any:
        if isinstance(item, bytes):
            try:  # exactly as kombu's JSON encoder writes bytes
                return {TYPE: "bytes", VALUE: item.decode("utf-8")}
            except UnicodeDecodeError:
                return {TYPE: "base64", VALUE: base64.b64encode(item).decode()}
        if isinstance(item, msgpack.Timestamp):
            return _ext(-1, item.to_bytes())
        if isinstance(item, msgpack.ExtType):  # a tuple: checked before tuples
            return _ext(item.code, item.data)
        if isinstance(item, tuple):
            return [self.value(x) for x in item]
        raise NotJson(f"a {type(item).__name__} is not JSON")


def _ext(code: int, data: bytes) -> dict[str, Any]:
    return {TYPE: MSGPACK_EXT, VALUE: {"code": code, "data": base64.b64encode(data).decode()}}


def loads(value: bytes, strict: bool = True) -> tuple[Any, bool]:
    """A record value as Celery reads it, and whether it holds msgpack-only values.

    ``strict``: the record has no ``json_strict: false`` header, so orjson reads it (fast);
    otherwise, or if orjson refuses it (a record some other producer wrote), Python's ``json``
    does. Type markers become what kombu makes of them (bytes, datetime, Decimal, UUID...);
    ``msgpack_ext`` and ``msgpack_map`` what msgpack gave (ExtType, Timestamp, maps with any
    keys); unknown markers stay dicts, as kombu < 5.3 left them. Raises ValueError for a value
    that is not JSON.
    """
    if strict and _MARKER_PROBE not in value:
        try:
            return orjson.loads(value), False
        except orjson.JSONDecodeError:
            pass
    hook = _Hook()
    return json.loads(value.decode("utf-8"), object_hook=hook), hook.msgpack_only


class _Hook:
    """kombu's object hook, plus the msgpack markers, leaving unknown markers alone."""

    def __init__(self) -> None:
        self.msgpack_only = False

    def __call__(self, mapping: dict[str, Any]) -> Any:
        if len(mapping) != 2 or mapping.keys() != MARKER_KEYS:
            return mapping
        kind, value = mapping[TYPE], mapping[VALUE]
        try:
            if kind in _MSGPACK_ONLY:
                decoded = _from_msgpack_marker(kind, value)
                self.msgpack_only = True
                return decoded
            return kombu_json.object_hook(mapping)
        except (ValueError, TypeError, KeyError, AttributeError):
            return mapping


def _from_msgpack_marker(kind: str, value: Any) -> Any:
    if kind == MSGPACK_MAP:
        return {key: item for key, item in value}
    code, data = value["code"], base64.b64decode(value["data"])
    # msgpack reads its timestamp type (-1) as a Timestamp, the application's (0-127) as ExtType.
    return msgpack.Timestamp.from_bytes(data) if code == -1 else msgpack.ExtType(code, data)
