"""Buffered AMQP reads return the same frames as py-amqp's own, however the bytes arrive."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest
from amqp.exceptions import UnexpectedFrame

from celery_kafka_bridge.amqp.reads import BufferedTCPTransport


def frame(channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", 1, channel, len(payload)) + payload + b"\xce"


@pytest.fixture
def pair() -> Iterator[tuple[BufferedTCPTransport, socket.socket]]:
    ours, theirs = socket.socketpair()
    transport = BufferedTCPTransport("127.0.0.1:5672")
    transport.sock = ours
    transport._setup_transport()
    yield transport, theirs
    ours.close()
    theirs.close()


def test_frames_split_anywhere_and_packed_together_read_back_whole(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, peer = pair
    payloads = [b"x" * size for size in (0, 1, 7, 300, 70_000, 5)]
    stream = b"".join(frame(i, p) for i, p in enumerate(payloads))
    for start in range(0, len(stream), 4093):  # chunks that cut headers and payloads
        peer.sendall(stream[start : start + 4093])
    for i, payload in enumerate(payloads):
        assert transport.read_frame() == (1, i, payload)
    assert transport._read_buffer == b""


def test_a_read_that_times_out_mid_frame_loses_nothing(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, peer = pair
    transport.sock.settimeout(0.05)
    whole = frame(3, b"payload") + frame(4, b"next")
    peer.sendall(whole[:9])  # the header and two payload bytes
    with pytest.raises(socket.timeout):
        transport.read_frame()
    assert transport._read_buffer == whole[:9], "the partial frame is kept for the next read"
    peer.sendall(whole[9:])
    assert transport.read_frame() == (1, 3, b"payload")
    assert transport.read_frame() == (1, 4, b"next")


def test_a_closed_peer_is_an_error(pair: tuple[BufferedTCPTransport, socket.socket]) -> None:
    transport, peer = pair
    peer.close()
    with pytest.raises(OSError, match="unexpectedly closed"):
        transport.read_frame()


def test_a_frame_with_a_bad_end_byte_is_refused_as_py_amqp_does(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, peer = pair
    peer.sendall(frame(1, b"ok") + frame(2, b"bad")[:-1] + b"\x00" + frame(3, b"more"))
    assert transport.read_frame() == (1, 1, b"ok")
    with pytest.raises(UnexpectedFrame):
        transport.read_frame()


def test_the_frame_found_before_a_read_is_not_used_once_the_buffer_changed(
    pair: tuple[BufferedTCPTransport, socket.socket],
) -> None:
    transport, peer = pair
    peer.sendall(frame(1, b"first") + frame(2, b"second"))
    assert transport.read_frame() == (1, 1, b"first")  # fills the buffer from the socket
    with transport.having_timeout(1.0):  # finds "second" whole in the buffer
        # Put back so that the stale frame's end byte would fall on this frame's end byte.
        put_back = b"p" * 19
        transport._read_buffer = frame(3, put_back) + frame(2, b"second")
        assert transport.read_frame() == (1, 3, put_back)
    with transport.having_timeout(1.0):
        assert transport.read_frame() == (1, 2, b"second")
