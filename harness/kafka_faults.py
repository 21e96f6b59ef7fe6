"""A Kafka-protocol proxy that injects produce errors the test broker (Tansu) never returns.

Clients connect to the proxy (the broker advertises the proxy's port, so every connection goes
through it); it forwards every request and response byte for byte, but Produce requests are
decoded: the partitions that match a `Fault` are answered with the fault's error code (or the
connection is dropped, or nothing is ever answered), and the rest of the request still goes to
the broker, whose answer is merged with the injected errors. Responses leave in request order,
as Kafka's do.

With ``producer_ids`` on, the proxy answers InitProducerId itself (a new id each time) and
clears the producer id, epoch and sequence of every batch it forwards, so an idempotent producer
(the bridge's production setting) runs against Tansu, which hands out no producer ids. The broker
then checks no sequence numbers: the proxy's faults stand in for its refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.protocol import produce
from aiokafka.protocol.transaction import InitProducerIdResponse_v0
from aiokafka.record.util import calc_crc32c

from celery_kafka_bridge.embedded import EmbeddedKafka, free_port

_PRODUCE = 0
_INIT_PRODUCER_ID = 22
HOLD = -1000
"""A fault code: the request is never answered (nor is anything after it on the connection),
as by a broker that stopped answering."""
_HEADER = struct.Struct(">hhih")  # api_key, api_version, correlation_id, client_id length
_SIZE = struct.Struct(">i")


class DropConnection(Exception):
    """A fault without a code: the client's connection is closed instead of answered."""


@dataclass
class Fault:
    """Answer Produce requests for ``topic`` with ``code`` (None: drop the connection).

    Only ``partitions`` (None: all), only batches containing ``marker`` (None: all), only
    batches of the producer ``producer_id`` (None: all), and only ``times`` times (None: until
    removed)."""

    topic: str
    code: int | None
    partitions: frozenset[int] | None = None
    marker: bytes | None = None
    times: int | None = None
    producer_id: int | None = None

    def matches(self, topic: str, partition: int, records: bytes) -> bool:
        return (
            topic == self.topic
            and (self.partitions is None or partition in self.partitions)
            and (self.marker is None or self.marker in records)
            and (self.producer_id is None or _producer_of(records) == self.producer_id)
            and (self.times is None or self.times > 0)
        )


@dataclass
class KafkaFaults:
    """The proxy, served from a thread of its own; add and remove faults from the test."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    producer_ids: bool = False
    injected: list[tuple[str, int, int | None]] = field(default_factory=list)
    """Every injected answer: topic, partition, code (None: a dropped connection)."""

    def __post_init__(self) -> None:
        self._faults: list[Fault] = []
        self._last_producer_id = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def remove(self, fault: Fault) -> None:
        with self._lock:
            self._faults.remove(fault)

    @property
    def last_producer_id(self) -> int:
        """The producer id handed out last (with ``producer_ids``)."""
        with self._lock:
            return self._last_producer_id

    def count(self, code: int | None) -> int:
        with self._lock:
            return sum(1 for *_, injected in self.injected if injected == code)

    def start(self) -> KafkaFaults:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        """One client connection: requests forwarded in order, answers written in order."""
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        answers: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue()
        upstream: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue()
        tasks = [
            asyncio.create_task(_relay_upstream(up_r, upstream, client_w)),
            asyncio.create_task(_answer(answers, client_w)),
        ]
        try:
            while True:
                frame = await _read_frame(client_r)
                answer = self._handle(frame, up_w, upstream)
                if answer is not None:
                    answers.put_nowait(answer)
        except (asyncio.IncompleteReadError, ConnectionError, DropConnection):
            pass
        finally:
            for task in tasks:
                task.cancel()
            for stream in (client_w, up_w):
                stream.close()

    def _handle(
        self,
        frame: bytes,
        up_w: asyncio.StreamWriter,
        upstream: asyncio.Queue[asyncio.Future[bytes]],
    ) -> asyncio.Future[bytes] | None:
        """Forward or answer one request; the future of its answer (None: no answer due)."""
        api_key, _, correlation, client_len = _HEADER.unpack_from(frame)
        loop = asyncio.get_running_loop()
        if api_key == _INIT_PRODUCER_ID and self.producer_ids:
            return self._producer_id(correlation, loop)
        if api_key == _PRODUCE:
            return self._produce(frame, _HEADER.size + max(0, client_len), up_w, upstream)
        return _forward(frame, up_w, upstream, loop)

    def _produce(
        self,
        frame: bytes,
        body_at: int,
        up_w: asyncio.StreamWriter,
        upstream: asyncio.Queue[asyncio.Future[bytes]],
    ) -> asyncio.Future[bytes] | None:
        """A Produce request: its partitions without a fault forwarded, the others answered."""
        _, version, correlation, _ = _HEADER.unpack_from(frame)
        loop = asyncio.get_running_loop()
        request = getattr(produce, f"ProduceRequest_v{version}").decode(frame[body_at:])
        injected = self._inject(request.topics)
        answer: asyncio.Future[bytes] = loop.create_future()
        if HOLD in injected.values():
            return answer  # never resolved
        request.topics = [
            (topic, [(p, _anonymous(r) if self.producer_ids else r) for p, r in partitions])
            for topic, partitions in _without(request.topics, injected)
        ]
        forwarded = frame[:body_at] + request.encode()
        if request.required_acks == 0:  # no answer due, from the broker or the proxy
            if request.topics:
                up_w.write(_SIZE.pack(len(forwarded)) + forwarded)
            return None
        if not request.topics:
            answer.set_result(_response(version, correlation, [], injected))
            return answer
        reply = _forward(forwarded, up_w, upstream, loop)
        reply.add_done_callback(
            lambda done: answer.set_result(
                _response(version, correlation, _partitions(version, done.result()), injected)
            )
        )
        return answer

    def _producer_id(
        self, correlation: int, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[bytes]:
        with self._lock:
            self._last_producer_id += 1
            body = InitProducerIdResponse_v0(0, 0, self._last_producer_id, 0).encode()
        answer: asyncio.Future[bytes] = loop.create_future()
        answer.set_result(struct.pack(">i", correlation) + body)
        return answer

    def _inject(self, topics: list[Any]) -> dict[tuple[str, int], int]:
        """The partitions of a Produce request that get an error: (topic, partition) -> code."""
        injected: dict[tuple[str, int], int] = {}
        with self._lock:
            for topic, partitions in topics:
                for partition, records in partitions:
                    fault = next(
                        (f for f in self._faults if f.matches(topic, partition, records)), None
                    )
                    if fault is None:
                        continue
                    if fault.times is not None:
                        fault.times -= 1
                    self.injected.append((topic, partition, fault.code))
                    if fault.code is None:
                        raise DropConnection
                    injected[(topic, partition)] = fault.code
        return injected


def _forward(
    frame: bytes,
    up_w: asyncio.StreamWriter,
    upstream: asyncio.Queue[asyncio.Future[bytes]],
    loop: asyncio.AbstractEventLoop,
) -> asyncio.Future[bytes]:
    answer: asyncio.Future[bytes] = loop.create_future()
    upstream.put_nowait(answer)
    up_w.write(_SIZE.pack(len(frame)) + frame)
    return answer


async def _relay_upstream(
    up_r: asyncio.StreamReader,
    upstream: asyncio.Queue[asyncio.Future[bytes]],
    client_w: asyncio.StreamWriter,
) -> None:
    """The broker answers in request order: each answer resolves the oldest waiting future.
    When the broker closes the connection, so does the proxy."""
    try:
        while True:
            frame = await _read_frame(up_r)
            (await upstream.get()).set_result(frame)
    except (asyncio.IncompleteReadError, ConnectionError):
        client_w.close()


async def _answer(
    answers: asyncio.Queue[asyncio.Future[bytes]], client_w: asyncio.StreamWriter
) -> None:
    while True:
        frame = await (await answers.get())
        client_w.write(_SIZE.pack(len(frame)) + frame)
        await client_w.drain()


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = _SIZE.unpack(await reader.readexactly(_SIZE.size))
    return await reader.readexactly(size)


_PRODUCER_AT = 43  # producer id (int64), epoch (int16), base sequence (int32) of a v2 batch
_CRC_AT, _CRC_FROM = 17, 21


def _producer_of(records: bytes) -> int | None:
    """The producer id of the first record batch, if there is one."""
    if len(records) < _PRODUCER_AT + 8:
        return None
    producer_id: int = struct.unpack_from(">q", records, _PRODUCER_AT)[0]
    return producer_id


def _anonymous(records: bytes) -> bytes:
    """Record batches without producer id, epoch and sequence (their CRC recomputed)."""
    data, at = bytearray(records), 0
    while at + _PRODUCER_AT + 14 <= len(data):
        (length,) = struct.unpack_from(">i", data, at + 8)
        end = at + 12 + length
        struct.pack_into(">qhi", data, at + _PRODUCER_AT, -1, -1, -1)
        struct.pack_into(">I", data, at + _CRC_AT, calc_crc32c(bytes(data[at + _CRC_FROM : end])))
        at = end
    return bytes(data)


def _without(topics: list[Any], injected: dict[tuple[str, int], int]) -> list[Any]:
    kept = []
    for topic, partitions in topics:
        rest = [(p, records) for p, records in partitions if (topic, p) not in injected]
        if rest:
            kept.append((topic, rest))
    return kept


def _partitions(version: int, frame: bytes) -> list[Any]:
    """The topics of a broker's Produce response frame (after its correlation id)."""
    response = getattr(produce, f"ProduceResponse_v{version}").decode(frame[4:])
    return list(response.topics)


def _response(
    version: int, correlation: int, topics: list[Any], injected: dict[tuple[str, int], int]
) -> bytes:
    """A Produce response frame: the broker's partitions plus the injected errors."""
    by_topic: dict[str, list[Any]] = {topic: list(partitions) for topic, partitions in topics}
    for (topic, partition), code in injected.items():
        # partition, error_code, offset, timestamp, log_start_offset, record_errors, message
        fields = [partition, code, -1, -1, -1, [], None]
        by_topic.setdefault(topic, []).append(tuple(fields[: _partition_fields(version)]))
    cls = getattr(produce, f"ProduceResponse_v{version}")
    values: dict[str, Any] = {"topics": list(by_topic.items()), "throttle_time_ms": 0}
    body: bytes = cls(**{name: values[name] for name in cls.SCHEMA.names}).encode()
    return struct.pack(">i", correlation) + body


def _partition_fields(version: int) -> int:
    return 3 if version < 2 else 4 if version < 5 else 5 if version < 8 else 7


@contextlib.contextmanager
def faulty_kafka(log_path: Path) -> Iterator[tuple[EmbeddedKafka, KafkaFaults]]:
    """A Tansu broker behind a `KafkaFaults` proxy; connect to the proxy's address."""
    proxy = KafkaFaults(free_port())
    with EmbeddedKafka(proxy.upstream_port, log_path, advertised_port=proxy.port) as broker:
        proxy.start()
        try:
            yield broker, proxy
        finally:
            proxy.stop()
