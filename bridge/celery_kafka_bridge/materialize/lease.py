"""The slice leases: one exclusive RabbitMQ queue per slice, which only one materializer holds.

RabbitMQ deletes an exclusive queue the moment its connection closes (a SIGKILL closes the
socket), so a standby takes over within a poll interval, and no consumer-group rebalance is
involved (Tansu's group joins can stall). The holder's own connection is watched: if it drops,
the lease may be someone else's already, so the holder stops writing and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

from kombu.connection import Connection

from celery_kafka_bridge.amqp.queues import close_quietly, take_exclusive
from celery_kafka_bridge.config import Config
from celery_kafka_bridge.errors import TransientError
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.materialize.slices import Slice
from celery_kafka_bridge.retry import backoff_delay
from celery_kafka_bridge.tls import amqp_ssl

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def lease_queue(config: Config, slice_: Slice) -> str:
    return f"{config.queue_prefix}.{config.node_id}.materialize.{slice_}.lease"


class Lease:
    """``await acquire()`` until this process holds the lease of a slice (the first free one
    of `Config.materialize_slices`, then `slice`); ``lost`` resolves if it goes."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[None] | None = None
        self.slice: Slice | None = None

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._held, self.lost = loop.create_future(), loop.create_future()
        self._thread = threading.Thread(target=self._run, name="materialize-lease", daemon=True)
        self._thread.start()
        await self._held

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            conn: Any = Connection(
                self._config.amqp_url, connect_timeout=5, heartbeat=10, ssl=amqp_ssl(self._config)
            )
            try:
                conn.ensure_connection(max_retries=1)
                attempt = 0
                if self._hold(conn):
                    return
            except (OSError, *conn.connection_errors, *conn.channel_errors) as exc:
                if self.lost is not None and self._held is not None and self._held.done():
                    self._signal(self.lost, TransientError(f"lease lost: {describe(exc)}"))
                    return
                attempt += 1
                log.warning("materialize lease: %s", describe(exc))
                self._stop.wait(backoff_delay(attempt))
            finally:
                close_quietly(conn)

    def _hold(self, conn: Any) -> bool:
        """Wait for a slice's lease, then keep its connection alive; True once asked to stop."""
        count = self._config.materialize_slices
        while self.slice is None:
            for slice_ in (Slice(index, count) for index in range(count)):
                queue = lease_queue(self._config, slice_)
                if take_exclusive(conn.connection, queue):
                    self.slice = slice_
                    log.info("materialize lease %s taken", queue)
                    break
            else:
                if self._stop.wait(POLL_SECONDS):
                    return True
                conn.heartbeat_check()
        assert self._held is not None
        self._signal(self._held, None)
        while not self._stop.is_set():
            conn.heartbeat_check()
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=POLL_SECONDS)
        return True

    def _signal(self, future: asyncio.Future[None], exc: BaseException | None) -> None:
        def settle() -> None:
            if future.done():
                return
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)

        assert self._loop is not None
        self._loop.call_soon_threadsafe(settle)
