"""The alert rules and the dashboard, checked by promtool and by a real Prometheus.

promtool checks the rules of deploy/prometheus/alerts.yaml and of the PrometheusRule and runs
their unit tests; a real Prometheus scrapes two bridge replicas and sees the Kafka and the
silent-Celery alerts fire and clear; every metric the rules and the dashboard name is exported
(by the bridge, or by materialize).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from celery import Celery

from celery_kafka_bridge.embedded import EmbeddedKafka
from harness.materialize import materialize_env, start_materialize
from harness.prometheus import (
    ALERT_RULES,
    Prometheus,
    concrete,
    dashboard,
    load_rules,
    quick_rules,
)
from harness.support import ROOT, Names, poll
from tests.conftest import BridgeFactory
from tests.test_bridge_end_to_end import client_app

UNIT_TESTS = ALERT_RULES.with_name("alerts.test.yaml")
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
RUNBOOK = ROOT / "docs" / "operations.md"
METRIC = re.compile(r"\b(?:celery_kafka_bridge|process)_\w+")
HISTOGRAM_SAMPLES = ("_bucket", "_count", "_sum")
KAFKA_ALERT = "CeleryKafkaBridgeKafkaUnreachable"
SILENCE_ALERT = "CeleryKafkaBridgeTaskEventsOff"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, check=False, timeout=60
    )


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_rules()["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules_file_and_the_prometheus_rule(tmp_path: Path) -> None:
    spec = tmp_path / "prometheusrule-spec.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]))
    for path in (ALERT_RULES, spec):
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_fires_in_a_unit_test_and_stays_silent_in_another() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules()}
    assert alerts - fired == set(), "never seen firing"
    assert alerts - silent == set(), "never seen silent"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings (lower case, punctuation dropped, spaces to dashes)."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_section() -> None:
    runbook = anchors(RUNBOOK.read_text())
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        url, _, anchor = annotations["runbook_url"].partition("#")
        assert url.endswith("/docs/operations.md"), rule["alert"]
        assert anchor == rule["alert"].lower() and anchor in runbook, rule["alert"]


def test_quick_rules_shorten_the_holds_and_windows_and_nothing_else() -> None:
    rule = {"alert": "A", "expr": "increase(x[10m]) or x offset 5m > 1", "for": "5m"}
    quick = quick_rules({"groups": [{"name": "g", "rules": [rule, {"alert": "B", "expr": "y"}]}]})
    assert quick["groups"][0]["rules"] == [
        {"alert": "A", "expr": "increase(x[20s]) or x offset 10s > 1", "for": "3s"},
        {"alert": "B", "expr": "y"},
    ]


def test_dashboard_is_templated_by_data_source_job_and_instance() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["includeAll"] and variables["instance"]["includeAll"]
    assert "$job" in variables["instance"]["definition"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job", instance=~"$instance"' in target["expr"], panel["title"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses them, as recording rules of a scratch rules file."""
    queries = [
        {"record": f"panel_{panel['id']}_{target['refId']}", "expr": concrete(target["expr"], "5s")}
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]
    scratch = tmp_path / "dashboard-queries.yaml"
    scratch.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": queries}]}))
    result = promtool("check", "rules", str(scratch))
    assert result.returncode == 0, result.stdout + result.stderr


def test_exported_names_are_samples_or_families_without_samples() -> None:
    text = '# TYPE a_total counter\n# TYPE h histogram\n# TYPE g gauge\ng{side="x"} 1.0\n'
    names = exported(text)
    assert {"a_total", "h_bucket", "h_count", "h_sum", "g"} <= names
    assert not {"a", "h", "g_bucket", "g_total"} & names


def queried_metrics() -> set[str]:
    """Every metric name in the PromQL of the rules and of the dashboard's panels."""
    exprs = [rule["expr"] for rule in rules()]
    exprs += [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]
    return {name for expr in exprs for name in METRIC.findall(expr)}


def exported(metrics_text: str) -> set[str]:
    """The sample names a /metrics page can hold, including those of label-less families that
    have no sample yet (a counter by reason before the first dead letter)."""
    names = set(re.findall(r"^(\w+)(?:\{| )", metrics_text, re.MULTILINE))
    for family, kind in re.findall(r"^# TYPE (\w+) (\w+)$", metrics_text, re.MULTILINE):
        if kind == "histogram":
            names.update(family + suffix for suffix in HISTOGRAM_SAMPLES)
        else:
            names.add(family)  # text format 0.0.4 names a counter's family with its _total
    return names


def test_every_metric_of_the_rules_and_the_dashboard_is_exported_by_a_live_bridge(
    names: Names, kafka: EmbeddedKafka, start_bridge: BridgeFactory, tmp_path: Path
) -> None:
    """By the bridge, or by materialize for the rules of its group."""
    bridge = start_bridge()
    materializer = start_materialize(
        materialize_env(names, kafka.bootstrap_servers, "alerts"), tmp_path / "materialize.log"
    )
    try:
        pages = [process.http("/metrics") for process in (bridge, materializer)]
    finally:
        materializer.kill()
    assert [status for status, _ in pages] == [200, 200]
    queried = queried_metrics()
    assert {
        "celery_kafka_bridge_event_age_seconds_bucket",
        "process_resident_memory_bytes",
        "celery_kafka_bridge_materialize_slices",
        "celery_kafka_bridge_events_missing_total",
    } <= queried
    assert sorted(queried - set().union(*(exported(text) for _, text in pages))) == []


@pytest.fixture
def client(names: Names) -> Iterator[Celery]:
    """A Celery client of the test's workers: sends tasks and remote-control commands."""
    app = client_app(names)
    yield app
    app.close()


def send_tasks(app: Celery, count: int = 5) -> int:
    """Send ``count`` short tasks; returns ``count``."""
    for i in range(count):
        app.send_task("tests.celery_app.add", (i, i))
    return count


def firing(prometheus: Prometheus, alertname: str) -> set[str]:
    """The instances the alert fires for."""
    return {
        a["labels"]["instance"]
        for a in prometheus.alerts()
        if a["labels"]["alertname"] == alertname and a["state"] == "firing"
    }


@pytest.mark.slow
def test_a_real_prometheus_fires_and_clears_the_kafka_and_the_silent_celery_alerts(
    names: Names,
    own_kafka: EmbeddedKafka,
    start_bridge: BridgeFactory,
    worker: Callable[..., Any],
    client: Celery,
    tmp_path: Path,
) -> None:
    """Two replicas scraped every second, the rules of alerts.yaml on a test time scale
    (`quick_rules`), a worker started without -E (the watchdog's window is 3 s, not 300 s).

    Its task events are then switched on with `enable_events`: the way back Celery offers, as
    `disable_events` cannot switch off the events of a worker started with -E."""
    replicas = [
        start_bridge(
            BRIDGE_KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap_servers,
            BRIDGE_SILENT_TASK_EVENTS_SECONDS="3",
        )
        for _ in range(2)
    ]
    worker(events=False)
    targets = [f"127.0.0.1:{r.env['BRIDGE_HTTP_PORT']}" for r in replicas]
    with Prometheus(targets, tmp_path / "prometheus", quick_rules(load_rules())).start() as prom:
        ready = "sum(celery_kafka_bridge_ready)"
        poll(lambda: prom.query(ready) and prom.query(ready)[0]["value"][1] == "2", 30)

        assert own_kafka.process is not None
        broker = psutil.Process(own_kafka.process.pid)
        broker.suspend()
        try:
            poll(lambda: "pending" in prom.states(KAFKA_ALERT), 30, what="pending")
            poll(lambda: firing(prom, KAFKA_ALERT) == set(targets), 30, what="firing on both")
        finally:
            broker.resume()
        poll(lambda: not prom.states(KAFKA_ALERT), 60, what="the Kafka alert to clear")

        poll(
            lambda: send_tasks(client) and "firing" in prom.states(SILENCE_ALERT),
            60,
            interval=1.0,
            what="the silent-Celery alert",
        )
        client.control.enable_events()
        poll(
            lambda: send_tasks(client) and not prom.states(SILENCE_ALERT),
            60,
            interval=1.0,
            what="the silent-Celery alert to clear",
        )
        poll(lambda: not prom.alerts(), 60, what="every alert to clear")
