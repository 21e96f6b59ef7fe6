"""Settings: parsed once from ``BRIDGE_*`` variables and CLI flags into a frozen object."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson
from pydantic import (
    AliasChoices,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.logs import mask_credentials
from celery_kafka_bridge.redis.options import TransportOptions

ENV_PREFIX = "BRIDGE_"
THIRTY_DAYS_MS = 30 * 24 * 3600 * 1000
RECORD_HEADROOM_BYTES = 65_536
"""Room for the key and headers above the largest body the bridge accepts."""
OWN_TOPIC_SETTINGS = {
    "min.insync.replicas": "topic_min_insync_replicas",
    "retention.ms": "topic_retention_ms",
}
"""Topic settings with a `Config` field of their own, so BRIDGE_TOPIC_CONFIG may not set them."""

QueueType = Literal["quorum", "classic"]
Overflow = Literal["drop-head", "reject-publish", "reject-publish-dlx"]
Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
TopologyName = Literal["ordered", "competing", "sharded"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogFormat = Literal["auto", "json", "text"]
CloudEventsMode = Literal["off", "binary"]
BrokerKind = Literal["amqp", "redis"]

_AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}
_REDIS_SCHEMES = {"redis", "rediss"}
ALIASES = {"broker_url": ("amqp_url",)}
"""Older names a setting is also read from (variable, flag, keyword)."""
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")


class Config(BaseSettings):
    """Every setting of the bridge; each is also a ``BRIDGE_<NAME>`` variable and a CLI flag."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_default=True,
        populate_by_name=True,
    )

    broker_url: str = Field(
        "amqp://guest:guest@localhost:5672//",
        validation_alias=AliasChoices(f"{ENV_PREFIX}BROKER_URL", f"{ENV_PREFIX}AMQP_URL"),
        description="Broker URL the workers publish to: amqp(s):// for RabbitMQ, redis(s):// "
        "for Redis (also read from BRIDGE_AMQP_URL).",
    )
    kafka_bootstrap_servers: str = Field(
        "localhost:9092", description="Comma-separated Kafka brokers (host:port)."
    )
    topic: str = Field("celery.events", description="Kafka topic for the events.")
    dlq_topic: str = Field(
        "celery.events.dlq", description="Kafka topic for messages that are not valid events."
    )
    event_exchange: str = Field(
        "celeryev", description="Celery's event exchange (the app's event_exchange setting)."
    )
    queue_prefix: str = Field(
        "celeryev", description="Prefix of the bridge queue (the app's event_queue_prefix)."
    )
    node_id: str = Field(
        "kafka-bridge",
        description="Shared name of the bridge queue: <queue-prefix>.<node-id>; replicas share it.",
    )
    topology: TopologyName = Field(
        "ordered",
        description="How replicas share the queue: ordered (one active, the rest hot standbys; "
        "per-task order kept), competing (round-robin; order best effort) or sharded (events "
        "hashed by worker into shards, each with one active replica; needs the RabbitMQ plugin "
        "rabbitmq_consistent_hash_exchange).",
    )
    shards: int = Field(
        4, ge=1, description="Shard queues of the sharded topology (a multiple of the replicas)."
    )
    queue_type: QueueType = Field(
        "quorum",
        description="quorum keeps transient events across a RabbitMQ restart; classic not.",
    )
    queue_max_length: int | None = Field(
        None,
        ge=1,
        description="Bound the queue to this many messages (x-max-length); off if unset.",
    )
    queue_overflow: Overflow = Field(
        "reject-publish", description="What RabbitMQ does when the length bound is reached."
    )
    delivery_limit: int | None = Field(
        None,
        ge=1,
        description="Deliveries before RabbitMQ drops or dead-letters a message; unset: unlimited.",
    )
    dead_letter_exchange: str | None = Field(
        None, description="AMQP exchange for messages past the delivery limit or length bound."
    )
    prefetch: int = Field(
        1000,
        ge=1,
        le=65535,
        description="Unacked AMQP messages in flight per consumer (one per queue consumed).",
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Larger AMQP bodies are dead-lettered (truncated to this size).",
    )
    kafka_enable_idempotence: bool = Field(
        True, description="Idempotent Kafka producer (keep on unless the broker cannot do it)."
    )
    kafka_compression: Compression = Field("none", description="Kafka record compression.")
    kafka_linger_ms: int = Field(
        0,
        ge=0,
        description="Extra wait to fill a batch; batches also fill while the previous one of "
        "their partition is in flight.",
    )
    kafka_batch_bytes: int = Field(
        262_144, ge=1024, description="Largest Kafka record batch per partition, in bytes."
    )
    kafka_request_timeout_ms: int = Field(
        30_000, ge=1000, description="Kafka request timeout; failed sends are retried after it."
    )
    topic_partitions: int = Field(
        12, ge=1, description="Partitions of topics the bridge creates (existing ones untouched)."
    )
    topic_replication_factor: int = Field(
        3,
        ge=1,
        description="Replication factor of topics the bridge creates; more than the cluster's "
        "brokers stops the bridge.",
    )
    topic_min_insync_replicas: int = Field(
        2,
        ge=1,
        description="min.insync.replicas of topics the bridge creates: replicas that must have a "
        "record before Kafka confirms it (acks=all).",
    )
    topic_retention_ms: int = Field(
        THIRTY_DAYS_MS,
        ge=-1,
        description="retention.ms of topics the bridge creates (default 30 days); -1 keeps "
        "records forever.",
    )
    topic_config: str = Field(
        "",
        description="Further settings of topics the bridge creates, key=value,... "
        "(e.g. segment.ms=86400000,compression.type=producer).",
    )
    topic_audit_seconds: float = Field(
        300.0, gt=0, description="Period of the audit of the topics' durability settings."
    )
    require_durable_topics: bool = Field(
        False,
        description="While a topic falls short of the expected settings: unready, taking no "
        "messages (RabbitMQ buffers them) until it is fixed.",
    )
    shutdown_grace_seconds: float = Field(
        10.0, gt=0, description="On SIGTERM, how long to wait for Kafka before exiting."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level."
    )
    log_format: LogFormat = Field(
        "auto", description="json, text, or auto: text on a terminal, JSON lines otherwise."
    )
    http_port: int = Field(
        9808, ge=0, le=65535, description="Port of /livez, /readyz and /metrics; 0 turns it off."
    )
    kafka_security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="How the Kafka connection is secured."
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        "PLAIN", description="SASL mechanism for SASL_PLAINTEXT and SASL_SSL."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: FilePath | None = Field(
        None, description="CA bundle to verify the Kafka brokers; system CAs if unset."
    )
    kafka_ssl_certfile: FilePath | None = Field(
        None, description="Client certificate (mutual TLS)."
    )
    kafka_ssl_keyfile: FilePath | None = Field(None, description="Key of the client certificate.")
    amqp_ssl_cafile: FilePath | None = Field(
        None, description="CA bundle to verify RabbitMQ (amqps://); system CAs if unset."
    )
    amqp_ssl_certfile: FilePath | None = Field(None, description="Client certificate for RabbitMQ.")
    amqp_ssl_keyfile: FilePath | None = Field(
        None, description="Key of the RabbitMQ client certificate."
    )
    enable_events_on_start: bool = Field(
        False,
        description="At start, tell every worker to send task events (like celery control "
        "enable_events) and a heartbeat.",
    )
    control_exchange: str = Field(
        "celery", description="Celery's control exchange (the app's control_exchange setting)."
    )
    cloudevents: CloudEventsMode = Field(
        "off",
        description="binary: also give every event record the CloudEvents Kafka binding's "
        "binary-mode headers (ce_specversion, ce_id, ce_source, ce_type, ce_time, ce_subject, "
        "content-type); the value stays the event.",
    )
    rules_file: FilePath | None = Field(
        None,
        description="YAML file of shaping rules (drop, mask, truncate or hash fields; drop or "
        "route events); unset: every event as sent.",
    )
    silent_task_events_seconds: float = Field(
        300.0,
        gt=0,
        description="Warn when workers work but send no task event for this long.",
    )

    broker_transport_options: str = Field(
        "{}",
        description="Redis only: the workers' broker_transport_options as JSON; fanout_prefix, "
        "fanout_patterns and global_keyprefix name the channels events are published on.",
    )
    sources_file: FilePath | None = Field(
        None,
        description="YAML file listing several sources (name, broker_url, and optionally "
        "node_id, topology, topic), each consumed on its own; replaces BRIDGE_BROKER_URL.",
    )
    redis_claim_seconds: float = Field(
        5.0,
        gt=0,
        description="Redis only: how long a replica's claim on an event (and its lease on "
        "claiming) lasts before the other replicas write it themselves (longer than a Kafka "
        "write takes).",
    )
    tasks_topic: str = Field(
        "celery.tasks", description="materialize: compacted topic of task states (key: uuid)."
    )
    workers_topic: str = Field(
        "celery.workers",
        description="materialize: compacted topic of worker states (key: hostname).",
    )
    derived_topic: str = Field(
        "celery.derived",
        description="materialize: topic of derived events (task-lost, task-stuck, worker-lost, "
        "events-missing).",
    )
    offsets_topic: str = Field(
        "celery.materialize.offsets",
        description="materialize: compacted topic of its input positions (key: "
        "topic/slice/partition).",
    )
    tombstone_after_seconds: float = Field(
        86_400.0,
        gt=0,
        description="materialize: delete a task from the tasks topic this long after it finished.",
    )
    stuck_after: str = Field(
        "*=3600",
        description="materialize: task-stuck thresholds, pattern=seconds[,pattern=seconds...] "
        "matched against the task name in order (shell patterns).",
    )
    completeness_grace_seconds: float = Field(
        5.0,
        gt=0,
        description="materialize: wait this long after a heartbeat for the task events it "
        "counted before comparing the two.",
    )
    max_tasks: int = Field(
        1_000_000, ge=1, description="materialize: tasks kept in memory (least recent dropped)."
    )
    materialize_slices: int = Field(
        1,
        ge=1,
        le=64,
        description="materialize: how many replicas share the work, each holding one slice "
        "(the tasks of every N-th partition of the events topic; slice 0 also the workers).",
    )

    @field_validator(
        "topic", "dlq_topic", "tasks_topic", "workers_topic", "derived_topic", "offsets_topic"
    )
    @classmethod
    def _valid_topic(cls, value: str) -> str:
        if not TOPIC_NAME.fullmatch(value):
            raise ValueError("a Kafka topic name is 1-249 of [A-Za-z0-9._-]")
        return value

    @field_validator("stuck_after")
    @classmethod
    def _valid_stuck_after(cls, value: str) -> str:
        stuck_thresholds(value)
        return value

    @property
    def stuck_thresholds(self) -> list[tuple[str, float]]:
        return stuck_thresholds(self.stuck_after)

    @field_validator("topic_retention_ms")
    @classmethod
    def _valid_retention(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 would delete records at once; -1 keeps them forever")
        return value

    @field_validator("topic_config")
    @classmethod
    def _valid_topic_config(cls, value: str) -> str:
        for key in parse_topic_config(value):
            if key in OWN_TOPIC_SETTINGS:
                own = f"{ENV_PREFIX}{OWN_TOPIC_SETTINGS[key].upper()}"
                raise ValueError(f"{key} has a setting of its own: {own}")
        return value

    @field_validator("broker_url")
    @classmethod
    def _valid_broker_url(cls, value: str) -> str:
        url = urlsplit(value)
        if url.scheme not in _AMQP_SCHEMES | _REDIS_SCHEMES:
            raise ValueError("must be an amqp://, amqps://, redis:// or rediss:// URL")
        url.port  # noqa: B018 - raises ValueError for a port that is not a number in range
        return value

    @field_validator("broker_transport_options")
    @classmethod
    def _valid_transport_options(cls, value: str) -> str:
        try:
            TransportOptions.model_validate(orjson.loads(value))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from exc
        return value

    @property
    def amqp_url(self) -> str:
        """The broker URL, under the name the AMQP side uses."""
        return self.broker_url

    @property
    def broker_kind(self) -> BrokerKind:
        """Which source reads the broker: RabbitMQ's queue or Redis pub/sub."""
        return "redis" if urlsplit(self.broker_url).scheme in _REDIS_SCHEMES else "amqp"

    @property
    def transport_options(self) -> TransportOptions:
        return TransportOptions.model_validate(orjson.loads(self.broker_transport_options))

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _valid_servers(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server.strip()!r} is not host:port")
        return value

    @property
    def queue_name(self) -> str:
        """The shared bridge queue, named like Celery's receiver queues.

        Each topology has its own queue, so switching never meets a queue declared with other
        arguments, and the old queue keeps its events until it is drained.
        """
        base = self._queue_base
        return base if self.topology == "ordered" else f"{base}.{self.topology}"

    @property
    def shard_queues(self) -> list[str]:
        """The shard queues of the sharded topology, in shard order."""
        return [self.shard_queue(i) for i in range(self.shards)]

    def shard_queue(self, index: int) -> str:
        """Shard queue ``index`` of the sharded topology (there may be leftovers past K)."""
        return f"{self._queue_base}.shard-{index}"

    @property
    def replicas_queue(self) -> str:
        """Consumed by every sharded replica and fed by nothing: its consumers are the replicas.
        Durable (RabbitMQ 4.3 refuses transient non-exclusive queues), under a name no transient
        queue of an older bridge has, so no declaration meets one with other arguments."""
        return f"{self._queue_base}.sharded-members"

    @property
    def retiring_lock(self) -> str:
        """The exclusive queue whose holder retires the other topologies' leftovers."""
        return f"{self._queue_base}.retiring.{self.topology}"

    @property
    def _queue_base(self) -> str:
        return f"{self.queue_prefix}.{self.node_id}"

    @property
    def event_queues(self) -> list[str]:
        """The queues this topology takes events from."""
        return self.shard_queues if self.topology == "sharded" else [self.queue_name]

    @property
    def shard_exchange(self) -> str:
        """The consistent-hash exchange of the sharded topology, fed by the event exchange."""
        return f"{self.event_exchange}.{self.node_id}.sharded"

    @property
    def topic_configs(self) -> dict[str, str]:
        """`topic_config` as a dict."""
        return parse_topic_config(self.topic_config)

    @property
    def max_request_bytes(self) -> int:
        """The largest record the producer may send: the largest body, its key and headers."""
        return self.max_message_bytes + RECORD_HEADROOM_BYTES

    @property
    def max_record_batch_bytes(self) -> int:
        """The largest record batch the bridge may write, which a topic's max.message.bytes
        must allow: a full batch, or one record larger than a batch alone."""
        return max(self.kafka_batch_bytes, self.max_request_bytes)

    @property
    def bootstrap_servers(self) -> list[str]:
        return split_servers(self.kafka_bootstrap_servers)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        p = ENV_PREFIX
        if self.delivery_limit is not None and self.queue_type != "quorum":
            raise ValueError(f"{p}DELIVERY_LIMIT needs {p}QUEUE_TYPE=quorum")
        amqp_tls = (self.amqp_ssl_cafile, self.amqp_ssl_certfile, self.amqp_ssl_keyfile)
        if any(amqp_tls) and urlsplit(self.amqp_url).scheme != "amqps":
            raise ValueError(f"{p}AMQP_SSL_* settings need an amqps:// {p}BROKER_URL")
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"{p}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                f"{p}KAFKA_SASL_USERNAME and {p}KAFKA_SASL_PASSWORD"
            )
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(
                f"{p}TOPIC_MIN_INSYNC_REPLICAS={self.topic_min_insync_replicas} is above "
                f"{p}TOPIC_REPLICATION_FACTOR={self.topic_replication_factor}: Kafka would "
                "refuse every write"
            )
        return self

    def __repr_args__(self) -> Any:
        # The AMQP URL carries a password; the SASL password is a SecretStr already.
        for name, value in super().__repr_args__():
            yield name, mask_credentials(value) if isinstance(value, str) else value

    @classmethod
    def load(cls, **overrides: Any) -> Config:
        """Build from flags, ``BRIDGE_*`` and ``BRIDGE_*_FILE`` variables; raise `ConfigError`."""
        try:
            return cls(**_canonical_names({**secret_files(os.environ), **overrides}))
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc)) from exc

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> Config:
        """`load` with the command-line flags that were given (click passes None for the rest)."""
        return cls.load(**{name: value for name, value in flags.items() if value is not None})


def _canonical_names(values: dict[str, Any]) -> dict[str, Any]:
    """Keyword settings under their current names (`ALIASES`)."""
    for name, aliases in ALIASES.items():
        for alias in aliases:
            if alias in values:
                values.setdefault(name, values.pop(alias))
    return values


def canonical_name(name: str) -> str:
    """The setting an (old) name stands for."""
    return next((field for field, old in ALIASES.items() if name in old), name)


def stuck_thresholds(text: str) -> list[tuple[str, float]]:
    """``pattern=seconds,...`` as (pattern, seconds) pairs; ValueError names the bad part."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        pattern, _, seconds = part.rpartition("=")
        try:
            threshold = float(seconds)
        except ValueError:
            threshold = -1.0
        if not pattern or not threshold > 0:
            raise ValueError(f"{part!r} is not pattern=seconds (seconds > 0)")
        pairs.append((pattern, threshold))
    return pairs


def split_servers(servers: str) -> list[str]:
    """``host:port,host:port`` as a list."""
    return [server.strip() for server in servers.split(",")]


def parse_topic_config(text: str) -> dict[str, str]:
    """``key=value,key=value`` as a dict; raise ValueError naming the first bad item."""
    settings: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not (sep and value and re.fullmatch(r"[a-z0-9]+(?:\.[a-z0-9]+)*", key)):
            raise ValueError(f"{item!r} is not key=value (a Kafka topic setting)")
        settings[key] = value
    return settings


def secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    """Settings read from the files named by ``BRIDGE_<NAME>_FILE`` (Docker/Kubernetes secrets)."""
    values: dict[str, str] = {}
    for variable, path in environ.items():
        name = canonical_name(variable.removeprefix(ENV_PREFIX).removesuffix("_FILE").lower())
        if not (variable.startswith(ENV_PREFIX) and variable.endswith("_FILE")):
            continue
        if variable.removeprefix(ENV_PREFIX).lower() in Config.model_fields:
            continue  # a setting of its own naming a file (BRIDGE_SOURCES_FILE, BRIDGE_RULES_FILE)
        if name not in Config.model_fields:
            raise ConfigError(f"invalid setting {variable}: no setting {ENV_PREFIX}{name.upper()}")
        if {f"{ENV_PREFIX}{n.upper()}" for n in (name, *ALIASES.get(name, ()))} & environ.keys():
            raise ConfigError(f"invalid setting {variable}: {ENV_PREFIX}{name.upper()} is also set")
        try:
            values[name] = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"invalid setting {variable}: cannot read {path}: {exc.strerror}"
            ) from exc
    return values


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad setting by its environment variable (a check across
    settings names them in its message)."""
    error = exc.errors()[0]
    if not error["loc"]:
        return f"invalid settings: {error.get('ctx', {}).get('error', error['msg'])}"
    name = canonical_name(str(error["loc"][0]).lower().removeprefix(ENV_PREFIX.lower()))
    return f"invalid setting {_variable(name)}: {error['msg']}"


def _variable(name: str) -> str:
    """The variable of a setting, under the older name if only that one is set."""
    variable = f"{ENV_PREFIX}{name.upper()}"
    for alias in ALIASES.get(name, ()):
        old = f"{ENV_PREFIX}{alias.upper()}"
        if old in os.environ and variable not in os.environ:
            return old
    return variable
