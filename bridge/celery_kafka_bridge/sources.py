"""Several sources in one deployment: ``BRIDGE_SOURCES_FILE`` lists them, each a broker (a
RabbitMQ vhost, another RabbitMQ, a Redis) with its own consumer, pipeline and producer, so each
fails alone. Every record of a listed source carries a ``source`` header with its name; a bridge
run with one broker URL and no file has a single unnamed source and adds no header.

The file::

    sources:
      - name: billing                       # [A-Za-z0-9._-], unique
        broker_url: amqp://user:pw@rabbit:5672/billing
        node_id: kafka-bridge               # optional: BRIDGE_NODE_ID
        topology: ordered                   # optional: BRIDGE_TOPOLOGY
        topic: billing.events               # optional: BRIDGE_TOPIC
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from celery_kafka_bridge.config import Config, TopologyName
from celery_kafka_bridge.errors import ConfigError

_SETTING = "invalid setting BRIDGE_SOURCES_FILE"


class SourceSpec(BaseModel):
    """One entry of the sources file; unset fields take the deployment's settings."""

    model_config = {"extra": "forbid", "frozen": True}

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,100}$")
    broker_url: str
    node_id: str | None = None
    topology: TopologyName | None = None
    topic: str | None = None


class SourcesFile(BaseModel):
    model_config = {"extra": "forbid"}

    sources: list[SourceSpec] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceSpec]) -> list[SourceSpec]:
        names = [source.name for source in sources]
        if len(set(names)) < len(names):
            raise ValueError(f"source names must be unique: {names}")
        return sources


@dataclass(frozen=True)
class Source:
    """A source and its settings; ``name`` is None for the single broker URL (no header)."""

    name: str | None
    config: Config

    @property
    def label(self) -> str:
        """Its name in metrics and logs."""
        return self.name or "default"


def sources_of(config: Config) -> list[Source]:
    """The deployment's sources; raise `ConfigError` naming the file's first mistake."""
    if config.sources_file is None:
        return [Source(None, config)]
    listed = _read(config.sources_file)
    base = config.model_dump(exclude={"sources_file", "broker_url"})
    sources = []
    for spec in listed.sources:
        overrides = spec.model_dump(exclude={"name"}, exclude_none=True)
        try:
            sources.append(Source(spec.name, Config.load(**(base | overrides))))
        except ConfigError as exc:
            raise ConfigError(f"{_SETTING}: source {spec.name}: {exc}") from exc
    return sources


def _read(path: Path) -> SourcesFile:
    try:
        return SourcesFile.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{_SETTING}: cannot read {path}: {exc}".replace("\n", " ")) from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigError(f"{_SETTING}: {where}: {error['msg']}") from exc
