"""Ways to hurt the bridge: a TCP proxy that can cut its AMQP connection, and rabbitmqctl."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import threading

from celery_kafka_bridge.embedded import free_port
from chaos.load import background

log = logging.getLogger(__name__)

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() sends RST, as a dropped network path would look."""


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to an upstream; `cut` resets every proxied connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        background(self._accept)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), 5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            background(_pump, client, upstream)
            background(_pump, upstream, client)

    def upstream_ports(self) -> list[int]:
        """Local ports of the proxy's connections to the upstream (RabbitMQ's peer ports)."""
        with self._lock:
            return [up.getsockname()[1] for _, up in self._pairs if up.fileno() != -1]

    def cut(self) -> int:
        """Reset both sides of every live connection; how many were cut."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self._listener.close()
        self.cut()


def _pump(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65_536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout


def close_connections_from(peer_ports: list[int], why: str) -> int:
    """Have RabbitMQ close the connections coming from these local ports; how many it closed."""
    closed = 0
    for line in rabbitmqctl(
        "list_connections", "--no-table-headers", "pid", "peer_port"
    ).splitlines():
        pid, _, port = line.partition("\t")
        if port.strip().isdigit() and int(port) in peer_ports:
            rabbitmqctl("close_connection", pid, why)
            closed += 1
    return closed
