"""Buffered AMQP reads: fewer syscalls, and fewer GIL hand-offs, per message.

py-amqp's TCP transport reads each frame with exact-size ``recv`` calls (header, payload, end
byte): nine per message, and each one releases and takes back the GIL that the event loop
thread is competing for; around each frame it also sets and restores the socket timeout. This
transport asks the socket for up to 64 KiB at a time and serves whole frames from what it got
without touching the socket. TLS connections keep py-amqp's own transport. It overrides
py-amqp 5's transport internals (``_read``, ``_read_buffer``, ``read_frame``,
``having_timeout``), hence the pin on amqp<6; tests/test_amqp_reads.py checks the framing.
"""

from __future__ import annotations

import errno
import struct
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from amqp.transport import TCPTransport
from kombu.transport import pyamqp

_CHUNK = 65_536
_FRAME_HEADER = struct.Struct(">BHI")  # type, channel, payload size
_FRAME_END = 0xCE


class BufferedTCPTransport(TCPTransport):  # type: ignore[misc]
    """py-amqp's TCP transport with reads served from a buffer filled in large chunks."""

    _buffer: bytes = b""
    _offset: int = 0
    _checked: tuple[bytes, int, tuple[int, int, int]] | None = None
    """The whole frame `having_timeout` found buffered (with the buffer and offset it was found
    at, so a later read cannot use it stale), for the `read_frame` that follows it."""

    @property
    def _read_buffer(self) -> bytes:
        """Unread bytes (py-amqp puts a partly read frame back here when a read times out)."""
        return self._buffer[self._offset :]

    @_read_buffer.setter
    def _read_buffer(self, value: bytes) -> None:
        self._buffer, self._offset = value, 0

    def _frame_at_offset(self) -> tuple[int, int, int] | None:
        """Type, channel and end of the frame at the read offset, if it is all buffered."""
        buffer, offset = self._buffer, self._offset
        if len(buffer) - offset < 8:
            return None
        frame_type, channel, size = _FRAME_HEADER.unpack_from(buffer, offset)
        end = offset + 7 + size
        return (frame_type, channel, end) if end < len(buffer) else None

    def having_timeout(self, timeout: float | None) -> AbstractContextManager[Any]:
        """py-amqp's socket timeout around a read, skipped when a whole frame is buffered."""
        frame = self._frame_at_offset()
        if frame is not None:
            self._checked = (self._buffer, self._offset, frame)
            return nullcontext(self.sock)
        return super().having_timeout(timeout)  # type: ignore[no-any-return]

    def read_frame(self, unpack: Any = struct.unpack) -> tuple[int, int, bytes]:
        """The next frame: straight from the buffer when it holds all of it."""
        checked = self._checked
        if checked is not None and checked[0] is self._buffer and checked[1] == self._offset:
            frame: tuple[int, int, int] | None = checked[2]
        else:
            frame = self._frame_at_offset()
        if frame is None or self._buffer[frame[2]] != _FRAME_END:
            return super().read_frame(unpack)  # type: ignore[no-any-return]  # reads, or raises
        frame_type, channel, end = frame
        payload = self._buffer[self._offset + 7 : end]
        self._offset = end + 1
        return frame_type, channel, payload

    def _read(
        self, n: int, initial: bool = False, _errnos: tuple[int, ...] = (errno.EAGAIN, errno.EINTR)
    ) -> bytes:
        """Exactly ``n`` bytes, from the buffer when it holds them, else from the socket."""
        buffer, offset = self._buffer, self._offset
        end = offset + n
        if end <= len(buffer):
            self._offset = end
            return buffer[offset:end]
        rbuf = buffer[offset:]
        recv = self._quick_recv
        try:
            while len(rbuf) < n:
                try:
                    chunk = recv(max(n - len(rbuf), _CHUNK))
                except OSError as exc:
                    if exc.errno in _errnos:
                        if initial and self.raise_on_initial_eintr:
                            raise TimeoutError() from exc
                        continue
                    raise
                if not chunk:
                    raise OSError("Server unexpectedly closed connection")
                rbuf += chunk
        except BaseException:
            self._read_buffer = rbuf
            raise
        self._buffer, self._offset = rbuf, n
        return rbuf[:n]


class _Connection(pyamqp.Connection):
    def Transport(  # py-amqp's name and signature
        self, host: str, connect_timeout: float | None, ssl: Any, *args: Any, **kwargs: Any
    ) -> Any:
        return BufferedTCPTransport(host, connect_timeout, *args, **kwargs)


class BufferedTransport(pyamqp.Transport):
    """kombu's py-amqp transport over `BufferedTCPTransport`, for amqp:// (not amqps://) URLs:
    ``kombu.Connection(url, transport=BufferedTransport)``."""

    Connection = _Connection
