"""Static checks of the container and deploy files; no Docker engine or cluster runs them here.

The compose file is checked against the Compose specification's schema and the Kubernetes
manifests against the Kubernetes API schemas, both bundled in PyPI packages, so this works offline.
What those schemas cannot know (which port the probes hit, which settings the bridge has, whether
the pieces agree with each other) is asserted here.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from celery_kafka_bridge.cli import main as cli_main
from celery_kafka_bridge.config import ENV_PREFIX, Config, canonical_name
from harness.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
# 1.29 is the oldest release with native sidecars (init containers with restartPolicy: Always).
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
SECRET_SUFFIX = "_FILE"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yaml"
# The Prometheus Operator's API group: its objects are checked against alerts.yaml instead.
CUSTOM_RESOURCE_GROUPS = {"monitoring.coreos.com"}


def unknown_settings(names: Iterable[str]) -> list[str]:
    """The names that are not ``BRIDGE_<field>`` (or ``BRIDGE_<field>_FILE``) of `Config`, or
    an older name of one."""
    unknown = []
    for name in names:
        field_name = canonical_name(
            name.removeprefix(ENV_PREFIX).removesuffix(SECRET_SUFFIX).lower()
        )
        if not name.startswith(ENV_PREFIX) or field_name not in Config.model_fields:
            unknown.append(name)
    return unknown


def load_settings(env: dict[str, Any]) -> Config:
    """`Config` from the plain (not ``_FILE``) variables, validating their values too."""
    values = {
        name.removeprefix(ENV_PREFIX).lower(): str(value)
        for name, value in env.items()
        if not name.endswith(SECRET_SUFFIX)
    }
    return Config.load(**values)


# --- docker compose ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    services: dict[str, Any] = compose["services"]
    return services


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def seconds(duration: str) -> float:
    """A compose duration such as ``20s`` or ``1m30s``."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_rabbitmq_kafka_a_worker_with_events_a_producer_and_the_bridge(
    services: dict[str, Any],
) -> None:
    assert {"rabbitmq", "kafka", "worker", "producer", "bridge"} <= services.keys()
    assert "management" in services["rabbitmq"]["image"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    worker = command_of(services["worker"])
    assert worker[:2] == ["celery", "-A"] and "worker" in worker and "-E" in worker


def test_kafka_is_a_single_kraft_node_the_bridge_reaches_as_kafka_9092(
    services: dict[str, Any],
) -> None:
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert services["bridge"]["environment"]["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_every_service_others_wait_for_has_a_healthcheck(services: dict[str, Any]) -> None:
    waited_for = {dep for service in services.values() for dep in service.get("depends_on", {})}
    assert waited_for >= {"rabbitmq", "kafka"}
    for name in waited_for:
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in {"CMD", "CMD-SHELL"}, name
    assert services["rabbitmq"]["healthcheck"]["test"] == [
        "CMD",
        "rabbitmq-diagnostics",
        "-q",
        "ping",
    ]


def test_bridge_starts_once_rabbitmq_and_kafka_are_healthy(services: dict[str, Any]) -> None:
    depends_on = services["bridge"]["depends_on"]
    for name in ("rabbitmq", "kafka"):
        assert depends_on[name]["condition"] == "service_healthy"


def fixed_host_ports(service: dict[str, Any]) -> list[Any]:
    """Published ports that name a host port: a second replica could not bind them."""
    fixed = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            if port.get("published"):
                fixed.append(port)
        elif ":" in str(port) and str(port).rsplit(":", 1)[0].rsplit(":", 1)[-1]:
            fixed.append(port)
    return fixed


def test_fixed_host_ports_are_found_in_every_notation() -> None:
    assert fixed_host_ports({"ports": ["9808", "127.0.0.1::9808", {"target": 9808}]}) == []
    assert len(fixed_host_ports({"ports": ["9808:9808", "127.0.0.1:1:9808"]})) == 2
    assert len(fixed_host_ports({"ports": [{"target": 9808, "published": "9808"}]})) == 1


def test_bridge_can_be_scaled_to_several_replicas(services: dict[str, Any]) -> None:
    bridge = services["bridge"]
    assert "container_name" not in bridge
    assert "hostname" not in bridge
    assert fixed_host_ports(bridge) == []


def test_bridge_environment_holds_only_valid_bridge_settings(services: dict[str, Any]) -> None:
    env = services["bridge"]["environment"]
    assert unknown_settings(env) == []
    config = load_settings(env)
    assert config.kafka_enable_idempotence, "a real Kafka keeps the idempotent producer"


def test_bridge_reads_the_amqp_url_from_a_docker_secret(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    bridge = services["bridge"]
    assert "BRIDGE_AMQP_URL" not in bridge["environment"]
    path = Path(bridge["environment"]["BRIDGE_AMQP_URL_FILE"])
    assert path.parent == Path("/run/secrets") and path.name in bridge["secrets"]
    url = (ROOT / compose["secrets"][path.name]["file"]).read_text()
    assert Config.load(amqp_url=url).amqp_url == url


def test_every_client_logs_in_with_the_user_rabbitmq_is_created_with(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    rabbit_env = services["rabbitmq"]["environment"]
    bridge_secret = compose["secrets"]["amqp_url"]["file"]
    urls = [
        (ROOT / bridge_secret).read_text(),
        services["worker"]["environment"]["DEMO_BROKER_URL"],
        services["producer"]["environment"]["DEMO_BROKER_URL"],
    ]
    for url in map(urlsplit, urls):
        assert (url.hostname, url.username, url.password) == (
            "rabbitmq",
            rabbit_env["RABBITMQ_DEFAULT_USER"],
            rabbit_env["RABBITMQ_DEFAULT_PASS"],
        )


def test_bridge_is_killed_only_after_its_shutdown_grace(services: dict[str, Any]) -> None:
    bridge = services["bridge"]
    grace = load_settings(bridge["environment"]).shutdown_grace_seconds
    assert seconds(bridge["stop_grace_period"]) > grace


def test_compose_builds_targets_the_dockerfile_has(services: dict[str, Any]) -> None:
    built = [s["build"] for s in services.values() if "build" in s]
    assert {b["target"] for b in built} == {"bridge", "demo"}
    for build in built:
        assert (ROOT / build["context"] / build["dockerfile"]) == DOCKERFILE
        assert build["target"] in dockerfile_stages()


def test_demo_commands_name_modules_the_demo_image_holds(services: dict[str, Any]) -> None:
    worker = command_of(services["worker"])
    producer = command_of(services["producer"])
    for module in (worker[worker.index("-A") + 1], producer[producer.index("-m") + 1]):
        package, name = module.split(".")
        assert package == "demo" and (ROOT / "deploy" / "demo" / f"{name}.py").is_file(), module


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, instruction: str) -> str | None:
        values = [value for name, value in self.instructions if name == instruction]
        return values[-1] if values else None


def dockerfile_stages() -> dict[str, Stage]:
    """Stages by name (or index), in order, with their instructions and resolved base image."""
    parser = DockerfileParser(path=str(DOCKERFILE))
    stages: dict[str, Stage] = {}
    bases = iter(parser.parent_images)
    for item in parser.structure:
        if item["instruction"] == "FROM":
            words = item["value"].split()
            name = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else str(len(stages))
            stages[name] = Stage(name, next(bases))
        elif stages and item["instruction"] != "COMMENT":
            list(stages.values())[-1].instructions.append((item["instruction"], item["value"]))
    return stages


def lineage(stage: Stage, stages: dict[str, Stage]) -> Iterator[Stage]:
    """The stage and the stages it is built on, nearest first."""
    while True:
        yield stage
        if stage.base not in stages:
            return
        stage = stages[stage.base]


def exec_form(value: str) -> list[str]:
    parsed: list[str] = json.loads(value)
    return parsed


def final_stage() -> Stage:
    return list(dockerfile_stages().values())[-1]


def test_dockerfile_is_multi_stage_on_a_slim_python() -> None:
    stages = dockerfile_stages()
    assert len(stages) > 1
    assert all("slim" in s.base for s in stages.values() if s.base not in stages)
    assert "COPY --from=build" in DOCKERFILE.read_text()


def test_image_runs_as_a_numeric_non_root_user_like_the_pods() -> None:
    stages = dockerfile_stages()
    user = next(u for s in lineage(final_stage(), stages) if (u := s.last("USER")) is not None)
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can check it"
    pod_security = deployment()["spec"]["template"]["spec"]["securityContext"]
    assert (int(uid), int(gid)) == (pod_security["runAsUser"], pod_security["runAsGroup"])


def test_image_healthcheck_gets_livez_on_the_default_http_port() -> None:
    healthcheck = final_stage().last("HEALTHCHECK")
    assert healthcheck is not None
    options, _, command = healthcheck.partition("CMD ")
    assert "/livez" in command and "BRIDGE_HTTP_PORT" in command
    assert f"'{Config.model_fields['http_port'].default}'" in command
    assert "--timeout=" in options and "--interval=" in options


def test_image_exposes_the_default_http_port() -> None:
    assert final_stage().last("EXPOSE") == str(Config.model_fields["http_port"].default)


def test_image_entrypoint_runs_the_bridge_command() -> None:
    entrypoint = final_stage().last("ENTRYPOINT")
    assert entrypoint is not None and exec_form(entrypoint) == ["celery-kafka-bridge", "run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["celery-kafka-bridge"] == "celery_kafka_bridge.cli:main"
    assert "run" in cli_main.commands


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent decides."""
    parents = [str(p) for p in Path(path).parents if str(p) != "."]
    ignored = False
    for pattern in patterns:
        glob = pattern.removeprefix("!")
        if any(fnmatch.fnmatchcase(p, glob) for p in [path, *parents]):
            ignored = not pattern.startswith("!")
    return ignored


def test_every_file_the_dockerfile_copies_is_in_the_build_context() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        value.split()[:-1]
        for stage in dockerfile_stages().values()
        for instruction, value in stage.instructions
        if instruction in {"COPY", "ADD"} and not value.startswith("--from=")
    ]
    sources = [source for sources in copied for source in sources]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignored(source, patterns), f"{source} is excluded by .dockerignore"


def test_dockerignore_rule_lets_the_last_matching_pattern_decide() -> None:
    patterns = ["*", "!bridge", "!deploy/demo", "**/__pycache__"]
    assert dockerignored(".venv", patterns)
    assert not dockerignored("bridge", patterns)
    assert not dockerignored("deploy/demo", patterns)
    assert dockerignored("deploy/k8s", patterns)
    assert dockerignored("bridge/__pycache__", patterns)


# --- Kubernetes -------------------------------------------------------------------------------


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s (the kustomization is not one)."""
    return [
        (path, document)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def custom_resource(document: dict[str, Any]) -> bool:
    """Whether the object is of an operator's kind, unknown to the Kubernetes schemas."""
    return str(document["apiVersion"]).split("/")[0] in CUSTOM_RESOURCE_GROUPS


def find(kind: str, path: Path | None = None) -> dict[str, Any]:
    (found,) = [d for p, d in manifests() if d["kind"] == kind and (path is None or p == path)]
    return found


def deployment() -> dict[str, Any]:
    return find("Deployment", K8S / "deployment.yaml")


def configmap_settings() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap")["data"]
    return data


def bridge_containers() -> list[tuple[str, dict[str, Any]]]:
    """(file name, container) for every bridge container: the Deployment's and the sidecar's."""
    found = []
    for path, document in manifests():
        if document["kind"] == "Deployment":
            pod = document["spec"]["template"]["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                if container["name"] == "bridge":
                    found.append((path.name, container))
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    ("path", "document"),
    [(p, d) for p, d in manifests() if not custom_resource(d)],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_manifest_is_valid_against_the_kubernetes_schema(
    path: Path, document: dict[str, Any], version: str
) -> None:
    # strict: an unknown or misspelt field fails instead of being ignored by the API server.
    kubernetes_validate.validate(document, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_sidecar_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p, _ in manifests()} - {"sidecar-example.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert "prometheusrule.yaml" in kustomization["resources"]


def test_prometheus_rule_holds_exactly_the_rules_of_the_prometheus_rules_file() -> None:
    """No schema knows the PrometheusRule CRD offline: its shape is checked here, and its
    rules are the promtool-tested ones (tests/test_alerts.py)."""
    (rule,) = [d for _, d in manifests() if custom_resource(d)]
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] == deployment()["metadata"]["name"]
    assert rule.keys() == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"] == {"groups": yaml.safe_load(ALERT_RULES.read_text())["groups"]}


def test_deployment_runs_three_replicas_spread_over_nodes() -> None:
    spec = deployment()["spec"]
    assert spec["replicas"] == 3
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_disruption_budget_and_service_select_the_bridge_pods() -> None:
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    budget = find("PodDisruptionBudget", K8S / "pdb.yaml")["spec"]
    assert budget.get("maxUnavailable") == 1 or budget.get("minAvailable") == 2
    assert budget["selector"]["matchLabels"].items() <= pod_labels.items()
    assert find("Service")["spec"]["selector"].items() <= pod_labels.items()


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port, resolving a named port to its number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_bridge_containers_probe_livez_and_readyz_on_the_configured_port() -> None:
    http_port = int(configmap_settings()["BRIDGE_HTTP_PORT"])
    containers = bridge_containers()
    assert {name for name, _ in containers} == {"deployment.yaml", "sidecar-example.yaml"}
    for name, container in containers:
        for probe, path in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")]:
            get = container[probe]["httpGet"]
            assert (get["path"], container_port(container, get["port"])) == (path, http_port), name
        assert container["resources"]["requests"] and container["resources"]["limits"], name


def test_bridge_containers_take_only_valid_settings_from_the_configmap() -> None:
    settings = configmap_settings()
    assert unknown_settings(settings) == []
    assert load_settings(settings).kafka_enable_idempotence
    for name, container in bridge_containers():
        assert unknown_settings(e["name"] for e in container.get("env", [])) == [], name
        assert container["envFrom"] == [
            {"configMapRef": {"name": find("ConfigMap")["metadata"]["name"]}}
        ], name


def test_bridge_containers_read_the_amqp_url_from_the_mounted_secret() -> None:
    secret = find("Secret")
    assert "BRIDGE_AMQP_URL" not in configmap_settings()
    for path, document in manifests():
        if document["kind"] != "Deployment":
            continue
        pod = document["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"] + pod.get("initContainers", []):
            if container["name"] != "bridge":
                continue
            env = {e["name"]: e["value"] for e in container["env"]}
            secret_file = Path(env["BRIDGE_AMQP_URL_FILE"])
            (mount,) = [
                m for m in container["volumeMounts"] if Path(m["mountPath"]) == secret_file.parent
            ]
            volume = volumes[mount["name"]]["secret"]
            assert volume["secretName"] == secret["metadata"]["name"], path.name
            assert secret_file.name in secret["stringData"], path.name
    Config.load(amqp_url=secret["stringData"]["amqp-url"])


def test_bridge_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities() -> None:
    for path, document in manifests():
        if document["kind"] == "Deployment":
            pod = document["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True, path.name
    for name, container in bridge_containers():
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"]["drop"] == ["ALL"], name


def test_pods_are_killed_only_after_the_bridge_shutdown_grace() -> None:
    grace = load_settings(configmap_settings()).shutdown_grace_seconds
    for path, document in manifests():
        if document["kind"] == "Deployment":
            pod = document["spec"]["template"]["spec"]
            assert pod["terminationGracePeriodSeconds"] > grace, path.name


def test_materialize_runs_a_standby_beside_its_slices_with_probes_and_a_disruption_budget() -> None:
    deployment_, budget = (
        find(kind, K8S / "materialize.yaml") for kind in ("Deployment", "PodDisruptionBudget")
    )
    spec = deployment_["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"] == ["celery-kafka-bridge", "materialize"]
    assert (
        container["envFrom"] == deployment()["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    assert unknown_settings(env) == []
    config = load_settings({**configmap_settings(), **env})
    assert spec["replicas"] == config.materialize_slices + 1
    http_port = config.http_port
    for probe, path in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")]:
        get = container[probe]["httpGet"]
        assert (get["path"], container_port(container, get["port"])) == (path, http_port)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    bridge_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert not find("Service")["spec"]["selector"].items() <= pod_labels.items()
    assert bridge_labels != pod_labels


def test_sidecar_example_runs_the_bridge_as_a_native_sidecar_of_a_worker_with_events() -> None:
    pod = find("Deployment", K8S / "sidecar-example.yaml")["spec"]["template"]["spec"]
    (bridge,) = [c for c in pod["initContainers"] if c["name"] == "bridge"]
    assert bridge["restartPolicy"] == "Always", "stopped after the worker, so it drains last"
    (worker,) = pod["containers"]
    assert worker["command"][:2] == ["celery", "-A"] and "-E" in worker["command"]
