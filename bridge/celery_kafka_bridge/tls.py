"""How the bridge secures its broker connections: TLS and SASL options for each client."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from celery_kafka_bridge.config import Config


def kafka_security(config: Config) -> dict[str, Any]:
    """Keyword arguments shared by every Kafka client (producer, admin, health probe)."""
    protocol = config.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=_path(config.kafka_ssl_cafile),
            certfile=_path(config.kafka_ssl_certfile),
            keyfile=_path(config.kafka_ssl_keyfile),
        )
    if protocol.startswith("SASL"):
        assert config.kafka_sasl_password is not None  # Config checks it
        options |= {
            "sasl_mechanism": config.kafka_sasl_mechanism,
            "sasl_plain_username": config.kafka_sasl_username,
            "sasl_plain_password": config.kafka_sasl_password.get_secret_value(),
        }
    return options


def amqp_ssl(config: Config) -> dict[str, Any] | bool:
    """kombu's (and Celery's ``broker_use_ssl``) TLS options; False for a plain amqp:// URL.

    The server certificate is always verified, its name against the URL's host.
    """
    if not config.amqp_url.startswith("amqps://"):
        return False
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    if config.amqp_ssl_cafile:
        options["ca_certs"] = str(config.amqp_ssl_cafile)
    if config.amqp_ssl_certfile:
        options["certfile"] = str(config.amqp_ssl_certfile)
        options["keyfile"] = _path(config.amqp_ssl_keyfile)
    return options


def _path(value: object | None) -> str | None:
    return None if value is None else str(value)
