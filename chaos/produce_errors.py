"""8. One partition of the events topic answers with each kind of produce error in turn.

The errors come from `harness.kafka_faults`, a Kafka-protocol proxy between the bridge and Tansu
(Tansu returns none of them); it also hands out producer ids, so the bridge runs idempotent, as
in production. Pauses (``time.sleep``) pace the fault schedule.
"""

from __future__ import annotations

import time

from chaos.load import LoadLog, celery_load
from chaos.measure import Result
from chaos.profiles import Profile
from chaos.stage import Context, Stage
from harness.kafka_faults import Fault, KafkaFaults, faulty_kafka

NOT_LEADER, TOPIC_AUTHORIZATION_FAILED, OUT_OF_ORDER_SEQUENCE, MESSAGE_TOO_LARGE = 6, 29, 45, 10
SETTLE_SECONDS = 120.0
PHASES = 5  # a quiet lead, then transient, denied, lost state and a refused record


def produce_errors(profile: Profile, ctx: Context) -> Result:
    """8. One partition refuses writes: transient, not authorized, lost state, a refused record."""
    result = Result("8", "one partition answers each kind of produce error in turn")
    started = time.monotonic()
    phase = profile.produce_phase_seconds
    with (
        faulty_kafka(ctx.workdir / "produce-tansu.log") as (_broker, proxy),
        Stage(
            ctx,
            "produce",
            proxy.bootstrap_servers,
            BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="true",
            BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="1000",
        ) as stage,
    ):
        proxy.producer_ids = True
        bridge = stage.bridge()
        pid = bridge.pid
        load, tally, dead = LoadLog(), stage.tally(), stage.tally(dead_letters=True)
        sampler = stage.sampler(0.25)
        events = int((PHASES + 1) * phase * profile.produce_rate)
        publisher = celery_load(stage.names.exchange, load, events, profile.produce_rate)
        poison = _run_phases(proxy, stage.names.topic, load, phase, profile.produce_rate)
        publisher.join()
        sampler.stop()
        must = load.task_ids() - {poison}
        dead.expect_dead_letters(1, within=SETTLE_SECONDS)
        tally.expect(must, within=SETTLE_SECONDS)
        tally.join()
        dead.join()
        result.count(load, tally, must)
        result.dead_lettered = sum(dead.reasons.values())
        result.peak_rss_mib = sampler.peak_rss_mib
        resets = bridge.metric("celery_kafka_bridge_kafka_producer_resets_total")
        readiness = sampler.readiness_story()
        injected = {code: proxy.count(code) for code in _CODES}
        result.check("bridge still running, never restarted", bridge.alive() and bridge.pid == pid)
        result.check("every kind of error injected", all(injected.values()), injected)
        result.check("producer replaced", resets >= 1, resets)
        result.check("unready while denied, ready after", "false>true" in readiness, readiness)
        result.check(
            "the refused record alone dead-lettered (kafka_rejected)",
            dict(dead.reasons) == {"kafka_rejected": 1},
            dict(dead.reasons),
        )
        result.check("bridge queue drained", stage.wait_drained(30))
        result.figures.update(injected=injected, producer_resets=resets, readiness=readiness)
    result.duration_s = round(time.monotonic() - started, 1)
    return result


_CODES = (NOT_LEADER, TOPIC_AUTHORIZATION_FAILED, OUT_OF_ORDER_SEQUENCE, MESSAGE_TOO_LARGE)


def _run_phases(proxy: KafkaFaults, topic: str, load: LoadLog, phase: float, rate: float) -> bytes:
    """The fault schedule on partition 0; returns the task id of the record refused for good."""
    partition_0 = frozenset({0})
    time.sleep(phase)
    for code in (NOT_LEADER, TOPIC_AUTHORIZATION_FAILED):
        fault = proxy.add(Fault(topic, code, partitions=partition_0))
        time.sleep(phase)
        proxy.remove(fault)
    proxy.add(Fault(topic, OUT_OF_ORDER_SEQUENCE, partitions=partition_0, times=1))
    time.sleep(phase)
    # An event published half a phase from now: its record is refused wherever it lands.
    index = max(load.accepted, default=0) + int(rate * phase / 2)
    poison = load.task_id(index)
    proxy.add(Fault(topic, MESSAGE_TOO_LARGE, marker=poison + b'"'))
    time.sleep(phase)
    return poison
