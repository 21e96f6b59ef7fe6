"""What every source offers the pipeline: deliveries that carry their ack, handed off in batches
from a thread of the source's own, and acks coming back to that thread in batches.

A source (`amqp.source.AmqpSource`, `redis.source.RedisSource`) subclasses `SourceThread` and
implements `_connect` and `_session`: consume, fill ``_batch`` and `_hand_off` it, apply what
`_take_acks` returns, all on its own thread. The thread reconnects with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import Retrying, retry_if_exception_type

from celery_kafka_bridge.acks import AckOp
from celery_kafka_bridge.codec import Envelope
from celery_kafka_bridge.logs import describe, mask_credentials
from celery_kafka_bridge.retry import backoff_delay, backoff_policy

log = logging.getLogger(__name__)

_STABLE_SESSION_SECONDS = 5.0


@dataclass(slots=True)
class Delivery:
    """One broker message; ``generation`` names the session its tag belongs to, and the tag is
    what the pipeline acks once Kafka has every record of the message."""

    generation: int
    tag: int
    envelope: Envelope
    redelivered: bool


class SourceListener(Protocol):
    """Receives what the source thread sees; each method is called on the source thread."""

    def on_attached(self, generation: int) -> None: ...
    def on_detached(self, generation: int) -> None: ...
    def on_deliveries(self, batch: list[Delivery]) -> None: ...
    def on_fatal(self, exc: BaseException) -> None: ...


class SourceThread:
    """A source's thread, its stop signals and the hand-offs to and from the event loop."""

    _listener: SourceListener
    kind = "source"
    """The broker's name in the thread's name and the log lines."""
    _connect_errors: tuple[type[BaseException], ...] = (Exception,)
    """What a failed connection attempt raises (retried with backoff)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._received = 0  # messages received over every session (this thread's)
        self._acks: deque[tuple[int, list[AckOp], int]] = deque()
        self._closed = threading.Event()
        self._stop_consuming = threading.Event()
        self._held = threading.Event()
        self._generation = 0
        self._batch: list[Delivery] = []
        self._handed_off = 0  # batches handed to the event loop (written by this thread only)
        self._processed = 0  # of those, how many it has processed (written by the loop only)
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-source", daemon=True)

    def start(self, listener: SourceListener) -> None:
        """Connect and consume on the source thread, reporting to ``listener``."""
        self._listener = listener
        self._thread.start()

    def stop_consuming(self) -> None:
        """Take no new messages; acks are still applied until `close`."""
        self._stop_consuming.set()

    def hold(self, held: bool) -> None:
        """Take no messages while held (thread-safe), e.g. while a topic is not durable enough:
        the queue keeps what arrives; messages already taken are still acked. A source that
        cannot buffer (Redis pub/sub) keeps taking them."""
        if held:
            self._held.set()
        else:
            self._held.clear()

    def batch_processed(self) -> None:
        """The event loop is done with a handed-off batch (called on the loop thread)."""
        self._processed += 1

    def post_acks(self, generation: int, ops: list[AckOp], acked_through: int) -> None:
        """Queue acks for the source thread (thread-safe); stale generations are dropped there.
        ``acked_through``: every delivery up to this tag is acked once ``ops`` are applied."""
        self._acks.append((generation, ops, acked_through))

    def close(self, timeout: float = 10.0) -> None:
        """Apply the acks already posted and disconnect (unacked messages are the broker's)."""
        self._closed.set()
        self._thread.join(timeout)

    def _connect(self) -> Any:
        """A new connection (raises one of ``_connect_errors`` if the broker is away)."""
        raise NotImplementedError

    def _session(self, conn: Any) -> None:
        """Consume on ``conn`` until closed; raise what the connection's loss raises."""
        raise NotImplementedError

    def _session_errors(self, conn: Any) -> tuple[type[BaseException], ...]:
        """What a lost connection raises in `_session` (then the thread reconnects)."""
        raise NotImplementedError

    def _disconnect(self, conn: Any) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        quick_failures = 0
        try:
            while not self._closed.is_set():
                conn = self._connect_retrying()
                if conn is None:
                    return
                started, received = time.monotonic(), self._received
                wait = 0.0
                try:
                    self._session(conn)
                except self._session_errors(conn) as exc:
                    # A session that fails straight away would fail again: back off. One that
                    # received messages worked (a cut connection): reconnect at once.
                    quick = (
                        self._received == received
                        and time.monotonic() - started < _STABLE_SESSION_SECONDS
                    )
                    quick_failures = quick_failures + 1 if quick else 0
                    wait = backoff_delay(quick_failures) if quick else 0.0
                    log.warning(
                        "%s disconnected: %s; reconnecting in %.1fs", self.kind, describe(exc), wait
                    )
                finally:
                    self._batch = []  # never acked: the broker's (or other replicas') to resend
                    self._listener.on_detached(self._generation)
                    self._disconnect(conn)
                self._sleep(wait)
        except BaseException as exc:
            self._listener.on_fatal(exc)

    def _connect_retrying(self) -> Any:
        """`_connect`, retried with backoff until it works; None if closed meanwhile."""
        retrying = Retrying(
            retry=retry_if_exception_type(self._connect_errors),
            stop=lambda _state: self._closed.is_set(),
            sleep=self._sleep,
            **backoff_policy(f"{self.kind} connect to {mask_credentials(self._url)}"),
        )
        try:
            for attempt in retrying:
                with attempt:
                    return None if self._closed.is_set() else self._connect()
        except self._connect_errors:
            if not self._closed.is_set():
                raise
            # Told to stop while the broker was away: a clean stop, not a failure.
        return None

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake at once when the source is closed."""
        self._closed.wait(seconds)

    @property
    def _loop_idle(self) -> bool:
        """The event loop has processed every batch handed to it."""
        return self._processed == self._handed_off

    def _hand_off(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._handed_off += 1
            self._listener.on_deliveries(batch)

    def _take_acks(self) -> list[tuple[list[AckOp], int]]:
        """The acks posted for the current generation, in order (older ones are dropped)."""
        acks, taken = self._acks, []
        while acks:
            generation, ops, acked_through = acks.popleft()
            if generation == self._generation:
                taken.append((ops, acked_through))
        return taken
