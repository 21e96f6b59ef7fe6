"""`make bench` at a tiny size writes a well-formed report (speed is not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.latency import Percentiles
from bench.run import main
from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.support import Names, amqp_url


@pytest.mark.slow
def test_a_tiny_benchmark_run_writes_json_markdown_and_a_chart(
    names: Names, kafka: EmbeddedKafka, tmp_path: Path
) -> None:
    args = [
        "--events",
        "2000",
        "--rates",
        "200",
        "--rate-seconds",
        "2",
        "--ordering-tasks",
        "20",
        "--publish-trials",
        "1",
        "--shaping-pairs",
        "2",
        "--out",
        str(tmp_path),
        "--amqp-url",
        amqp_url(),
        "--kafka",
        kafka.bootstrap_servers,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    report = json.loads((tmp_path / "results.json").read_text())
    drains = {d["name"]: d for d in report["throughput"]}
    assert sorted(drains) == ["a", "b", "c", "d", "e", "m", "n", "r", "s", "t"]
    assert all(drains[d]["events"] == report["meta"]["events"] >= 2000 for d in "abcdemn")
    assert drains["s"]["kafka_records"] >= drains["s"]["events"] == drains["r"]["events"] > 0
    assert all(d["events_per_second"] > 0 for d in drains.values())
    assert drains["c"]["kafka_records"] >= report["meta"]["events"]
    assert drains["c"]["peak_rss_mb"] > 0
    assert 0 < drains["e"]["kafka_records"] < report["meta"]["events"], "heartbeats dropped"
    ratios = {"c/a", "c/b", "d/c", "e/c", "e/c (CPU)", "m/c", "n/c", "n/m", "s/r", "t/s"}
    assert set(report["ratios"]) == ratios
    assert drains["e"]["cpu_us_per_event"] > 0
    pairs = report["meta"]["shaping_cpu_us_per_event"]
    assert len(pairs) == 2 and all(plain > 0 and shaped > 0 for plain, shaped in pairs)
    assert pairs[0] == [drains["c"]["cpu_us_per_event"], drains["e"]["cpu_us_per_event"]]
    median = sum(plain / shaped for plain, shaped in pairs) / 2  # of two: their mean
    assert report["ratios"]["e/c (CPU)"] == pytest.approx(median, abs=0.002)
    assert drains["m"]["peak_rss_mb"] > 0, "materialize applied every event of (c)'s topic"
    assert report["meta"]["claim_us_per_message"] > 0
    assert report["meta"]["ack_us_per_message"] > 0
    decoding = report["meta"]["decoding_us_per_event"]
    assert decoding["without_rules_us"] > 0 and decoding["with_rules_us"] > 0
    (latency,) = report["latency"]
    assert latency["rate"] == 200
    assert latency["received"] >= latency["sent"] == 400
    assert 0 < latency["to_consumer"]["p50"] <= latency["to_consumer"]["max"]
    assert 0 < latency["acked_within_25ms_pct"] <= 100, "read from the bridge's histogram"
    to_ack = latency["to_ack"]
    assert 0 < to_ack["p50"] <= to_ack["p95"] <= to_ack["p99"] <= to_ack["max"]
    assert len(report["targets"]) == 8
    publishing = {(p["publisher"], p["confirm_publish"]): p for p in report["publishing"]}
    assert sorted(publishing) == [
        ("Celery dispatcher", False),
        ("Celery dispatcher", True),
        ("bare py-amqp, full speed", False),
    ]
    assert all(p["trials"] == 1 and 0 <= p["lost"] <= p["events"] for p in publishing.values())
    confirmed = publishing[("Celery dispatcher", True)]
    assert confirmed["lost"] == 0, "every confirmed publish is in the queue"
    assert confirmed["wall_us_per_event"] > 0
    orderings = {o["topology"]: o for o in report["ordering"]}
    assert sorted(orderings) == [
        "competing",
        "ordered",
        "redis, 1 replica",
        "redis, 2 replicas",
        "sharded",
    ]
    assert all(o["records"] >= 3 * 20 for o in orderings.values()), "every task's records read"
    assert orderings["ordered"]["inversions"] == 0

    markdown = (tmp_path / "results.md").read_text()
    assert "| (c) bridge x1" in markdown and "Ratios: c/a = " in markdown
    assert "Shaping, alternating (c, e) pairs, bridge CPU us per event" in markdown
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")


def test_percentiles_are_nearest_rank() -> None:
    got = Percentiles.of([float(ms) for ms in range(100, 0, -1)])
    assert got == Percentiles(p50=50.0, p95=95.0, p99=99.0, max=100.0)


def test_percentiles_from_a_histogram_interpolate_within_buckets() -> None:
    buckets = [(0.001, 50.0), (0.002, 100.0), (0.005, 100.0), (float("inf"), 100.0)]
    got = Percentiles.of_histogram(buckets)
    assert got == Percentiles(p50=1.0, p95=1.9, p99=1.98, max=2.0)
