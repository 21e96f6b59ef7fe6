"""Buffered AMQP reads: fewer syscalls, and fewer GIL hand-offs, per message.

py-amqp's TCP transport reads each frame with exact-size ``recv`` calls (header, payload, end
byte): nine per message, and each one releases and takes back the GIL that the event loop
thread is competing for. This transport asks the socket for up to 64 KiB at a time and serves
frames from what it got. TLS connections keep py-amqp's own transport.
"""

from __future__ import annotations

import errno
from typing import Any

from amqp.transport import TCPTransport
from kombu.transport import pyamqp

_CHUNK = 65_536


class BufferedTCPTransport(TCPTransport):  # type: ignore[misc]
    """py-amqp's TCP transport with reads served from a buffer filled in large chunks."""

    _buffer: bytes = b""
    _offset: int = 0

    @property
    def _read_buffer(self) -> bytes:
        """Unread bytes (py-amqp puts a partly read frame back here when a read times out)."""
        return self._buffer[self._offset :]

    @_read_buffer.setter
    def _read_buffer(self, value: bytes) -> None:
        self._buffer, self._offset = value, 0

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
