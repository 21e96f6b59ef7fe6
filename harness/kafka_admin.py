"""Topics read and written with confluent-kafka's AdminClient, a client the bridge does not use."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

_TIMEOUT = 10.0


@dataclass(frozen=True)
class Described:
    """A topic as the broker describes it."""

    partitions: int
    replicas: list[int]
    """The replicas of partition 0."""
    configs: dict[str, str]


class KafkaAdmin:
    """Creates, deletes and describes topics."""

    def __init__(self, bootstrap: str) -> None:
        self._client = AdminClient({"bootstrap.servers": bootstrap})

    def describe(self, topic: str) -> Described:
        metadata = self._client.list_topics(timeout=_TIMEOUT).topics[topic]
        resource = ConfigResource(ResourceType.TOPIC, topic)
        entries = self._client.describe_configs([resource])[resource].result(_TIMEOUT)
        return Described(
            len(metadata.partitions),
            list(metadata.partitions[0].replicas),
            {name: entry.value for name, entry in entries.items()},
        )

    def create(self, topic: str, partitions: int, configs: dict[str, str]) -> None:
        """Create ``topic`` (one replica); a topic that exists already is left as it is."""
        future = self._client.create_topics([NewTopic(topic, partitions, 1, config=configs)])
        try:
            future[topic].result(_TIMEOUT)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def alter(self, topic: str, configs: dict[str, str]) -> None:
        """Set these settings of ``topic`` (IncrementalAlterConfigs), leaving the others."""
        entries = [
            ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
            for name, value in configs.items()
        ]
        resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        for future in self._client.incremental_alter_configs([resource]).values():
            future.result(_TIMEOUT)

    def delete(self, *topics: str) -> None:
        if not topics:
            return
        for future in self._client.delete_topics(list(topics)).values():
            future.result(_TIMEOUT)

    def exists(self, topic: str) -> bool:
        return topic in self._client.list_topics(timeout=_TIMEOUT).topics
