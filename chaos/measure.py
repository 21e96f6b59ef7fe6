"""What the scenarios measure: Kafka tallies, process resources, readiness, and the result row."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient

from chaos.load import LoadLog, background
from harness.support import KafkaRecord, scan_topic


def list_topics(bootstrap: str) -> list[str]:
    """The topics a Kafka broker says it has."""

    async def ask() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            return sorted(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(ask())


class Tally:
    """Reads a topic in a background thread: first arrival of each task id, distinct event ids.

    Keeps only ids, so a soak of a million events fits. Call `expect` once the load is done; the
    reader stops ``idle`` seconds after every expected id arrived, or at the give-up deadline.
    """

    def __init__(self, bootstrap: str, topic: str, timeout: float = 3_600.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records = 0
        self.first_seen: dict[bytes, float] = {}
        self.event_ids: set[bytes] = set()
        self.reasons: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._missing: set[bytes] | None = None
        self._dead_wanted: int | None = None
        self._give_up_at = float("inf")
        self._quiet_since = time.monotonic()
        self._quiet_limit = float("inf")
        self.error = ""
        self._thread = background(self._scan, timeout)

    def _scan(self, timeout: float) -> None:
        try:
            scan_topic(self.bootstrap, self.topic, on_poll=self._on_poll, timeout=timeout)
        except (Exception, asyncio.CancelledError) as exc:
            # The topic never appeared, or its broker was killed: what was read still counts.
            self.error = f"{type(exc).__name__}: {exc}"

    def _on_poll(self, records: list[KafkaRecord]) -> bool:
        now = time.monotonic()
        with self._lock:
            self.records += len(records)
            for record in records:
                self._count(record, now)
            if records:
                self._quiet_since = now
            quiet = now - self._quiet_since > self._quiet_limit
            return self._complete() or quiet or now > self._give_up_at

    def _complete(self) -> bool:
        if self._dead_wanted is not None:
            return sum(self.reasons.values()) >= self._dead_wanted
        return self._missing is not None and not self._missing

    def _count(self, record: KafkaRecord, now: float) -> None:
        headers = record.headers
        if "reason" in headers:
            self.reasons[headers["reason"].decode()] += 1
            return
        self.event_ids.add(headers["event_id"])
        task_id = headers.get("task_id", b"")
        if task_id not in self.first_seen:
            self.first_seen[task_id] = now
            if self._missing is not None:
                self._missing.discard(task_id)

    def expect(self, task_ids: Iterable[bytes], within: float, quiet: float = 30.0) -> None:
        """The ids that must arrive; stop reading once they did, or ``within`` seconds passed,
        or nothing arrived for ``quiet`` seconds (longer than the bridge's longest backoff)."""
        with self._lock:
            self._missing = set(task_ids) - self.first_seen.keys()
            self._give_up_at = time.monotonic() + within
            self._quiet_since = time.monotonic()
            self._quiet_limit = quiet

    def expect_dead_letters(self, count: int, within: float) -> None:
        """Stop reading once ``count`` dead letters arrived or ``within`` seconds passed."""
        with self._lock:
            self._dead_wanted = count
            self._give_up_at = time.monotonic() + within

    def stop(self) -> None:
        """Stop reading soon, whatever arrived."""
        with self._lock:
            self._give_up_at = 0.0

    def join(self, timeout: float | None = None) -> Tally:
        self._thread.join(timeout)
        return self

    def recovery(self, load: LoadLog, moment: float) -> float | None:
        """Seconds from ``moment`` until an event accepted after it reached Kafka."""
        arrivals = [self.first_seen[t] for t in load.first_after(moment) if t in self.first_seen]
        return round(min(arrivals) - moment, 2) if arrivals else None

    @property
    def duplicates(self) -> int:
        return self.records - sum(self.reasons.values()) - len(self.event_ids)


@dataclass
class Sample:
    at: float
    rss: int
    fds: int
    threads: int
    tasks: int
    ready: bool | None


class Sampler:
    """Samples RSS, open fds, threads and /readyz of the bridge processes in the background."""

    def __init__(
        self, pids: Callable[[], list[int]], http_ports: Callable[[], list[int]], interval: float
    ) -> None:
        self.samples: list[Sample] = []
        self._pids = pids
        self._ports = http_ports
        self._interval = interval
        self._stop = threading.Event()
        self._processes: dict[int, psutil.Process] = {}
        self._thread = background(self._run)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(psutil.Error):
                self.samples.append(self._sample())

    def _sample(self) -> Sample:
        rss = fds = threads = 0
        for pid in self._pids():
            process = self._processes.setdefault(pid, psutil.Process(pid))
            with process.oneshot():
                rss = max(rss, process.memory_info().rss)
                fds = max(fds, process.num_fds())
                threads = max(threads, process.num_threads())
        ports = self._ports()
        ready = [readiness(port) for port in ports]
        answered = [r for r in ready if r is not None]
        tasks = max((loop_tasks(port) for port in ports), default=0)
        return Sample(
            time.monotonic(), rss, fds, threads, tasks, any(answered) if answered else None
        )

    def stop(self) -> Sampler:
        self._stop.set()
        self._thread.join()
        return self

    @property
    def peak_rss_mib(self) -> float | None:
        return round(max(s.rss for s in self.samples) / 2**20, 1) if self.samples else None

    def readiness_story(self) -> str:
        """The readiness transitions seen, e.g. ``true>false>true``; ``n/a`` if never answered."""
        states = [s.ready for s in self.samples if s.ready is not None]
        if not states:
            return "n/a"
        story = [states[0]]
        for state in states[1:]:
            if state != story[-1]:
                story.append(state)
        return ">".join(str(s).lower() for s in story)


def loop_tasks(port: int) -> int:
    """The bridge's event-loop task count from /metrics; 0 if nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=0.5) as response:
            text = response.read().decode()
    except (OSError, ValueError):
        return 0
    for line in text.splitlines():
        if line.startswith("celery_kafka_bridge_event_loop_tasks "):
            return int(float(line.split()[1]))
    return 0


def readiness(port: int) -> bool | None:
    """True/False from /readyz; None if nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=0.5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        return False if exc.code == 503 else None
    except (OSError, ValueError):
        return None


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""


@dataclass
class Result:
    """One row of the report; a scenario fails if it lost an event (unless loss is its point)."""

    scenario: str
    title: str
    published: int = 0
    distinct: int = 0
    duplicates: int = 0
    lost: int = 0
    dead_lettered: int = 0
    peak_rss_mib: float | None = None
    recovery_s: float | None = None
    duration_s: float = 0.0
    loss_expected: bool = False
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def check(self, what: str, ok: bool, detail: object = "") -> None:
        self.checks.append(Check(what, bool(ok), str(detail)))

    @property
    def passed(self) -> bool:
        return (self.lost == 0 or self.loss_expected) and all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        failed = [f"{c.what} ({c.detail})" if c.detail else c.what for c in self.checks if not c.ok]
        if self.lost and not self.loss_expected:
            failed.insert(0, f"lost {self.lost} of {self.published} events")
        return failed

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def count(self, load: LoadLog, tally: Tally, must_arrive: set[bytes] | None = None) -> None:
        """Fill the delivery figures from the load log and what Kafka holds."""
        expected = load.task_ids() if must_arrive is None else must_arrive
        self.published = len(load.accepted)
        self.distinct = len(tally.event_ids)
        self.duplicates = tally.duplicates
        self.lost = len(expected - tally.first_seen.keys())
