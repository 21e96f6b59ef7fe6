"""The chaos run's results as a console table, JSON and Markdown."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from chaos.measure import Result
from chaos.profiles import Profile

COLUMNS = (
    ("#", "scenario"),
    ("scenario", "title"),
    ("published", "published"),
    ("distinct in Kafka", "distinct"),
    ("duplicates", "duplicates"),
    ("lost", "lost"),
    ("dead-lettered", "dead_lettered"),
    ("peak RSS MiB", "peak_rss_mib"),
    ("recover s", "recovery_s"),
    ("run s", "duration_s"),
    ("verdict", "verdict"),
)

NOTES = (
    "published: events the load generator got RabbitMQ to accept (publisher confirms for "
    "scenarios 2 and 6; Celery's own event dispatcher otherwise). Every event has a unique task "
    "uuid; lost = accepted events whose uuid never reached the Kafka topic.",
    "distinct in Kafka: distinct event_id headers in the topic; duplicates = records minus "
    "distinct (redeliveries after a fault, as at-least-once allows).",
    "recover s: from the end of a fault (the last one, or the worst of several) until the first "
    "event accepted after it was in Kafka.",
    "2c (classic queue) is expected to lose the events RabbitMQ held when it stopped: Celery "
    "events are transient (delivery_mode 1) and a classic queue keeps only persistent messages "
    "across a restart. A quorum queue keeps them all.",
    "Measured on a shared 2-core machine with RabbitMQ, Tansu (memory-only Kafka), the load "
    "generator and other work on it: timings are noisy, counts are exact.",
)


def _cell(result: Result, key: str) -> str:
    if key == "verdict":
        if result.passed:
            return "pass (loss expected)" if result.loss_expected and result.lost else "pass"
        return "FAIL"
    value = getattr(result, key)
    return "-" if value is None else str(value)


def _rows(results: list[Result]) -> list[list[str]]:
    return [[_cell(r, key) for _, key in COLUMNS] for r in results]


def table(results: list[Result]) -> str:
    """A fixed-width table for the console, then each scenario's checks and figures."""
    head = [name for name, _ in COLUMNS]
    rows = _rows(results)
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for result in results:
        lines.append(f"\n{result.scenario}. {result.title}")
        lines.extend(
            f"   [{'ok' if c.ok else 'FAIL'}] {c.what}{f' ({c.detail})' if c.detail else ''}"
            for c in result.checks
        )
        lines.extend(f"   {k}: {v}" for k, v in result.figures.items())
    return "\n".join(lines)


def markdown(results: list[Result], meta: dict[str, Any]) -> str:
    head = [name for name, _ in COLUMNS]
    lines = [
        f"# Chaos run ({meta['profile']} profile)",
        "",
        f"{meta['finished']} on {meta['machine']}; reproduce with `{meta['command']}`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(row) + " |" for row in _rows(results)),
        "",
    ]
    for result in results:
        lines += [f"## {result.scenario}. {result.title}", ""]
        lines += [
            f"- {'ok' if c.ok else '**FAIL**'}: {c.what}" + (f" ({c.detail})" if c.detail else "")
            for c in result.checks
        ]
        lines += [f"- {k}: {v}" for k, v in result.figures.items()]
        lines.append("")
    lines += ["## Notes", "", *(f"- {note}" for note in NOTES), ""]
    return "\n".join(lines)


def write(
    results: list[Result], profile: Profile, out: Path, only: list[str] | None = None
) -> tuple[Path, Path]:
    """Write ``chaos-<profile>.json`` and ``.md`` under ``out`` (``chaos-<profile>-only-1-3.*``
    for a run of some scenarios, so it never replaces a full run's report); return their paths."""
    meta = {
        "profile": profile.name,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        "command": f"python -m chaos.run --{profile.name}"
        + (f" --only {','.join(only)}" if only else ""),
        "passed": all(r.passed for r in results),
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = f"chaos-{profile.name}" + (f"-only-{'-'.join(only)}" if only else "")
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    document = {"meta": meta, "profile": vars(profile), "results": [r.as_dict() for r in results]}
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    md_path.write_text(markdown(results, meta))
    return json_path, md_path
