"""A real Prometheus (Debian's `prometheus` package) for the alert tests and the dashboard picture.

Each one runs on a free port with its own configuration, rules and data directory, and scrapes
the given bridge replicas as the job the rules expect.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from celery_kafka_bridge.embedded import free_port
from harness.support import ROOT, poll

JOB = "celery-kafka-bridge"
"""The scrape job name deploy/prometheus/alerts.yaml expects."""
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "celery-kafka-bridge.json"
_MINUTES = re.compile(r"(\[|offset )(\d+)m\b")


def load_rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(ALERT_RULES.read_text())
    return rules


def quick_rules(rules: dict[str, Any], hold: str = "3s") -> dict[str, Any]:
    """The rules on a test's time scale: every ``for:`` becomes ``hold`` and every minute of a
    range or offset two seconds (a 1 s scrape gives a 10 s window ten samples, like a 15 s
    scrape in 5 minutes)."""
    quick = copy.deepcopy(rules)
    for group in quick["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = hold
            rule["expr"] = _MINUTES.sub(lambda m: f"{m[1]}{2 * int(m[2])}s", rule["expr"])
    return quick


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def concrete(expr: str, rate_interval: str) -> str:
    """A dashboard query as Grafana sends it with every job and instance selected."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$job", ".+")
        .replace("$instance", ".+")
    )


class Prometheus:
    """A Prometheus server process scraping ``targets`` every ``interval`` seconds."""

    def __init__(
        self,
        targets: list[str],
        workdir: Path,
        rules: dict[str, Any] | None = None,
        interval: str = "1s",
    ) -> None:
        self.targets = targets
        self.workdir = workdir
        self.rules = rules
        self.interval = interval
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": self.targets}]}],
        }
        if self.rules is not None:
            (self.workdir / "rules.yaml").write_text(yaml.safe_dump(self.rules))
            config["rule_files"] = [str(self.workdir / "rules.yaml")]
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with open(self.workdir / "prometheus.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        poll(self._ready, timeout, what="Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a GET of /api/v1/``path``."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant vector: each series as ``{"metric": labels, "value": [t, "v"]}``."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range: each series as ``{"metric": labels, "values": [[t, "v"], ...]}``."""
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=str(start), end=str(end), step=str(step)
        )["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) with their labels and state."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def states(self, alertname: str) -> set[str]:
        """The states (``pending``, ``firing``) of the active alerts of that name."""
        return {a["state"] for a in self.alerts() if a["labels"]["alertname"] == alertname}
