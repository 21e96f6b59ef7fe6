"""basic.deliver decoded in a few struct calls: the per-message hot path of the AMQP thread.

py-amqp decodes a delivery through its generic machinery: a ``Message`` built from the method
frame, every basic property (the headers table included) read into a dict, the method's
arguments parsed from a format string, then ``dispatch_method`` and ``_on_basic_deliver``: half
of the AMQP thread's time when it serves every delivery (bench/PROFILE.md). This frame handler
(py-amqp's ``frame_handler`` hook, passed by kombu from ``transport_options``) decodes
basic.deliver, its content header and body frames itself and calls the consumer's callback with
a `Delivered` carrying the attributes consumers read (``body``, ``delivery_info``,
``properties`` with the content type and encoding only). Every other frame, and a delivery
py-amqp would treat specially (a channel that decodes bodies, a one-shot wait
for a delivery), goes through py-amqp's own handler. A delivery to a closing channel is dropped
without a word (py-amqp would log each one).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from amqp import spec
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_handler

log = logging.getLogger(__name__)

_METHOD, _HEADER, _BODY, _HEARTBEAT = 1, 2, 3, 8
_DELIVER = struct.pack(">HH", *spec.Basic.Deliver)
_TAG_AND_REDELIVERED = struct.Struct(">QB")
_HEADER_START = struct.Struct(">HxxQH")  # class id, (weight), body size, property flags
_CONTENT_TYPE, _CONTENT_ENCODING = 0x8000, 0x4000

Frame = tuple[int, int, bytes]


@dataclass(slots=True)
class Delivered:
    """A delivered message, with the attributes of py-amqp's ``Message`` that consumers read."""

    delivery_info: dict[str, Any]
    channel: Any
    properties: dict[str, str] = field(default_factory=dict)
    """``content_type`` and ``content_encoding``, when the publisher set them."""
    body: bytes = b""


@dataclass(slots=True)
class _Incoming:
    message: Delivered
    body_size: int = 0
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0


def fast_frame_handler(connection: Any, callback: Callable[..., Any]) -> Callable[[Frame], bool]:
    """py-amqp's ``frame_handler`` with basic.deliver decoded on a fast path."""
    fallback = frame_handler(connection, callback)
    incoming: dict[int, _Incoming] = {}

    def on_frame(frame: Frame) -> bool:
        frame_type, channel_id, buf = frame
        pending = incoming.get(channel_id)
        if pending is None:
            if frame_type == _METHOD and buf[:4] == _DELIVER:
                message = _deliver_message(connection, channel_id, buf)
                if message is not None:
                    connection.bytes_recv += 1
                    incoming[channel_id] = _Incoming(message)
                    return False
            return fallback(frame)  # type: ignore[no-any-return]
        if frame_type == _HEARTBEAT:
            return fallback(frame)  # type: ignore[no-any-return]
        connection.bytes_recv += 1
        if frame_type == _HEADER and not pending.body_size and not pending.received:
            pending.body_size = _read_header(pending.message, buf)
        elif frame_type == _BODY and pending.received < pending.body_size:
            pending.chunks.append(buf)
            pending.received += len(buf)
        else:
            raise UnexpectedFrame(f"received frame type {frame_type} inside a delivery")
        if pending.received < pending.body_size:
            return False
        del incoming[channel_id]
        message = pending.message
        chunks = pending.chunks
        message.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        _dispatch(message)
        return True

    return on_frame


def _deliver_message(connection: Any, channel_id: int, buf: bytes) -> Delivered | None:
    """The message a basic.deliver frame starts, or None where py-amqp must handle it."""
    channels = connection.channels
    channel = channels.get(channel_id) if channels is not None else None
    if channel is None or channel.auto_decode or spec.Basic.Deliver in channel._pending:
        return None
    offset = 4
    consumer_tag, offset = _shortstr(buf, offset)
    delivery_tag, redelivered = _TAG_AND_REDELIVERED.unpack_from(buf, offset)
    exchange, offset = _shortstr(buf, offset + 9)
    routing_key, _ = _shortstr(buf, offset)
    info = {
        "consumer_tag": consumer_tag,
        "delivery_tag": delivery_tag,
        "redelivered": bool(redelivered & 1),
        "exchange": exchange,
        "routing_key": routing_key,
    }
    return Delivered(info, channel)


def _read_header(message: Delivered, buf: bytes) -> int:
    """Fill in the content type and encoding; the body size."""
    _class_id, body_size, flags = _HEADER_START.unpack_from(buf, 0)
    offset = 14
    if flags & _CONTENT_TYPE:
        message.properties["content_type"], offset = _shortstr(buf, offset)
    if flags & _CONTENT_ENCODING:
        message.properties["content_encoding"], offset = _shortstr(buf, offset)
    return int(body_size)


def _shortstr(buf: bytes, offset: int) -> tuple[str, int]:
    """An AMQP short string at ``offset`` (decoded as py-amqp does) and the offset after it."""
    end = offset + 1 + buf[offset]
    return buf[offset + 1 : end].decode("utf-8", "surrogatepass"), end


def _dispatch(message: Delivered) -> None:
    """Hand the message to its consumer, as py-amqp's ``Channel._on_basic_deliver`` does."""
    channel, info = message.channel, message.delivery_info
    if channel.is_closing:
        return  # RabbitMQ takes it back with the channel (`amqp.queues.ConsumerChannel`)
    consumer = channel.callbacks.get(info["consumer_tag"])
    if consumer is None:
        log.warning(
            "rejecting (requeue) delivery %s for consumer %s, which has no callback",
            info["delivery_tag"],
            info["consumer_tag"],
        )
        channel.basic_reject(info["delivery_tag"], requeue=True)
        return
    consumer(message)
