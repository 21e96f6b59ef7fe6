"""Records into Kafka one batch per partition at a time: one future per batch, not per record.

aiokafka's ``send()`` costs a coroutine, a partitioner call and a future per record; at tens of
thousands of events per second that is most of the bridge's CPU. Here records are appended to
an open batch per partition. A partition has at most one batch on its way to Kafka; while it
is, the next one fills (as the producer's own accumulator merges records), so batches grow with
the load and a lone record leaves after ``linger_ms``. A batch is closed when it is handed to
``send_batch()``, so nothing is appended to a batch aiokafka may already be sending. Batches of
a partition leave in the order their records were appended.

A batch Kafka did not take is sent again, rebuilt from its records, with backoff, until it is
taken; the partition's later batches wait meanwhile, so a failure never reorders a partition
(a task's events stay in order through a Kafka outage).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from celery_kafka_bridge.codec import Headers
from celery_kafka_bridge.retry import backoff_wait

Token = TypeVar("Token")
OnDone = Callable[[list[Token]], None]
"""Called with the tokens of a batch's records once Kafka acknowledged them."""
OnFailed = Callable[[int, BaseException], None]
"""Called with the number of records of a batch Kafka did not take (sent again after a
backoff), and the error."""

_Record = tuple[bytes | None, bytes, Headers]


@dataclass(slots=True)
class _Batch(Generic[Token]):
    builder: Any
    opened_at: float
    tokens: list[Token] = field(default_factory=list)
    records: list[_Record] = field(default_factory=list)


class BatchWriter(Generic[Token]):
    """Per-partition batches of records, each reported to ``on_done`` when Kafka acked it."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        linger_ms: int,
        on_done: OnDone[Token],
        on_failed: OnFailed,
    ) -> None:
        self._producer = producer
        self._linger = linger_ms / 1000
        self._on_done = on_done
        self._on_failed = on_failed
        self._batches: dict[tuple[str, int], deque[_Batch[Token]]] = {}
        self._submitters: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._loop = asyncio.get_running_loop()

    def append(
        self,
        topic: str,
        partition: int,
        *,
        key: bytes | None,
        value: bytes,
        headers: Headers,
        token: Token,
    ) -> None:
        """Add a record to the partition's open batch; ``token`` comes back with its outcome."""
        tp = (topic, partition)
        batches = self._batches.get(tp)
        if batches is None:
            batches = self._batches[tp] = deque()
        if not batches or not self._add(batches[-1], key, value, headers):
            batches.append(_Batch(self._producer.create_batch(), self._loop.time()))
            if not self._add(batches[-1], key, value, headers):
                raise ValueError(f"a record of {len(value)} bytes does not fit in a batch")
        batch = batches[-1]
        batch.tokens.append(token)
        batch.records.append((key, value, headers))
        if tp not in self._submitters:
            self._submitters[tp] = self._loop.create_task(self._submit(tp, batches))

    @staticmethod
    def _add(batch: _Batch[Token], key: bytes | None, value: bytes, headers: Headers) -> bool:
        """Append to the batch; False when it is full (or closed)."""
        added = batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
        return added is not None

    async def _submit(self, tp: tuple[str, int], batches: deque[_Batch[Token]]) -> None:
        """Hand the partition's batches to aiokafka in order, each once the last one is acked."""
        try:
            while batches:
                batch = batches[0]
                wait = batch.opened_at + self._linger - self._loop.time()
                if len(batches) == 1 and wait > 0:
                    await asyncio.sleep(wait)  # the open batch fills for linger_ms
                batches.popleft()
                batch.builder.close()  # meanwhile the next batch fills
                try:
                    await self._send([batch.builder], tp)
                except Exception as exc:
                    self._on_failed(len(batch.records), exc)
                    retrying = AsyncRetrying(
                        wait=backoff_wait(),
                        retry=retry_if_exception_type(Exception),
                        before_sleep=partial(self._failed_again, len(batch.records)),
                    )
                    await retrying(self._send_again, batch.records, tp)
                self._on_done(batch.tokens)
        finally:
            del self._submitters[tp]

    async def _send(self, builders: list[Any], tp: tuple[str, int]) -> None:
        topic, partition = tp
        for builder in builders:
            await (await self._producer.send_batch(builder, topic, partition=partition))

    async def _send_again(self, records: list[_Record], tp: tuple[str, int]) -> None:
        """The records in new batches: a batch aiokafka had cannot be sent twice. More than
        one batch if the new timestamps make the records outgrow one."""
        builders = [self._producer.create_batch()]
        for key, value, headers in records:
            if builders[-1].append(timestamp=None, key=key, value=value, headers=headers) is None:
                builders.append(self._producer.create_batch())
                builders[-1].append(timestamp=None, key=key, value=value, headers=headers)
        for builder in builders:
            builder.close()
        await self._send(builders, tp)

    def _failed_again(self, records: int, state: RetryCallState) -> None:
        assert state.outcome is not None
        self._on_failed(records, state.outcome.exception())  # type: ignore[arg-type]

    async def close(self) -> None:
        """Stop handing batches over; what was not handed over stays unconfirmed."""
        tasks = list(self._submitters.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
