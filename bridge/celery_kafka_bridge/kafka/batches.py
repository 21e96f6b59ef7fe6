"""Records into Kafka one batch per partition at a time: one future per batch, not per record.

aiokafka's ``send()`` costs a coroutine, a partitioner call and a future per record; at tens of
thousands of events per second that is most of the bridge's CPU. Here records are appended to
an open batch per partition. A partition has at most one batch on its way to Kafka; while it
is, the next one fills (as the producer's own accumulator merges records), so batches grow with
the load and a lone record leaves after ``linger_ms``. A batch is closed when it is handed to
``send_batch()``, so nothing is appended to a batch aiokafka may already be sending. Batches of
a partition leave in the order their records were appended.

A batch Kafka did not take is handled by the kind of error (`errors.classify`), and the
partition's later batches wait meanwhile, so a failure never reorders a partition:

- transient: sent again, rebuilt from its records, after a backoff, until it is taken;
- a record the topic refuses: the batch is split in halves, sent in order, until the record is
  alone; that record goes to the listener (`Listener.rejected`, which dead-letters it);
- not authorized: sent again after a slow backoff (only an operator can fix it);
- producer state lost: the producer is replaced, then the batch is sent again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from celery_kafka_bridge.codec import Headers
from celery_kafka_bridge.kafka.errors import Kind, classify
from celery_kafka_bridge.kafka.producer import Producer
from celery_kafka_bridge.retry import backoff_delay, slow_delay

Token = TypeVar("Token")
_Record = tuple[bytes | None, bytes, Headers]


class Listener(Protocol[Token]):
    """Told what became of each record; the writer never drops one on its own."""

    def written(self, topic: str, tokens: list[Token]) -> None:
        """Kafka acknowledged these records of ``topic`` (acks=all)."""

    def failed(self, topic: str, records: int, exc: BaseException, kind: Kind) -> None:
        """Kafka did not take ``records`` records; they are sent again (after a wait)."""

    def rejected(self, token: Token, exc: BaseException) -> bool:
        """The topic can never take this record: take it over (True), or False to have it
        sent again after a slow backoff."""


@dataclass(slots=True)
class _Batch(Generic[Token]):
    builder: Any
    opened_at: float
    tokens: list[Token] = field(default_factory=list)
    records: list[_Record] = field(default_factory=list)


class BatchWriter(Generic[Token]):
    """Per-partition batches of records, each reported to the listener once Kafka acked it."""

    def __init__(self, producer: Producer, linger_ms: int, listener: Listener[Token]) -> None:
        self._producer = producer
        self._linger = linger_ms / 1000
        self._listener = listener
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
        """Hand the partition's batches to aiokafka in order, each once the last one is done."""
        try:
            while batches:
                batch = batches[0]
                wait = batch.opened_at + self._linger - self._loop.time()
                if len(batches) == 1 and wait > 0:
                    await asyncio.sleep(wait)  # the open batch fills for linger_ms
                batches.popleft()
                batch.builder.close()  # meanwhile the next batch fills
                await self._deliver(tp, batch)
        finally:
            del self._submitters[tp]

    async def _deliver(self, tp: tuple[str, int], batch: _Batch[Token]) -> None:
        """Until every record of the batch is in Kafka or taken over by the listener, in order.

        ``parts`` holds what is left, front first: the batch, or after a refused record, its
        halves. Only the front part is ever in flight.
        """
        parts: deque[tuple[list[Token], list[_Record], list[Any]]] = deque(
            [(batch.tokens, batch.records, [batch.builder])]
        )
        failures = 0  # in a row, for the backoff
        while parts:
            tokens, records, builders = parts[0]
            generation = self._producer.generation
            try:
                await self._producer.send(builders or self._rebuild(records), *tp)
            except Exception as exc:
                kind = classify(exc)
                parts[0] = (tokens, records, [])  # a batch aiokafka had cannot be sent twice
                if kind is Kind.RECORD and len(records) > 1:
                    half = len(records) // 2
                    parts.popleft()
                    parts.extendleft(
                        [(tokens[half:], records[half:], []), (tokens[:half], records[:half], [])]
                    )
                    continue
                if kind is Kind.RECORD and self._listener.rejected(tokens[0], exc):
                    parts.popleft()
                    continue
                failures += 1
                self._listener.failed(tp[0], len(records), exc, kind)
                await self._wait(kind, failures, generation, exc)
                continue
            parts.popleft()
            failures = 0
            self._listener.written(tp[0], tokens)

    async def _wait(self, kind: Kind, failures: int, generation: int, exc: Exception) -> None:
        """Before sending a failed part again."""
        if kind is Kind.STATE:
            await self._producer.reset(generation, exc)
        elif kind is Kind.TRANSIENT:
            await asyncio.sleep(backoff_delay(failures))
        else:  # denied, or a refused record nobody took over: only an operator can help
            await asyncio.sleep(slow_delay(failures))

    def _rebuild(self, records: list[_Record]) -> list[Any]:
        """The records in new batches. More than one batch if the new timestamps make the
        records outgrow one."""
        builders = [self._producer.create_batch()]
        for key, value, headers in records:
            if builders[-1].append(timestamp=None, key=key, value=value, headers=headers) is None:
                builders.append(self._producer.create_batch())
                builders[-1].append(timestamp=None, key=key, value=value, headers=headers)
        for builder in builders:
            builder.close()
        return builders

    async def close(self) -> None:
        """Stop handing batches over; what was not handed over stays unconfirmed."""
        tasks = list(self._submitters.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
