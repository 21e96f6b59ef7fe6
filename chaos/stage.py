"""One scenario's world: unique names, bridge replicas, readers, samplers, and the clean-up."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import amqp

from celery_kafka_bridge.embedded import free_port
from chaos.measure import Sampler, Tally
from harness.support import BridgeProcess, Names, Rabbit, bridge_env, poll


@dataclass(frozen=True)
class Context:
    """What every scenario gets: the shared Kafka broker and a directory for logs."""

    kafka_bootstrap: str
    workdir: Path


class Stage:
    """Replicas of one scenario, all on the scenario's own exchange, queue and topics."""

    def __init__(self, ctx: Context, key: str, bootstrap: str | None = None, **env: str) -> None:
        self.names = Names()
        self.bootstrap = bootstrap or ctx.kafka_bootstrap
        self.env = env
        self.dir = ctx.workdir / f"{key}-{self.names.suffix}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.replicas: list[BridgeProcess] = []
        self._readers: list[Tally] = []

    def bridge(self, wait: bool = True, **env: str) -> BridgeProcess:
        """Start a replica (with its own /readyz port) and, unless told not to, wait for it."""
        overrides = {"BRIDGE_HTTP_PORT": str(free_port()), **self.env, **env}
        replica = BridgeProcess(
            bridge_env(self.names, self.bootstrap, **overrides),
            self.dir / f"bridge-{len(self.replicas)}.log",
        ).start()
        self.replicas.append(replica)
        return replica.wait_until_consuming() if wait else replica

    def live(self) -> list[BridgeProcess]:
        return [r for r in self.replicas if r.alive()]

    def sampler(self, interval: float) -> Sampler:
        def ports() -> list[int]:
            return [int(r.env["BRIDGE_HTTP_PORT"]) for r in self.live()]

        return Sampler(lambda: [r.pid for r in self.live()], ports, interval)

    def tally(self, dead_letters: bool = False, timeout: float = 3_600.0) -> Tally:
        """A background reader of the events (or dead-letter) topic."""
        topic = self.names.dlq_topic if dead_letters else self.names.topic
        reader = Tally(self.bootstrap, topic, timeout)
        self._readers.append(reader)
        return reader

    def queue_state(self) -> tuple[int, int]:
        """(ready messages, consumers) of the bridge queue, on a fresh connection."""
        rabbit = Rabbit()
        try:
            return rabbit.queue_state(self.names.queue)
        finally:
            rabbit.close()

    def wait_drained(self, timeout: float = 60.0) -> bool:
        """True once the bridge queue holds no ready message."""
        with contextlib.suppress(AssertionError):
            poll(lambda: self.queue_state()[0] == 0, timeout, interval=0.5)
            return True
        return False

    def logs(self) -> str:
        return "".join(r.log() for r in self.replicas)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, *exc: Any) -> None:
        for replica in self.replicas:
            replica.kill()
        for reader in self._readers:
            reader.stop()
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            rabbit = Rabbit()
            rabbit.delete(queues=[self.names.queue], exchanges=[self.names.exchange])
            rabbit.close()
