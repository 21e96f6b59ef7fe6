"""The aiokafka producer's lifecycle: started (or refused at once), bounded, replaced when stuck.

Every aiokafka call that can wait for a broker runs under an outer timeout: with idempotence
on, aiokafka retries a batch forever while Kafka is away, and ``stop()`` first waits for every
pending batch (aiokafka #1101). A producer whose idempotence state is lost refuses every later
batch of a partition (aiokafka #1017), so it is closed and a new one started; sends waiting on
the old one fail with `ProducerReplaced` and are sent again by their partition's writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.kafka.errors import ProducerReplaced, refuses_idempotence
from celery_kafka_bridge.logs import describe
from celery_kafka_bridge.retry import backoff

log = logging.getLogger(__name__)

_RETRIABLE = (KafkaError, OSError, TimeoutError)


def outer_timeout(request_timeout_ms: int) -> float:
    """How long any one aiokafka call may take: aiokafka's own request timeout can pass twice
    (a batch expires after one, its last request times out after another), plus slack."""
    return 2 * request_timeout_ms / 1000 + 5.0


class Producer:
    """An `AIOKafkaProducer` that can be replaced; `generation` counts the replacements."""

    def __init__(self, options: dict[str, Any], on_reset: Callable[[], None]) -> None:
        self._options = options
        self._on_reset = on_reset
        self.timeout = outer_timeout(options["request_timeout_ms"])
        self._current: AIOKafkaProducer | None = None
        self._lost: asyncio.Future[None] | None = None
        self._ready = asyncio.Event()
        """Clear while the producer is being replaced: calls wait for the new one."""
        self._lock = asyncio.Lock()
        self.generation = 0

    async def _producer(self) -> tuple[AIOKafkaProducer, asyncio.Future[None]]:
        """The current producer (once it is up) and the future set when it is replaced."""
        if not self._ready.is_set():
            await self._ready.wait()
        assert self._current is not None and self._lost is not None
        return self._current, self._lost

    async def start(self) -> None:
        """Connect, retrying with backoff until Kafka answers; a broker that refuses an
        idempotent producer stops the bridge at once (`ConfigError`, exit 2)."""
        async for attempt in backoff("kafka connect", _RETRIABLE):
            with attempt:
                self._current = await self._started()
        self._lost = asyncio.get_running_loop().create_future()
        self._ready.set()

    async def _started(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**self._options)
        try:
            async with asyncio.timeout(self.timeout):
                await producer.start()
        except BaseException as exc:
            await self._close(producer)
            if self._options["enable_idempotence"] and refuses_idempotence(exc):
                raise ConfigError(
                    f"Kafka refused an idempotent producer ({describe(exc)}): set "
                    "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE=false, or use a broker that allows "
                    "idempotent producers (InitProducerId)"
                ) from exc
            raise
        return producer

    def create_batch(self) -> Any:
        """An empty batch builder (not tied to one producer: any generation can send it)."""
        assert self._current is not None, "start() first"
        return self._current.create_batch()

    async def send(self, builders: list[Any], topic: str, partition: int) -> None:
        """Hand the batches to aiokafka in order and wait until Kafka acked each; raises
        `ProducerReplaced` if the producer is replaced meanwhile, TimeoutError if stuck."""
        producer, lost = await self._producer()
        try:
            async with asyncio.timeout(self.timeout):
                for builder in builders:
                    acked = await producer.send_batch(builder, topic, partition=partition)
                    await asyncio.wait((acked, lost), return_when=asyncio.FIRST_COMPLETED)
                    if not acked.done():
                        acked.add_done_callback(_seen)  # a new producer sends it again
                        raise ProducerReplaced(f"producer {self.generation} replaced")
                    acked.result()
        except TimeoutError as exc:
            raise TimeoutError(f"no answer from kafka within {self.timeout:.0f}s") from exc

    async def partitions_for(self, topic: str) -> set[int]:
        producer, _ = await self._producer()
        async with asyncio.timeout(self.timeout):
            return set(await producer.partitions_for(topic))

    async def reset(self, generation: int, cause: BaseException) -> None:
        """Replace the producer that failed with ``cause``, unless another partition's writer
        already did (``generation`` is the one its send used)."""
        async with self._lock:
            if generation != self.generation:
                return
            self.generation += 1  # sends from now on wait for, and use, the new producer
            log.warning(
                "kafka producer state lost (%s); starting a new producer, every unconfirmed "
                "batch is sent again",
                describe(cause),
            )
            self._on_reset()
            self._ready.clear()
            old, lost = self._current, self._lost
            assert old is not None and lost is not None, "start() first"
            lost.set_result(None)  # wakes the sends still waiting on the old producer
            await self._abandon(old)
            await self.start()
            log.info("kafka producer replaced")

    async def stop(self) -> None:
        if self._current is not None:
            producer, self._current = self._current, None
            self._ready.clear()
            try:
                async with asyncio.timeout(self.timeout):
                    await producer.stop()
            except (TimeoutError, KafkaError, OSError) as exc:
                log.debug("stopping the kafka producer failed (%s)", describe(exc))
                await self._abandon(producer)

    async def _close(self, producer: AIOKafkaProducer) -> None:
        """A producer that failed to start."""
        with contextlib.suppress(TimeoutError, KafkaError, OSError):
            async with asyncio.timeout(self.timeout):
                await producer.stop()

    async def _abandon(self, producer: AIOKafkaProducer) -> None:
        """Close without waiting for its pending batches (their writers send them again):
        aiokafka's ``stop()`` first waits for all of them, forever while the broker is away
        (#1101), and offers no other way, so this stops its sender and client directly."""
        producer._closed = True  # also silences its "unclosed producer" warning
        try:
            async with asyncio.timeout(self.timeout):
                await producer._sender.close()
                await producer.client.close()
        except Exception as exc:  # discarded whatever happens: never fail the reset
            log.debug("abandoning the kafka producer: %s", describe(exc))


def _seen(future: asyncio.Future[Any]) -> None:
    """Take an abandoned send's outcome, so asyncio does not log it as never retrieved."""
    if not future.cancelled():
        future.exception()
