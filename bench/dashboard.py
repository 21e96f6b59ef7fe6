"""The dashboard's panels from a real run, as a PNG: `python -m bench.dashboard [out.png]`.

Grafana is not needed: two bridge replicas take a steady event stream (with a few poison
messages) while a real Prometheus scrapes them every second; Kafka (Tansu) is frozen with
SIGSTOP in the middle. Then every panel of deploy/grafana/celery-kafka-bridge.json is drawn
from Prometheus's query_range API with the panel's own PromQL, read from the JSON file.
"""

from __future__ import annotations

import math
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from celery_kafka_bridge.embedded import EmbeddedKafka, free_port
from harness.prometheus import Prometheus, concrete, dashboard
from harness.support import (
    ROOT,
    BridgeProcess,
    Names,
    Rabbit,
    bridge_env,
    own_vhost,
    poll,
    publish_events,
)

OUT = ROOT / "docs" / "img" / "dashboard.png"
RATE = 1000.0
"""Events per second from Celery's own dispatcher."""
BEFORE, FROZEN, AFTER = 40.0, 20.0, 40.0
"""Seconds of the run before, during and after the Kafka freeze."""
POISON_EVERY = 2.0
"""Seconds between two malformed messages (dead letters)."""
RATE_INTERVAL = "5s"
"""What Grafana's $__rate_interval is at a 1 s scrape interval: four scrapes."""
STEP = 1.0
UNITS = {"ops": "per second", "s": "seconds", "bytes": "MiB", "short": "messages"}


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), template)


def run(workdir: Path, out: Path) -> None:
    """Run the scenario with Prometheus scraping it, then draw the panels into ``out``."""
    names = Names()
    with own_vhost(names.vhost), EmbeddedKafka(log_path=workdir / "tansu.log") as kafka:
        env = bridge_env(names, kafka.bootstrap_servers, BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="2000")
        replicas = [
            BridgeProcess({**env, "BRIDGE_HTTP_PORT": str(free_port())}, workdir / f"b{i}.log")
            for i in range(2)
        ]
        assert kafka.process is not None
        broker = psutil.Process(kafka.process.pid)
        try:
            for replica in replicas:
                replica.start().wait_until_consuming()
            targets = [f"127.0.0.1:{r.env['BRIDGE_HTTP_PORT']}" for r in replicas]
            with Prometheus(targets, workdir / "prometheus").start() as prometheus:
                start, freeze, thaw = stream(names, broker)
                poll(lambda: drained(replicas), 60, what="the backlog to drain")
                render(prometheus, (start, freeze, thaw, time.time()), out)
        finally:
            broker.resume()  # a no-op unless the run failed while Kafka was frozen
            for replica in replicas:
                replica.kill()


def stream(names: Names, broker: psutil.Process) -> tuple[float, float, float]:
    """Events at `RATE` and a poison message every `POISON_EVERY` s, Kafka frozen in the
    middle; the times of start, freeze and thaw."""
    load = threading.Thread(
        target=publish_events, args=(names.exchange, int(RATE * (BEFORE + FROZEN + AFTER)), RATE)
    )
    start = time.time()
    freeze, thaw = start + BEFORE, start + BEFORE + FROZEN
    load.start()
    rabbit = Rabbit()
    try:
        while time.time() < thaw + AFTER:
            if freeze <= time.time() < thaw and broker.status() != psutil.STATUS_STOPPED:
                broker.suspend()
            elif time.time() >= thaw and broker.status() == psutil.STATUS_STOPPED:
                broker.resume()
            rabbit.publish(names.exchange, "task.bad", b'{"type": ', "application/json")
            time.sleep(POISON_EVERY)  # pacing the poison messages, not synchronisation
    finally:
        rabbit.close()
    load.join()
    return start, freeze, thaw


def drained(replicas: list[BridgeProcess]) -> bool:
    return not any(r.metric("celery_kafka_bridge_in_flight_messages") for r in replicas)


def on_grid(values: list[list[Any]]) -> tuple[list[float], list[float]]:
    """A query_range series with NaN at the steps it has no value for, so lines break there
    instead of bridging a gap (histogram quantiles while nothing was acknowledged)."""
    times: list[float] = []
    points: list[float] = []
    for t, v in values:
        if times and float(t) - times[-1] > 1.5 * STEP:
            times.append(times[-1] + STEP)
            points.append(math.nan)
        times.append(float(t))
        points.append(float(v))
    return times, points


def draw(
    axes: Axes,
    panel: dict[str, Any],
    series: list[tuple[str, list[float], list[float]]],
    start: float,
) -> None:
    axes.set_title(panel["title"], fontsize=10, loc="left")
    unit = panel["fieldConfig"]["defaults"]["unit"]
    if panel["type"] == "state-timeline":
        for row, (_, times, values) in enumerate(series):
            for t, v in zip(times, values, strict=True):
                if math.isnan(v):
                    continue
                axes.broken_barh(
                    [(t - start, STEP)], (row - 0.4, 0.8), color="tab:green" if v else "tab:red"
                )
        axes.set_yticks(range(len(series)), [name for name, _, _ in series], fontsize=7)
        return
    scale = 2**20 if unit == "bytes" else 1.0
    for name, times, values in series:
        axes.plot([t - start for t in times], [v / scale for v in values], label=name, linewidth=1)
    axes.set_ylabel(UNITS.get(unit, unit), fontsize=8)
    if series:
        axes.legend(fontsize=7, loc="upper left")


def render(prometheus: Prometheus, times: tuple[float, float, float, float], out: Path) -> None:
    """Every panel of the dashboard, its queries over ``times`` (start, freeze, thaw, end)."""
    start, freeze, thaw, end = times
    panels = dashboard()["panels"]
    figure = Figure(figsize=(14, 4 * ((len(panels) + 1) // 2)), layout="constrained")
    grid = figure.subplots((len(panels) + 1) // 2, 2, squeeze=False)
    for panel, axes in zip(panels, grid.flat, strict=False):
        series = []
        for target in panel["targets"]:
            for result in prometheus.query_range(
                concrete(target["expr"], RATE_INTERVAL), start, end, STEP
            ):
                name = legend(target["legendFormat"], result["metric"])
                series.append((name, *on_grid(result["values"])))
                peak = max((v for v in series[-1][2] if not math.isnan(v)), default=math.nan)
                print(f"{panel['title']}: {name}: max {peak:.4g}")
        draw(axes, panel, series, start)
        axes.axvspan(freeze - start, thaw - start, color="tab:blue", alpha=0.12)
        axes.set_xlim(0, end - start)
        axes.tick_params(labelsize=7)
        axes.set_xlabel("seconds (shaded: Kafka frozen)", fontsize=7)
    figure.suptitle(
        f"celery-kafka-bridge: 2 replicas, {RATE:.0f} events/s, Kafka frozen {FROZEN:.0f} s "
        f"(panels of deploy/grafana/celery-kafka-bridge.json, from a real Prometheus)",
        fontsize=11,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUT
    with tempfile.TemporaryDirectory(prefix="dashboard-") as tmp:
        run(Path(tmp), out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
