"""Read the events topic: an async iterator of events, deduplicated, optionally clock-ordered.

The bridge delivers at least once, so a consumer can see an event twice; every record carries a
deterministic ``event_id`` header and `EventStream` drops repeats within a bounded memory.
Partitions are assigned explicitly (no consumer group), so reading never waits for a rebalance
and never commits offsets: it is a reader for tools and services that keep their own position.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from tqdm import tqdm

from celery_kafka_bridge import jsoncompat
from celery_kafka_bridge.codec import event_id
from celery_kafka_bridge.config import Config, split_servers
from celery_kafka_bridge.errors import BridgeError
from celery_kafka_bridge.kafka.partitions import partition_for
from celery_kafka_bridge.reader.events import ClockOrder, Dedup, Event

__all__ = [
    "Event",
    "EventStream",
    "Scan",
    "ScanStats",
    "TopicNotFound",
    "partition_for",
    "read_events",
]

log = logging.getLogger(__name__)

DEFAULT_TOPIC: str = Config.model_fields["topic"].default
_POLL_MS = 200
_BATCH = 500


class TopicNotFound(BridgeError):
    """The events topic does not exist (yet) on the brokers."""


async def wait_for_partitions(
    known: Callable[[], Awaitable[set[int] | None]],
    topic: str,
    servers: Sequence[str],
    timeout: float,
) -> list[int]:
    """The partition ids of ``topic`` by ``known()`` (fresh metadata: None or empty while the
    topic is missing), asked again until ``timeout`` seconds passed; then `TopicNotFound`."""
    deadline = time.monotonic() + timeout
    while not (partitions := await known()):
        if time.monotonic() > deadline:
            raise TopicNotFound(f"topic {topic!r} not found on {','.join(servers)}")
        await asyncio.sleep(0.2)
    return sorted(partitions)


UNTIL_MARGIN_SECONDS = 60.0
"""Records are stamped by the replica that wrote them, so a partition's timestamps can run a
little out of order (clock skew, a failover): a scan stops only this far past ``until``."""


@dataclass(frozen=True)
class Scan:
    """What to read from the events topic.

    ``since``/``until`` bound the Kafka record timestamp (epoch seconds, inclusive). Without
    ``follow`` the stream ends once it reached the end of the topic and no record came for
    ``idle_seconds``; with it, it waits for new events forever (starting at the end unless
    ``since`` is given). A partition's scan also ends at its first record `UNTIL_MARGIN_SECONDS`
    past ``until``, so an old ``until`` does not read the rest of the topic. ``task_id`` reads
    only the partition that task's key maps to.
    """

    bootstrap_servers: str | Sequence[str]
    topic: str = DEFAULT_TOPIC
    since: float | None = None
    until: float | None = None
    follow: bool = False
    task_id: str | None = None
    dedup_capacity: int = 100_000
    order_by_clock: bool = False
    reorder_window: int = 1_000
    idle_seconds: float = 1.0
    metadata_timeout: float = 10.0
    progress: bool = False
    seek_by_time: bool = True
    start_offsets: Mapping[int, int] | None = None
    """Partition: offset to start at (partitions not in it start at the beginning); beats
    ``since`` and ``follow``'s start at the end."""
    reads: Callable[[int, Mapping[str, bytes]], bool] | None = None
    """Given a record's partition and headers, whether to decode it; records it refuses are
    passed over (counted as scanned, in `EventStream.read_through`)."""

    @property
    def servers(self) -> list[str]:
        if isinstance(self.bootstrap_servers, str):
            return split_servers(self.bootstrap_servers)
        return list(self.bootstrap_servers)


@dataclass
class ScanStats:
    """What a stream has done so far."""

    scanned: int = 0
    yielded: int = 0
    duplicates: int = 0
    undecodable: int = 0
    backlog: int | None = None
    """Records between the start positions and the end of the topic when the scan began."""


@dataclass
class _Position:
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    last_record: float = field(default_factory=time.monotonic)
    past_until: set[TopicPartition] = field(default_factory=set)


class EventStream:
    """``async with EventStream(Scan(...)) as events: async for event in events: ...``"""

    def __init__(self, scan: Scan) -> None:
        self.scan = scan
        self.stats = ScanStats()
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._position = _Position()
        self._dedup = Dedup(scan.dedup_capacity) if scan.dedup_capacity > 0 else None
        self._order = ClockOrder(scan.reorder_window) if scan.order_by_clock else None
        self._key = scan.task_id.encode() if scan.task_id else None
        self._bar: tqdm[Any] | None = None
        self.read_through: dict[int, tuple[int, int]] = {}
        """Per partition, the offset after the last record scanned and its Kafka timestamp."""

    async def __aenter__(self) -> EventStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    async def start(self) -> None:
        """Connect, assign the partitions and seek to where the scan begins."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.scan.servers,
            client_id="celery-kafka-bridge-reader",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._consumer = consumer
        try:
            await consumer.start()
            self._partitions = await self._assignable()
            consumer.assign(self._partitions)
            await self._seek()
            if not self.scan.follow:
                await self._measure_backlog()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def events(self) -> AsyncGenerator[Event, None]:
        """The events in scope, duplicates dropped, until the end (or forever with ``follow``)."""
        async for batch in self.batches():
            for event in batch:
                yield event

    async def batches(self) -> AsyncGenerator[list[Event], None]:
        """`events`, a fetch at a time: one step of an async generator per fetch rather than per
        event, for readers that apply every event. A fetch whose records were all passed over
        (`Scan.reads`, duplicates) gives an empty list, so `read_through` can be taken."""
        consumer = self._started()
        while True:
            fetched = await consumer.getmany(timeout_ms=_POLL_MS, max_records=_BATCH)
            batch: list[Event] = []
            if not fetched:
                batch = self._order.flush() if self._order else []
            else:
                self._position.last_record = time.monotonic()
                for tp, records in fetched.items():
                    last = None
                    for record in records:
                        if tp in self._position.past_until:
                            break
                        batch += self._accept(tp, record)
                        last = record
                    if last is not None:
                        self.read_through[tp.partition] = (last.offset + 1, last.timestamp)
            if batch or fetched:
                self.stats.yielded += len(batch)
                yield batch
            if not fetched and not self.scan.follow and await self._finished():
                return

    def _accept(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> list[Event]:
        """The events this record lets out: none, itself, or held ones released by the order."""
        self.stats.scanned += 1
        if self._bar is not None:
            self._bar.update()
        if not self._in_scope(tp, record):
            return []
        headers = dict(record.headers or ())
        if self.scan.reads is not None and not self.scan.reads(tp.partition, headers):
            return []
        event = self._decode(tp, record, headers)
        if event is None:
            return []
        if self._dedup is not None and not self._dedup.first(event.event_id):
            self.stats.duplicates += 1
            return []
        return self._order.push(event) if self._order else [event]

    def _in_scope(self, tp: TopicPartition, record: ConsumerRecord[Any, Any]) -> bool:
        """The record's key and time are the scan's (one far past ``until`` ends its partition)."""
        scan = self.scan
        if self._key is not None and record.key != self._key:
            return False
        if scan.since is not None and record.timestamp < scan.since * 1000:
            return False
        if scan.until is not None and record.timestamp > scan.until * 1000:
            if record.timestamp > (scan.until + UNTIL_MARGIN_SECONDS) * 1000 and not scan.follow:
                self._position.past_until.add(tp)
                self._started().pause(tp)
            return False
        return True

    def _decode(
        self, tp: TopicPartition, record: ConsumerRecord[Any, Any], headers: dict[str, bytes]
    ) -> Event | None:
        scan = self.scan
        try:
            data, msgpack_only = jsoncompat.loads(
                record.value, strict=headers.get("json_strict") != b"false"
            )
        except (ValueError, RecursionError):
            data, msgpack_only = None, False
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.stats.undecodable += 1
            log.warning("skipping %s@%d: not an event", tp, record.offset)
            return None
        if scan.task_id is not None and data.get("uuid") != scan.task_id:
            return None
        eid = headers.get("event_id")
        received = headers.get("received_at")
        return Event(
            data=data,
            value=record.value,
            event_id=eid.decode() if eid else event_id(jsoncompat.loads_python(record.value)),
            partition=tp.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            received_at=int(received) / 1000 if received and received.isdigit() else None,
            serializer="msgpack" if msgpack_only else "json",
        )

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("EventStream.start() first (or use `async with`)")
        return self._consumer

    async def _assignable(self) -> list[TopicPartition]:
        consumer, topic = self._started(), self.scan.topic

        async def known() -> set[int] | None:
            found: set[int] | None = consumer.partitions_for_topic(topic)
            if not found:
                await consumer.topics()  # refreshes the metadata
                found = consumer.partitions_for_topic(topic)
            return found

        partitions = await wait_for_partitions(
            known, topic, self.scan.servers, self.scan.metadata_timeout
        )
        if self._key is not None:
            return [TopicPartition(topic, partition_for(self._key, sorted(partitions)))]
        return [TopicPartition(topic, p) for p in sorted(partitions)]

    async def _seek(self) -> None:
        consumer, scan = self._started(), self.scan
        if scan.start_offsets is not None:
            await consumer.seek_to_beginning(*self._partitions)
            for tp in self._partitions:
                if tp.partition in scan.start_offsets:
                    consumer.seek(tp, scan.start_offsets[tp.partition])
            return
        if scan.follow and scan.since is None:
            await consumer.seek_to_end(*self._partitions)
            return
        await consumer.seek_to_beginning(*self._partitions)
        if scan.since is not None and scan.seek_by_time:
            await self._seek_by_time(int(scan.since * 1000))

    async def _seek_by_time(self, since_ms: int) -> None:
        """Skip to the first record at ``since`` where the broker answers that sensibly.

        An answer is used only if the offset lies within the partition and the timestamp it
        reports is not before the one asked for; otherwise the scan starts at the beginning and
        the client-side timestamp filter alone does the work.
        """
        consumer = self._started()
        try:
            answers = await consumer.offsets_for_times({tp: since_ms for tp in self._partitions})
            first = await consumer.beginning_offsets(self._partitions)
            ends = await consumer.end_offsets(self._partitions)
        except KafkaError as exc:
            log.info("offsets_for_times unavailable (%s); scanning from the beginning", exc)
            return
        for tp, answer in answers.items():
            if answer is None:
                consumer.seek(tp, ends[tp])
            elif answer.timestamp >= since_ms and first[tp] <= answer.offset <= ends[tp]:
                consumer.seek(tp, answer.offset)

    async def _measure_backlog(self) -> None:
        consumer = self._started()
        ends = await consumer.end_offsets(self._partitions)
        starts = {tp: await consumer.position(tp) for tp in self._partitions}
        self._position.ends = ends
        self.stats.backlog = sum(max(0, ends[tp] - starts[tp]) for tp in self._partitions)
        if self.scan.progress:
            self._bar = tqdm(
                total=self.stats.backlog, unit="rec", file=sys.stderr, disable=None, leave=False
            )

    async def _finished(self) -> bool:
        """Idle for a while and past every end offset seen at the start.

        Both are needed: some brokers report end offsets that trail what they serve, and a
        fetch can come back empty in the middle of a real one.
        """
        position = self._position
        if len(position.past_until) == len(self._partitions):
            return True
        if time.monotonic() - position.last_record < self.scan.idle_seconds:
            return False
        consumer = self._started()
        for tp, end in position.ends.items():
            if tp not in position.past_until and await consumer.position(tp) < end:
                return False
        return True


def read_events(scan: Scan) -> Iterator[Event]:
    """The events of ``scan`` for synchronous code (scripts, notebooks), on a private loop."""
    loop = asyncio.new_event_loop()
    stream = EventStream(scan)
    events = stream.events()
    step: asyncio.Task[Event] | None = None
    try:
        loop.run_until_complete(stream.start())
        while True:
            step = loop.create_task(anext(events))
            try:
                event = loop.run_until_complete(step)
            except StopAsyncIteration:
                return
            yield event
    finally:
        # An interrupt (Ctrl-C) can leave a step running: cancel it before closing the stream.
        if step is not None and not step.done():
            step.cancel()
            loop.run_until_complete(asyncio.wait([step]))
        loop.run_until_complete(events.aclose())
        loop.run_until_complete(stream.stop())
        loop.close()
