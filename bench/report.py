"""The benchmark's results as a console table, JSON, Markdown and a latency chart (PNG)."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from bench.confirms import Publishing
from bench.drains import Drain
from bench.kafka import Arrivals
from bench.latency import Latency
from bench.ordering import Ordering

TARGET_RATIO = 1.0
TARGET_SHAPED_RATIO = 0.9
TARGET_P99_MS = 25.0
TARGET_P99_RATE = 2000.0
TARGET_RSS_MB = 120.0
_RSS_TARGET_DRAINS = frozenset("cde")
"""The drains the RSS target covers: the bridge on RabbitMQ, whose prefetch bounds what it
holds. (m) and (n) keep every task of the run (of their slice) in their tables' state; (s) and
(t) read a pub/sub burst as fast as Redis sends it."""

NOTES = (
    "Throughput: every consumer drains its own queue, filled beforehand with the same messages "
    "(captured once from Celery's event dispatcher, replayed byte for byte with their routing "
    "keys and properties). The clock runs from the start of consumption until every event was "
    "counted (a, b) or, for the bridge, until a Kafka reader counted every event in the topic "
    "(the bridge queue then had no message left; acks are checked after the replicas stop). "
    "That reader runs during the drain and takes some CPU from it.",
    "(a) uses Celery's receiver queue with event_queue_ttl=None, event_queue_expires=3600 and "
    "event_queue_exclusive=False: with Celery's defaults, pre-filled messages would expire after "
    "5 s and the queue could not be filled from another connection.",
    "(b) consumes a queue declared exactly like the bridge's (same type and arguments), with "
    "the bridge's prefetch, and acks with one multiple-ack per quarter of the prefetch (as the "
    "bridge acks contiguous runs), so it is the AMQP ceiling for manual acks here.",
    "(e) is (c) with the typical rules file bench/rules.yaml (drop heartbeats, hash kwargs with "
    "HMAC-SHA256, truncate tracebacks), draining the same messages: its events/s counts every "
    "event drained, the dropped heartbeats included, so e/c is the cost of shaping. Bridge CPU "
    "is the user and system time of the bridge processes during the drain, per event; e/c "
    "(CPU) compares events per CPU second, which other work on the machine moves less than "
    "wall-clock time, so the target is set on it. It still varies from drain to drain: (c) and "
    "(e) run in alternating pairs (--shaping-pairs, 3 by default; the table shows the first) "
    "and the target takes the median of the pairs' ratios.",
    "Latency: 'to send' is the record's CreateTime (set when the bridge appends the record to "
    "its batch, before Kafka acks it) minus the event's timestamp: a lower bound of "
    "event-to-ack. 'to consumer' is when a Kafka consumer (explicit assignment, 10 ms fetch "
    "wait) received it minus the event's timestamp: an upper bound. Both include the time the "
    "dispatcher buffered task events into task.multi lists, as a worker does. 'To Kafka ack' "
    "comes from the bridge's own event_age_seconds histogram (1 ms buckets up to 5 ms, then "
    "7.5, 10, 15, 20, 25, 50 ms...), interpolated within a bucket as Prometheus's "
    "histogram_quantile does; its max is the bound of the highest bucket used. 'Acked within "
    "25 ms' is exact: the share of events at or below that histogram's 25 ms bucket bound.",
    "Ordering: per topology, three replicas and a prefork worker run short tasks (plain, "
    "retrying, custom events) sent at 250/s; a task record out of order is one written before "
    "an earlier event of the same worker process (same hostname and pid, lower clock).",
    "Redis: pub/sub keeps nothing, so each consumer subscribes and then the same messages "
    "(wrapped as kombu's Redis transport publishes them, capped at 20 MB to stay within Redis's "
    "pub/sub output buffer) are published by one pipelined client; the clock runs from the first "
    "publish until every event was counted (r: a bare redis-py subscriber) or read from Kafka "
    "(s: one replica, t: two replicas that claim each message). Ordering 'redis, 2 replicas': "
    "two replicas and a real worker on Redis, inversions counted as for the AMQP topologies.",
    "Publish, then close: each trial sends a burst on a fresh connection without waiting, "
    "closes it at once, and counts what a quorum queue bound like the bridge's holds once its "
    "depth settles. 'bare py-amqp' publishes pre-encoded events as fast as it can and exposes "
    "the loss a connection closed right after a burst can cause; 'Celery dispatcher' is "
    "app.events.Dispatcher, with broker_transport_options={'confirm_publish': True} or not, "
    "alternating; its wall time per event is what the worker's thread waits for each event.",
    "Peak RSS: resident memory of each bridge process (and children), sampled every 50 ms, "
    "in MB (10^6 bytes).",
    "Measured on a shared 2-core machine with RabbitMQ, Tansu, the load generator and other "
    "work on it: figures are noisy.",
)


@dataclass
class Report:
    meta: dict[str, Any]
    drains: list[Drain]
    latencies: list[Latency]
    arrivals: list[Arrivals] = field(default_factory=list)
    orderings: list[Ordering] = field(default_factory=list)
    publishing: list[Publishing] = field(default_factory=list)

    def ratios(self) -> dict[str, float | None]:
        rate = {d.name: d.events_per_second for d in self.drains}

        def ratio(top: str, bottom: str) -> float | None:
            if top in rate and rate.get(bottom):
                return round(rate[top] / rate[bottom], 3)
            return None

        pairs = ("c/a", "c/b", "d/c", "e/c", "m/c", "n/c", "n/m", "s/r", "t/s")
        ratios = {
            pair: value
            for pair in pairs
            if (value := ratio(*pair.split("/"))) is not None or pair[0] in "cdemn"
        }
        shaping = [ratio for _, _, ratio in self._shaping_pairs()]
        return ratios | {"e/c (CPU)": round(statistics.median(shaping), 3) if shaping else None}

    def _shaping_pairs(self) -> list[tuple[float, float, float]]:
        """Bridge CPU per event of (c) and (e) in each alternating pair, the first being the
        drains' own, and e/c per CPU second: the events/s ratio of a bridge that had its core
        to itself."""
        pairs = self.meta.get("shaping_cpu_us_per_event", [])
        return [(c, e, round(c / e, 3)) for c, e in pairs if c and e]

    def targets(self) -> dict[str, dict[str, Any]]:
        ratios = self.ratios()
        ratio, shaped, keeps_up = ratios["c/a"], ratios["e/c (CPU)"], ratios["n/c"]
        at_rate = [lat for lat in self.latencies if lat.rate == TARGET_P99_RATE]
        p99 = at_rate[0].to_consumer.p99 if at_rate else None
        p99_ack = at_rate[0].to_ack.p99 if at_rate else None
        within = at_rate[0].acked_within_25ms_pct if at_rate else None
        drained = [d.peak_rss_mb for d in self.drains if d.name in _RSS_TARGET_DRAINS]
        rss = [lat.peak_rss_mb for lat in self.latencies]
        rss += [mb for mb in drained if mb is not None]
        peak = round(max(rss), 1) if rss else None
        confirmed = [p.lost for p in self.publishing if p.confirm_publish]
        lost = sum(confirmed) if confirmed else None
        return {
            "c/a >= 1.0": _target(ratio, ratio is not None and ratio >= TARGET_RATIO),
            "e/c >= 0.9 (typical rules against none, per CPU second)": _target(
                shaped, shaped is not None and shaped >= TARGET_SHAPED_RATIO
            ),
            "n/c >= 1.0 (materialize, two slices, keeps up with the bridge)": _target(
                keeps_up, keeps_up is not None and keeps_up >= TARGET_RATIO
            ),
            "p99 <= 25 ms at 2,000 events/s (to Kafka ack: % of events within 25 ms)": _target(
                within, within is not None and within >= 99.0
            ),
            "p99 <= 25 ms at 2,000 events/s (to Kafka ack, from the histogram)": _target(
                p99_ack, p99_ack is not None and p99_ack <= TARGET_P99_MS
            ),
            "p99 <= 25 ms at 2,000 events/s (to consumer)": _target(
                p99, p99 is not None and p99 <= TARGET_P99_MS
            ),
            "peak RSS <= 120 MB (bridge on RabbitMQ: c, d, e, latency runs)": _target(
                peak, peak is not None and peak <= TARGET_RSS_MB
            ),
            "0 lost with confirm_publish (publish, then close at once)": _target(lost, lost == 0),
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "throughput": [
                {**asdict(d), "events_per_second": round(d.events_per_second, 1)}
                for d in self.drains
            ],
            "ratios": self.ratios(),
            "latency": [asdict(lat) for lat in self.latencies],
            "ordering": [{**asdict(o), "rate_pct": o.rate_pct} for o in self.orderings],
            "publishing": [asdict(p) for p in self.publishing],
            "targets": self.targets(),
            "notes": list(NOTES),
        }

    def markdown(self) -> str:
        meta = self.meta
        lines = [
            f"Run {meta['started']} on {meta['machine']}: {meta['events']:,} events in "
            f"{meta['messages']:,} messages, bridge queue type {meta['queue_type']}.",
            "",
            "| consumer | events/s | seconds | peak RSS (MB) | bridge CPU (us/event) |",
            "|---|---:|---:|---:|---:|",
        ]
        for d in self.drains:
            rss = f"{d.peak_rss_mb:.1f}" if d.peak_rss_mb is not None else "-"
            cpu = f"{d.cpu_us_per_event:.1f}" if d.cpu_us_per_event is not None else "-"
            lines.append(
                f"| ({d.name}) {d.label} | {d.events_per_second:,.0f} | {d.seconds:.2f} | {rss} "
                f"| {cpu} |"
            )
        ratios = ", ".join(f"{k} = {v}" for k, v in self.ratios().items() if v is not None)
        lines += ["", f"Ratios: {ratios}.", ""]
        pairs = self._shaping_pairs()
        if len(pairs) > 1:
            each = ", ".join(f"{c:.1f} / {e:.1f} ({ratio})" for c, e, ratio in pairs)
            lines += [
                "Shaping, alternating (c, e) pairs, bridge CPU us per event (c) / (e) and e/c "
                f"per CPU second: {each}; the target takes the median e/c.",
                "",
            ]
        if "decoding_us_per_event" in meta:
            cost = meta["decoding_us_per_event"]
            lines += [
                f"Decoding in process (best of 3): {cost['without_rules_us']} us per event "
                f"without rules, {cost['with_rules_us']} us with bench/rules.yaml.",
                "",
            ]
        if "ack_us_per_message" in meta:
            lines += [
                f"Ack bookkeeping in process (best of 3): {meta['ack_us_per_message']} us per "
                "message (the ack tracker and the session's tags over its channels).",
                "",
            ]
        if "claim_us_per_message" in meta:
            lines += [
                f"Redis claims: {meta['claim_us_per_message']} us per message and replica "
                "(claim and confirmation, one round trip per 512 messages each).",
                "",
            ]
        if self.latencies:
            lines += [
                "| rate (events/s) | achieved | to send p50/p95/p99/max (ms) "
                "| to Kafka ack p50/p95/p99/max (ms, histogram) "
                "| to consumer p50/p95/p99/max (ms) | acked within 25 ms | peak RSS (MB) |",
                "|---:|---:|---|---|---|---:|---:|",
            ]
            lines += [
                f"| {lat.rate:,.0f} | {lat.achieved_rate:,.0f} | {_pct(lat.to_send)} "
                f"| {_pct(lat.to_ack)} | {_pct(lat.to_consumer)} "
                f"| {lat.acked_within_25ms_pct:.2f} % "
                f"| {lat.peak_rss_mb:.1f} |"
                for lat in self.latencies
            ]
            lines.append("")
        if self.orderings:
            lines += [
                "| topology (3 replicas, a real worker) | tasks | task records "
                "| out of order | rate | seconds |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {o.topology} | {o.tasks:,} | {o.records:,} | {o.inversions:,} "
                f"| {o.rate_pct:.2f} % | {o.seconds:.1f} |"
                for o in self.orderings
            ]
            lines.append("")
        if self.publishing:
            lines += [
                "| publish, then close at once (quorum queue) | confirm_publish | trials "
                "| events per trial | lost | trials with loss | publisher wall (us/event) "
                "| publisher CPU (us/event) |",
                "|---|---|---:|---:|---:|---:|---:|---:|",
            ]
            lines += [
                f"| {p.publisher} | {'on' if p.confirm_publish else 'off'} | {p.trials} "
                f"| {p.events:,} | {p.lost:,} | {p.trials_with_loss} | {p.wall_us_per_event} "
                f"| {p.cpu_us_per_event} |"
                for p in self.publishing
            ]
            lines.append("")
        lines += ["| target | measured | met |", "|---|---:|---|"]
        lines += [
            f"| {name} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
            for name, t in self.targets().items()
        ]
        lines += ["", *[f"- {note}" for note in NOTES], ""]
        return "\n".join(lines)

    def write(self, out: Path) -> list[Path]:
        """``results.json``, ``results.md`` and ``latency.png`` (if there were latency runs)."""
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / "results.json", out / "results.md"]
        paths[0].write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        paths[1].write_text("# Benchmark results\n\n" + self.markdown())
        if self.latencies:
            paths.append(out / "latency.png")
            self._chart(paths[-1])
        return paths

    def _chart(self, path: Path) -> None:
        fig = Figure(figsize=(8, 4.5))
        ax = fig.subplots()
        for lat, arrivals in zip(self.latencies, self.arrivals, strict=True):
            samples = sorted(arrivals.to_consumer_ms)
            if samples:
                fractions = [(i + 1) / len(samples) for i in range(len(samples))]
                ax.plot(samples, fractions, label=f"{lat.rate:,.0f} events/s")
        ax.axvline(TARGET_P99_MS, color="grey", linestyle="--", label="25 ms")
        ax.set_xscale("log")
        ax.set_xlabel("event timestamp to Kafka consumer (ms, log scale)")
        ax.set_ylabel("fraction of events")
        ax.set_title("celery-kafka-bridge latency distribution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)


def _target(measured: float | None, met: bool) -> dict[str, Any]:
    return {"measured": measured, "met": met}


def _pct(p: Any) -> str:
    return f"{p.p50:.1f} / {p.p95:.1f} / {p.p99:.1f} / {p.max:.1f}"
