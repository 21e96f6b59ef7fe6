"""The topics the bridge writes: created with explicit durability settings, then audited.

The bridge creates a missing topic with the configured partitions, replication factor and
settings, and never alters an existing one. The audit reads each topic back (metadata and
DescribeConfigs) and reports every setting that falls short of what the bridge expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import Counter, Gauge

from celery_kafka_bridge.config import ENV_PREFIX, Config
from celery_kafka_bridge.errors import ConfigError, TransientError
from celery_kafka_bridge.kafka.errors import RETRIABLE
from celery_kafka_bridge.tls import kafka_security

log = logging.getLogger(__name__)

TOPIC_CHECK_SECONDS = 2.0
_TOPIC_ALREADY_EXISTS = 36
_ADMIN_TIMEOUT_MS = 10_000

SETTINGS = (
    "partitions",
    "replication_factor",
    "min.insync.replicas",
    "retention.ms",
    "cleanup.policy",
    "max.message.bytes",
)
"""What the audit checks: Kafka config names, and the topic's layout."""


@dataclass(frozen=True, slots=True)
class TopicState:
    """A topic as the cluster describes it."""

    partitions: int
    replication_factor: int
    """Distinct brokers holding the least replicated partition."""
    configs: Mapping[str, str]
    """Its settings as DescribeConfigs reports them (a broker may leave out defaults)."""


@dataclass(frozen=True, slots=True)
class Shortfall:
    """One setting of one topic below what the bridge expects."""

    topic: str
    setting: str
    found: str
    expected: str

    def __str__(self) -> str:
        return f"topic {self.topic} has {self.setting}={self.found}, expected {self.expected}"


@dataclass(frozen=True, slots=True)
class Expectation:
    """What every topic the bridge writes should at least have."""

    partitions: int
    replication_factor: int
    min_insync_replicas: int
    retention_ms: int
    max_message_bytes: int

    @classmethod
    def from_config(cls, config: Config) -> Expectation:
        return cls(
            config.topic_partitions,
            config.topic_replication_factor,
            config.topic_min_insync_replicas,
            config.topic_retention_ms,
            config.max_record_batch_bytes,
        )


def creation_configs(config: Config) -> dict[str, str]:
    """The settings a topic is created with: the durability ones, then BRIDGE_TOPIC_CONFIG's
    (which may raise max.message.bytes or change cleanup.policy; the audit still checks them)."""
    return {
        "cleanup.policy": "delete",
        "max.message.bytes": str(config.max_record_batch_bytes),
        **config.topic_configs,
        "min.insync.replicas": str(config.topic_min_insync_replicas),
        "retention.ms": str(config.topic_retention_ms),
    }


def shortfalls(topic: str, state: TopicState, expected: Expectation) -> list[Shortfall]:
    """Every setting of ``state`` below ``expected``, in `SETTINGS` order. A setting the broker
    does not report is not judged (Kafka reports them all; Tansu only those set)."""
    found: list[Shortfall] = []

    def at_least(setting: str, value: str | int, wanted: int, key: Callable[[int], float]) -> None:
        try:
            short = key(int(value)) < key(wanted)
        except ValueError:
            short = True
        if short:
            found.append(Shortfall(topic, setting, str(value), str(wanted)))

    at_least("partitions", state.partitions, expected.partitions, float)
    at_least("replication_factor", state.replication_factor, expected.replication_factor, float)
    configs = state.configs
    if "min.insync.replicas" in configs:
        at_least(
            "min.insync.replicas",
            configs["min.insync.replicas"],
            expected.min_insync_replicas,
            float,
        )
    if "retention.ms" in configs:
        at_least("retention.ms", configs["retention.ms"], expected.retention_ms, _retention)
    policy = configs.get("cleanup.policy", "delete")
    if policy != "delete":  # compaction keeps only the last record per key
        found.append(Shortfall(topic, "cleanup.policy", policy, "delete"))
    if "max.message.bytes" in configs:
        at_least(
            "max.message.bytes", configs["max.message.bytes"], expected.max_message_bytes, float
        )
    return found


def _retention(ms: int) -> float:
    """-1 keeps records forever: longer than any retention."""
    return float("inf") if ms < 0 else float(ms)


class TopicAudit:
    """The topics' shortfalls over time: one line when one appears or changes and when it is
    gone, the gauge, and ``on_change`` told the reason (None: all as expected)."""

    def __init__(
        self,
        topics: Sequence[str],
        expected: Expectation,
        gauge: Gauge,
        audits: Counter,
        on_change: Callable[[str | None], None] = lambda _reason: None,
    ) -> None:
        self.expected = expected
        self._gauge = gauge
        self._audits = audits
        self._on_change = on_change
        self._short: dict[tuple[str, str], Shortfall] = {}
        for topic in topics:  # every series exported from the start, at 0
            for setting in SETTINGS:
                gauge.labels(topic, setting).set(0)

    @property
    def reason(self) -> str | None:
        """The shortfalls, one clause each; None when there are none."""
        return "; ".join(map(str, self._short.values())) or None

    def record(self, states: Mapping[str, TopicState]) -> None:
        """Judge the topics described; a topic missing from ``states`` keeps its last state
        (it is being created again)."""
        before = dict(self._short)
        for topic, state in states.items():
            for key in [key for key in self._short if key[0] == topic]:
                del self._short[key]
            for shortfall in shortfalls(topic, state, self.expected):
                self._short[(topic, shortfall.setting)] = shortfall
        for key, shortfall in self._short.items():
            if before.get(key) != shortfall:
                log.warning("%s", shortfall, extra={"topic": key[0], "setting": key[1]})
                self._gauge.labels(*key).set(1)
        for key in before.keys() - self._short.keys():
            log.info("topic %s has %s as expected now", *key)
            self._gauge.labels(*key).set(0)
        if before != self._short:
            self._on_change(self.reason)
        self._audits.inc()


class TopicAdmin:
    """Creates and describes ``topics`` on an admin client of its own, kept between calls
    (`close` it): a call cancelled midway, e.g. at shutdown, then leaves no connection behind.
    ``overrides`` are settings some topics are created with on top of `creation_configs` (e.g.
    compaction)."""

    def __init__(
        self,
        config: Config,
        topics: Iterable[str],
        overrides: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._config = config
        self.topics = list(topics)
        self._overrides = overrides or {}
        self._unreadable: dict[str, int] = {}
        self._client: AIOKafkaAdminClient | None = None
        self._connecting = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[AIOKafkaAdminClient]:
        """The client, connected on first use; after a failure the next call connects anew."""
        async with self._connecting:
            if self._client is None:
                config = self._config
                self._client = AIOKafkaAdminClient(
                    bootstrap_servers=config.bootstrap_servers,
                    request_timeout_ms=_ADMIN_TIMEOUT_MS,
                    **kafka_security(config),
                )
                try:
                    await self._client.start()
                except BaseException:
                    await self.close()
                    raise
            client = self._client
        try:
            yield client
        except RETRIABLE:
            await self.close()
            raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def ensure(self, check_brokers: bool = False) -> None:
        """Create the missing topics; raise `ConfigError` if the cluster has fewer brokers than
        the replication factor (checked before creating, and always if ``check_brokers``)."""
        async with self._admin() as admin:
            existing = set(await admin.list_topics())
            missing = [topic for topic in self.topics if topic not in existing]
            if not (missing or check_brokers):
                return
            # Some brokers (Tansu) accept any replication factor and list one broker many
            # times, so count the brokers.
            brokers = len((await admin.describe_cluster())["brokers"])
            factor = self._config.topic_replication_factor
            if brokers < factor:
                raise ConfigError(
                    f"invalid setting {ENV_PREFIX}TOPIC_REPLICATION_FACTOR={factor}: the Kafka "
                    f"cluster has {brokers} broker(s); lower it or add brokers"
                )
            if missing:
                await self._create(admin, missing)

    async def _create(self, admin: AIOKafkaAdminClient, topics: list[str]) -> None:
        config = self._config
        settings = {
            topic: creation_configs(config) | dict(self._overrides.get(topic, {}))
            for topic in topics
        }
        response = await admin.create_topics(
            [
                NewTopic(
                    topic,
                    config.topic_partitions,
                    config.topic_replication_factor,
                    topic_configs=settings[topic],
                )
                for topic in topics
            ]
        )
        for topic, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise TransientError(f"creating topic {topic} failed: {code} {message}")
            if code == 0:
                log.info("created kafka topic %s with %s", topic, settings[topic])

    async def describe(self) -> dict[str, TopicState]:
        """The topics that exist, as the cluster describes them."""
        async with self._admin() as admin:
            # All topics: asking for one by name makes some brokers create it.
            layouts = {
                t["topic"]: t["partitions"]
                for t in await admin.describe_topics()
                if t["topic"] in self.topics and not t["error_code"]
            }
            if not layouts:
                return {}
            resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in layouts]
            responses = await admin.describe_configs(resources)
        resources_found = [r for response in responses for r in response.resources]
        self._report_unreadable({name: code for code, _, _, name, _ in resources_found if code})
        configs = {
            name: {entry[0]: entry[1] for entry in entries if entry[1] is not None}
            for code, _message, _type, name, entries in resources_found
            if not code
        }
        return {
            topic: TopicState(len(partitions), _replication(partitions), configs[topic])
            for topic, partitions in layouts.items()
            if topic in configs
        }

    def _report_unreadable(self, errors: dict[str, int]) -> None:
        """One line when a topic's settings cannot be read (e.g. no DescribeConfigs permission),
        so its settings go unjudged, and not again until that changes."""
        for topic, code in errors.items():
            if self._unreadable.get(topic) != code:
                log.warning(
                    "cannot read the settings of topic %s (Kafka error %d): not audited",
                    topic,
                    code,
                )
        self._unreadable = errors

    async def watch(self) -> None:
        """Forever: recreate the topics if they vanish, e.g. a broker replaced by an empty one.

        Real Kafka refuses records for a missing topic, so they are retried until it is back;
        this puts it back without a restart.
        """
        while True:
            await asyncio.sleep(TOPIC_CHECK_SECONDS)
            try:
                await self.ensure()
            except ConfigError as exc:
                log.error("cannot create the kafka topics: %s", exc)
            except RETRIABLE as exc:
                log.debug("checking the kafka topics failed: %s", exc)

    async def check(self, audit: TopicAudit) -> None:
        """Describe the topics and record in ``audit`` what falls short."""
        audit.record(await self.describe())

    async def audit(self, audit: TopicAudit, period: float) -> None:
        """Forever: `check` the topics every ``period`` seconds."""
        while True:
            await asyncio.sleep(period)
            try:
                await self.check(audit)
            except RETRIABLE as exc:
                log.debug("auditing the kafka topics failed: %s", exc)


def _replication(partitions: list[dict[str, Any]]) -> int:
    return min((len(set(p["replicas"])) for p in partitions), default=0)
