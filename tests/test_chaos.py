"""The chaos scenarios, short profile: every fault the bridge must survive without losing events.

Each test runs one scenario of ``chaos.scenarios`` against the real brokers and asserts what it
promises; ``python -m chaos.run`` runs the same scenarios and writes the figures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_kafka_bridge.embedded import EmbeddedKafka
from chaos import scenarios
from chaos.measure import Result
from chaos.produce_errors import produce_errors
from chaos.profiles import SHORT
from chaos.stage import Context


@pytest.fixture
def ctx(kafka: EmbeddedKafka, tmp_path: Path) -> Context:
    return Context(kafka.bootstrap_servers, tmp_path)


def assert_passed(result: Result) -> None:
    assert result.passed, "; ".join(result.failures())


@pytest.mark.slow
def test_killing_a_random_replica_every_few_seconds_loses_nothing(ctx: Context) -> None:
    result = scenarios.kill_replicas(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0
    assert result.duplicates <= result.figures["duplicate_bound"]


@pytest.mark.slow
def test_a_rabbitmq_restart_loses_no_accepted_event_with_a_quorum_queue(ctx: Context) -> None:
    result = scenarios.restart_rabbitmq("quorum")(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0


@pytest.mark.slow
def test_a_rabbitmq_restart_loses_the_classic_queue_backlog_and_the_bridge_recovers(
    ctx: Context,
) -> None:
    result = scenarios.restart_rabbitmq("classic")(SHORT, ctx)
    assert_passed(result)
    # Transient events do not survive a restart in a classic queue: the documented difference.
    assert result.lost > 0


@pytest.mark.slow
def test_a_frozen_kafka_loses_nothing_and_the_bridge_stops_taking_messages(ctx: Context) -> None:
    result = scenarios.freeze_kafka(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0


@pytest.mark.slow
def test_cutting_the_amqp_connection_again_and_again_loses_nothing(ctx: Context) -> None:
    result = scenarios.cut_amqp(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0


@pytest.mark.slow
def test_malformed_input_is_dead_lettered_and_good_events_all_pass(ctx: Context) -> None:
    result = scenarios.bad_input(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0
    assert result.published == SHORT.good_events


@pytest.mark.slow
def test_a_steady_load_grows_neither_memory_nor_descriptors_nor_threads(ctx: Context) -> None:
    result = scenarios.soak(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0


@pytest.mark.slow
def test_each_kind_of_produce_error_on_a_partition_loses_nothing_and_needs_no_restart(
    ctx: Context,
) -> None:
    result = produce_errors(SHORT, ctx)
    assert_passed(result)
    assert result.lost == 0
    assert result.dead_lettered == 1, "only the refused record"
