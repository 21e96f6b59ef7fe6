"""Several sources in one deployment (BRIDGE_SOURCES_FILE): the file's checks, and three vhosts
with a worker each, one deleted mid-run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka
from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.sources import sources_of
from harness.support import (
    BridgeProcess,
    KafkaRecord,
    Names,
    Rabbit,
    delete_vhost,
    event_ids,
    new_vhost,
    poll,
    read_topic,
    send_tasks,
    sent_event_ids,
    start_worker,
    stop_worker,
)
from tests.conftest import BridgeFactory


def sources_file(tmp_path: Path, sources: object) -> Path:
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": sources}))
    return path


def test_each_source_takes_the_deployment_settings_it_does_not_set(tmp_path: Path) -> None:
    path = sources_file(
        tmp_path,
        [
            {"name": "billing", "broker_url": "amqp://u:p@rabbit/billing", "topic": "billing.ev"},
            {"name": "cache", "broker_url": "redis://cache:6379/2", "node_id": "n2"},
        ],
    )
    config = Config.load(sources_file=str(path), topic="all.events", node_id="n1")
    billing, cache = sources_of(config)
    assert (billing.name, billing.config.topic, billing.config.node_id) == (
        "billing",
        "billing.ev",
        "n1",
    )
    assert (cache.config.broker_kind, cache.config.topic, cache.config.node_id) == (
        "redis",
        "all.events",
        "n2",
    )


def test_without_a_sources_file_there_is_one_unnamed_source() -> None:
    config = Config.load()
    ((source),) = sources_of(config)
    assert (source.name, source.label, source.config) == (None, "default", config)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ([], "sources: List should have at least 1 item"),
        ([{"name": "a b", "broker_url": "amqp://x//"}], "sources.0.name: String should match"),
        ([{"name": "a", "broker_url": "amqp://x//", "vhost": "v"}], "sources.0.vhost: Extra"),
        (
            [{"name": "a", "broker_url": "amqp://x//"}, {"name": "a", "broker_url": "amqp://y//"}],
            "source names must be unique",
        ),
        ([{"name": "a", "broker_url": "http://x"}], "source a: invalid setting BRIDGE_BROKER_URL"),
    ],
)
def test_a_bad_sources_file_names_the_setting_and_the_mistake(
    tmp_path: Path, sources: object, message: str
) -> None:
    config = Config.load(sources_file=str(sources_file(tmp_path, sources)))
    with pytest.raises(ConfigError, match=r"^invalid setting BRIDGE_SOURCES_FILE: ") as caught:
        sources_of(config)
    assert message in str(caught.value)


def start_workers(
    names: Names, urls: dict[str, str], tmp_path: Path
) -> dict[str, subprocess.Popen[bytes]]:
    """A worker on each vhost, started side by side (each takes seconds to be ready)."""
    workers = {}

    def run(x: str) -> None:
        log, host = tmp_path / f"worker-{x}.log", f"w-{x}-{names.suffix}@test"
        workers[x] = start_worker(
            names.exchange, names.task_queue, log, hostname=host, broker_url=urls[x]
        )

    threads = [threading.Thread(target=run, args=(x,)) for x in urls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return workers


def unready(bridge: BridgeProcess, source: str) -> dict[str, Any] | None:
    """/readyz's answer if it is 503 with ``source`` not attached."""
    status, body = bridge.http("/readyz")
    checks: dict[str, Any] = json.loads(body) if status == 503 else {}
    return checks if checks.get("sources", {}).get(source, "attached") != "attached" else None


def ids_by_source(records: list[KafkaRecord]) -> dict[str, set[str]]:
    by_source: dict[str, set[str]] = {}
    for record in records:
        source, event = record.headers["source"].decode(), record.headers["event_id"].decode()
        by_source.setdefault(source, set()).add(event)
    return by_source


@pytest.mark.slow
def test_three_vhosts_one_deleted_mid_run_the_others_lose_nothing_and_each_record_names_its_source(
    names: Names, kafka: EmbeddedKafka, start_bridge: BridgeFactory, tmp_path: Path
) -> None:
    letters = "abc"
    with contextlib.ExitStack() as stack:
        urls = {x: stack.enter_context(new_vhost(f"{names.vhost}-{x}")) for x in letters}
        path = sources_file(
            tmp_path, [{"name": f"src-{x}", "broker_url": urls[x]} for x in letters]
        )
        rabbits = {x: Rabbit(urls[x]) for x in "ab"}  # c's vhost goes: no witness there
        for rabbit in rabbits.values():
            stack.callback(rabbit.close)
        witnesses = {x: rabbits[x].witness(names.exchange, "witness") for x in "ab"}
        bridge = start_bridge(wait=False, BRIDGE_SOURCES_FILE=str(path))
        ready = lambda: bridge.http("/readyz")[0] == 200 or not bridge.alive()  # noqa: E731
        poll(ready, 60, what="every source ready")
        assert bridge.alive(), bridge.log()
        workers = start_workers(names, urls, tmp_path)
        for process in workers.values():
            stack.callback(stop_worker, process)
        senders = [
            threading.Thread(
                target=send_tasks, args=(names.exchange, names.task_queue, 90, 30.0, urls[x])
            )
            for x in "ab"
        ]
        for thread in senders:
            thread.start()
        send_tasks(names.exchange, names.task_queue, 30, 30.0, urls["c"])
        delete_vhost(f"{names.vhost}-c")

        checks = poll(lambda: unready(bridge, "src-c"), 30, what="src-c unready")
        assert checks["sources"]["src-a"] == checks["sources"]["src-b"] == "attached"
        assert bridge.metric("celery_kafka_bridge_source_up", source="src-c") == 0
        for thread in senders:
            thread.join()
        for x in "ab":
            stop_worker(workers[x])  # no more events, so the witnesses are complete
        expected = {x: sent_event_ids(rabbits[x].drain(witnesses[x])) for x in "ab"}
        every = expected["a"] | expected["b"]
        records = read_topic(
            kafka.bootstrap_servers,
            names.topic,
            until=lambda rs: every <= event_ids(rs),
            timeout=60,
        )
    by_source = ids_by_source(records)
    assert set(by_source) <= {"src-a", "src-b", "src-c"}
    for x in "ab":
        missing = expected[x] - by_source.get(f"src-{x}", set())
        assert not missing, f"src-{x} lost {len(missing)} of {len(expected[x])} events"
    assert by_source.get("src-c"), "src-c wrote nothing before its vhost went"
    assert not by_source["src-c"] & every, "an event under another source's name"
    assert bridge.alive()
