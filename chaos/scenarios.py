"""The scenarios: each runs the bridge under one kind of fault and returns a `Result`.

Pauses here (``time.sleep``) pace the fault schedule; they never stand in for a condition.
"""

from __future__ import annotations

import random
import signal
import statistics
import time
from collections.abc import Callable

import psutil

from celery_kafka_bridge.embedded import EmbeddedKafka
from chaos.badinput import BAD_MESSAGES, expected_reasons
from chaos.faults import TcpProxy, close_connections_from, rabbitmqctl
from chaos.load import ConfirmedPublisher, LoadLog, background, celery_load
from chaos.measure import Result, Sampler, Tally, list_topics
from chaos.produce_errors import produce_errors
from chaos.profiles import Profile
from chaos.stage import Context, Stage
from harness.support import BridgeProcess

Scenario = Callable[[Profile, Context], Result]

KILL_PREFETCH = 250
"""Prefetch of the replicas in scenario 1: the bound on duplicates per kill, in messages."""
EVENTS_PER_MESSAGE = 4
"""The most events one message of the load carries (Celery's dispatcher buffers up to 4)."""
SETTLE_SECONDS = 120.0
"""How long Kafka is read for the last events after the load ended."""
RECONNECT_SECONDS = 5.0
"""A cut AMQP connection is back within this long: a session that worked reconnects at once."""
MAX_RSS_MIB = 250.0


def _settle(result: Result, load: LoadLog, tally: Tally, must: set[bytes] | None = None) -> None:
    tally.expect(load.task_ids() if must is None else must, within=SETTLE_SECONDS)
    tally.join()
    result.count(load, tally, must)


def _wait_for_topics(bootstrap: str, topics: set[str], timeout: float) -> float | None:
    """When ``topics`` all exist on the broker (monotonic clock), or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if topics <= set(list_topics(bootstrap)):
            return time.monotonic()
        time.sleep(0.2)
    return None


def kill_replicas(profile: Profile, ctx: Context) -> Result:
    """1. Three replicas; a random one SIGKILLed and restarted every few seconds."""
    result = Result("1", "3 replicas, one SIGKILLed every few seconds")
    rng = random.Random(1)
    started = time.monotonic()
    with Stage(ctx, "kill", BRIDGE_PREFETCH=str(KILL_PREFETCH)) as stage:
        for _ in range(3):
            stage.bridge()
        load, tally, sampler = LoadLog(), stage.tally(), stage.sampler(0.5)
        publisher = celery_load(
            stage.names.exchange,
            load,
            int(profile.kill_seconds * profile.kill_rate),
            profile.kill_rate,
        )
        kills: list[float] = []
        busiest = BusiestReplica()
        busiest.pid(stage.live())  # the first look only records where CPU time stands
        active_kills = 0
        while True:
            publisher.join(profile.kill_interval)
            if not publisher.is_alive():
                break
            victim = rng.choice(stage.live())
            active_kills += victim.pid == busiest.pid(stage.live())
            victim.kill()
            kills.append(time.monotonic())
            stage.bridge(wait=False)
        result.peak_rss_mib = sampler.stop().peak_rss_mib
        _settle(result, load, tally)
        recoveries = [r for r in (tally.recovery(load, k) for k in kills) if r is not None]
        result.recovery_s = max(recoveries, default=None)
        bound = len(kills) * KILL_PREFETCH * EVENTS_PER_MESSAGE
        result.check("duplicates within prefetch per kill", result.duplicates <= bound, bound)
        result.check(
            "at least one kill per 10 s", len(kills) >= profile.kill_seconds / 10, len(kills)
        )
        result.check("bridge queue drained", stage.wait_drained())
        result.figures.update(
            kills=len(kills),
            kills_of_the_active_replica=active_kills,
            prefetch=KILL_PREFETCH,
            duplicate_bound=bound,
            replicas_started=len(stage.replicas),
            recoveries_s=recoveries,
        )
    result.duration_s = round(time.monotonic() - started, 1)
    return result


class BusiestReplica:
    """The replica that used the most CPU since the last look: in ordered topology, the active
    one (standbys idle). A heuristic, for the report only."""

    def __init__(self) -> None:
        self._cpu: dict[int, float] = {}

    def pid(self, replicas: list[BridgeProcess]) -> int | None:
        used: dict[int, float] = {}
        for replica in replicas:
            try:
                times = psutil.Process(replica.pid).cpu_times()
            except psutil.Error:
                continue
            total = times.user + times.system
            if replica.pid in self._cpu:  # a replica still starting up burns CPU on imports
                used[replica.pid] = total - self._cpu[replica.pid]
            self._cpu[replica.pid] = total
        return max(used, key=used.__getitem__) if used else None


def restart_rabbitmq(queue_type: str) -> Scenario:
    """2. RabbitMQ stopped and started (stop_app/start_app) with a backlog in the bridge queue."""

    def scenario(profile: Profile, ctx: Context) -> Result:
        result = Result(
            "2" if queue_type == "quorum" else "2c",
            f"RabbitMQ restarted, {queue_type} bridge queue",
            loss_expected=queue_type == "classic",
        )
        started = time.monotonic()
        with Stage(ctx, f"restart-{queue_type}", BRIDGE_QUEUE_TYPE=queue_type) as stage:
            bridge = stage.bridge()
            load, tally, sampler = LoadLog(), stage.tally(), stage.sampler(0.5)
            publisher = ConfirmedPublisher(stage.names.exchange, load, per_message=10)
            events = int(profile.restart_seconds * profile.restart_rate)
            thread = background(publisher.run, events, profile.restart_rate)
            time.sleep(profile.restart_seconds / 3)
            # A lagging bridge: RabbitMQ holds a backlog of accepted events when it stops.
            bridge.signal(signal.SIGSTOP)
            time.sleep(1.0)
            down = time.monotonic()
            try:
                rabbitmqctl("stop_app")
            finally:
                rabbitmqctl("start_app")
                up = time.monotonic()
                bridge.signal(signal.SIGCONT)
            thread.join()
            result.peak_rss_mib = sampler.stop().peak_rss_mib
            _settle(result, load, tally)
            result.recovery_s = tally.recovery(load, up)
            lost_after = len(load.task_ids(since=up) - tally.first_seen.keys())
            result.check("bridge still running, never restarted", bridge.alive())
            result.check("bridge reconnected", bridge.log().count("amqp consuming") >= 2)
            result.check("nothing accepted after the restart lost", lost_after == 0, lost_after)
            result.figures.update(
                downtime_s=round(up - down, 1),
                refused_while_down=load.refused,
                lost_of_accepted_before_stop=len(
                    load.task_ids() - load.task_ids(since=down) - tally.first_seen.keys()
                ),
            )
        result.duration_s = round(time.monotonic() - started, 1)
        return result

    return scenario


def freeze_kafka(profile: Profile, ctx: Context) -> Result:
    """3. The Kafka broker frozen (SIGSTOP) under load."""
    result = Result("3", f"Kafka frozen (SIGSTOP) {profile.freeze_seconds:.0f} s")
    started = time.monotonic()
    with (
        EmbeddedKafka(log_path=ctx.workdir / "freeze-tansu.log") as broker,
        Stage(
            ctx, "freeze", broker.bootstrap_servers, BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="2000"
        ) as stage,
    ):
        bridge = stage.bridge()
        load, tally, sampler = LoadLog(), stage.tally(), stage.sampler(0.25)
        lead = 3.0
        events = int((profile.freeze_seconds + 2 * lead) * profile.freeze_rate)
        publisher = celery_load(stage.names.exchange, load, events, profile.freeze_rate)
        time.sleep(lead)
        assert broker.process is not None
        frozen = psutil.Process(broker.process.pid)
        frozen.suspend()
        try:
            time.sleep(profile.freeze_seconds)
            backlog = stage.queue_state()[0]
        finally:
            frozen.resume()
            thawed = time.monotonic()
        publisher.join()
        sampler.stop()
        _settle(result, load, tally)
        result.peak_rss_mib = sampler.peak_rss_mib
        result.recovery_s = tally.recovery(load, thawed)
        readiness = sampler.readiness_story()
        result.check("bridge still running", bridge.alive())
        result.check("bridge stopped taking messages (backlog in RabbitMQ)", backlog > 0, backlog)
        result.check(
            f"peak RSS under {MAX_RSS_MIB:.0f} MiB", (result.peak_rss_mib or 0) < MAX_RSS_MIB
        )
        result.check("readiness false then true", "false>true" in readiness, readiness)
        result.figures.update(readiness=readiness, backlog_at_thaw=backlog)
    result.duration_s = round(time.monotonic() - started, 1)
    return result


def swap_kafka(profile: Profile, ctx: Context) -> Result:
    """4. The Kafka broker killed and a new, empty one started on the same address."""
    result = Result("4", "Kafka killed, new empty broker on the same port")
    started = time.monotonic()
    old = EmbeddedKafka(log_path=ctx.workdir / "swap-old-tansu.log").start()
    new = EmbeddedKafka(port=old.port, log_path=ctx.workdir / "swap-new-tansu.log")
    try:
        with Stage(
            ctx, "swap", old.bootstrap_servers, BRIDGE_KAFKA_REQUEST_TIMEOUT_MS="2000"
        ) as stage:
            bridge = stage.bridge()
            load, old_tally, sampler = LoadLog(), stage.tally(), stage.sampler(0.5)
            events = int(profile.kafka_swap_seconds * profile.kafka_swap_rate)
            publisher = celery_load(stage.names.exchange, load, events, profile.kafka_swap_rate)
            time.sleep(profile.kafka_swap_seconds / 3)
            assert old.process is not None
            old.process.kill()  # its reader reads to the end: whatever it confirmed, it served
            killed = time.monotonic()
            old_tally.stop()
            time.sleep(2.0)
            new.start()
            replaced = time.monotonic()
            wanted = {stage.names.topic, stage.names.dlq_topic}
            recreated = _wait_for_topics(new.bootstrap_servers, wanted, timeout=30)
            tally = stage.tally(timeout=profile.kafka_swap_seconds + 60)
            publisher.join()
            result.peak_rss_mib = sampler.stop().peak_rss_mib
            # Tansu acknowledges records for a topic it does not have (real Kafka refuses
            # them, and the bridge retries), so what the bridge sent between the swap and the
            # topics' return is gone with no error: counted, not held against the bridge.
            after = load.task_ids(since=recreated) if recreated else load.task_ids(since=killed)
            _settle(result, load, tally, must=after)
            gone = load.task_ids() - tally.first_seen.keys()
            window = load.task_ids(since=killed) - after
            result.recovery_s = tally.recovery(load, replaced)
            result.check("bridge still running, never restarted", bridge.alive())
            result.check("bridge queue drained", stage.wait_drained(30))
            present = list_topics(new.bootstrap_servers)
            result.check("topics recreated on the new broker", recreated is not None, present)
            result.figures.update(
                topics_recreated_after_s=round(recreated - replaced, 2) if recreated else None,
                reader_error=tally.error,
                gone_with_old_broker=len(gone),
                gone_and_seen_on_old_broker=len(gone & old_tally.join(10).first_seen.keys()),
                accepted_after_kill=len(load.task_ids(since=killed)),
                lost_to_missing_topic_window=len(window - tally.first_seen.keys()),
            )
    finally:
        new.stop()
        old.stop()
    result.duration_s = round(time.monotonic() - started, 1)
    return result


def cut_amqp(profile: Profile, ctx: Context) -> Result:
    """5. The bridge's AMQP connection cut again and again (TCP reset, or closed by RabbitMQ)."""
    result = Result("5", f"AMQP connection cut {profile.cuts} times")
    started = time.monotonic()
    proxy = TcpProxy(5672)
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}//"
    try:
        with Stage(ctx, "cut", BRIDGE_AMQP_URL=url) as stage:
            bridge = stage.bridge()
            load, tally, sampler = LoadLog(), stage.tally(), stage.sampler(0.5)
            events = int((profile.cuts + 1) * profile.cut_interval * profile.cut_rate)
            publisher = celery_load(stage.names.exchange, load, events, profile.cut_rate)
            cuts: list[float] = []
            hits = 0
            for n in range(profile.cuts):
                time.sleep(profile.cut_interval)
                if n % 2:
                    hits += close_connections_from(proxy.upstream_ports(), "chaos: cut")
                else:
                    hits += proxy.cut()
                cuts.append(time.monotonic())
            publisher.join()
            result.peak_rss_mib = sampler.stop().peak_rss_mib
            _settle(result, load, tally)
            recoveries = [r for r in (tally.recovery(load, c) for c in cuts) if r is not None]
            result.recovery_s = max(recoveries, default=None)
            result.check("bridge still running, never restarted", bridge.alive())
            result.check("every cut hit a connection", hits >= profile.cuts, hits)
            result.check(
                f"consuming again within {RECONNECT_SECONDS:.0f} s of every cut",
                result.recovery_s is not None and result.recovery_s < RECONNECT_SECONDS,
                result.recovery_s,
            )
            result.check("bridge queue drained", stage.wait_drained(30))
            result.figures.update(
                cuts=len(cuts),
                connections_cut=hits,
                reconnects=bridge.log().count("amqp consuming") - 1,
                recoveries_s=recoveries,
            )
    finally:
        proxy.close()
    result.duration_s = round(time.monotonic() - started, 1)
    return result


def bad_input(profile: Profile, ctx: Context) -> Result:
    """6. Malformed messages of every kind interleaved with good events."""
    result = Result("6", f"{profile.bad_messages} malformed + {profile.good_events} good")
    started = time.monotonic()
    with Stage(ctx, "bad", BRIDGE_MAX_MESSAGE_BYTES="65536") as stage:
        bridge = stage.bridge()
        load, tally, dead = LoadLog(), stage.tally(), stage.tally(dead_letters=True)
        sampler = stage.sampler(0.5)
        publisher = ConfirmedPublisher(stage.names.exchange, load)
        sent_bad: list[int] = []
        for i in range(max(profile.bad_messages, profile.good_events)):
            if i < profile.good_events:
                publisher.publish_batch()
            if i < profile.bad_messages:
                kind = i % len(BAD_MESSAGES)
                body, content_type, _ = BAD_MESSAGES[kind]
                if publisher.send(body, content_type, "task.bad"):
                    sent_bad.append(kind)
        publisher.close()
        wanted = expected_reasons(sent_bad)
        dead.expect_dead_letters(sum(wanted.values()), within=SETTLE_SECONDS)
        _settle(result, load, tally)
        dead.join()
        result.dead_lettered = sum(dead.reasons.values())
        result.peak_rss_mib = sampler.stop().peak_rss_mib
        result.check(
            "every bad message dead-lettered with its reason",
            dead.reasons == wanted,
            dict(wanted - dead.reasons) or "",
        )
        result.check("bridge never restarted", bridge.alive() and len(stage.replicas) == 1)
        result.check("bridge queue drained", stage.wait_drained(30))
        result.figures.update(
            bad_messages=len(sent_bad), refused=load.refused, reasons=dict(dead.reasons)
        )
    result.duration_s = round(time.monotonic() - started, 1)
    return result


def soak(profile: Profile, ctx: Context) -> Result:
    """7. A steady rate for a long time: memory, file descriptors and threads must not grow."""
    result = Result("7", f"soak {profile.soak_seconds:.0f} s at {profile.soak_rate:.0f} ev/s")
    started = time.monotonic()
    with Stage(ctx, "soak") as stage:
        bridge = stage.bridge()
        load, tally, sampler = LoadLog(), stage.tally(), stage.sampler(1.0)
        events = int(profile.soak_seconds * profile.soak_rate)
        loading = time.monotonic()
        celery_load(stage.names.exchange, load, events, profile.soak_rate).join()
        elapsed = time.monotonic() - loading
        sampler.stop()
        _settle(result, load, tally)
        result.peak_rss_mib = sampler.peak_rss_mib
        _judge_growth(result, sampler, loading + profile.soak_warmup)
        result.check("bridge still running", bridge.alive())
        result.figures["achieved_rate"] = round(len(load.accepted) / elapsed)
    result.duration_s = round(time.monotonic() - started, 1)
    return result


_TASK_SLACK = 24
"""Event-loop tasks that come and go with the load: a batch submitter per busy partition (12 of
the events topic, 12 of the dead-letter topic by default). A leak grows without bound."""


def _judge_growth(result: Result, sampler: Sampler, warm_at: float) -> None:
    """Compare the end of the run with the end of warm-up (medians of a few samples, so a
    short-lived socket, such as the topic check's admin client every 2 s, is not a leak)."""
    samples = [s for s in sampler.samples if s.at >= warm_at - 3]
    if len(samples) < 10:
        result.check("enough samples after warm-up", False, len(samples))
        return
    head, tail = samples[:5], samples[-5:]

    def median(values: list[int]) -> float:
        return float(statistics.median(values))

    rss_warm, rss_end = median([s.rss for s in head]), median([s.rss for s in tail])
    growth = (rss_end - rss_warm) / rss_warm
    fds = (median([s.fds for s in head]), median([s.fds for s in tail]))
    threads = (median([s.threads for s in head]), median([s.threads for s in tail]))
    tasks = (median([s.tasks for s in head]), median([s.tasks for s in tail]))
    result.check("RSS growth under 10 % after warm-up", growth < 0.10, f"{growth:+.1%}")
    result.check("no growth in open file descriptors", fds[1] <= fds[0], fds)
    result.check("no growth in threads", threads[1] <= threads[0], threads)
    result.check("no growth in event-loop tasks", 0 < tasks[1] <= tasks[0] + _TASK_SLACK, tasks)
    result.figures.update(
        rss_warm_mib=round(rss_warm / 2**20, 1),
        rss_end_mib=round(rss_end / 2**20, 1),
        rss_growth_pct=round(100 * growth, 1),
        fds_warm_end=fds,
        threads_warm_end=threads,
        loop_tasks_warm_end=tasks,
    )


SCENARIOS: dict[str, list[Scenario]] = {
    "1": [kill_replicas],
    "2": [restart_rabbitmq("quorum"), restart_rabbitmq("classic")],
    "3": [freeze_kafka],
    "4": [swap_kafka],
    "5": [cut_amqp],
    "6": [bad_input],
    "7": [soak],
    "8": [produce_errors],
}
