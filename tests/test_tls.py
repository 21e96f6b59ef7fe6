"""Secure connections: settings reach both clients; the bridge consumes over amqps:// for real.

RabbitMQ gets an extra TLS listener at runtime (``rabbit_networking:start_ssl_listener``) on a
spare port, so its plain 5672 listener and other tests are untouched. Kafka over TLS is not
exercised end to end: the embedded Tansu broker does not serve TLS here.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiokafka import AIOKafkaProducer

from celery_kafka_bridge.config import Config
from celery_kafka_bridge.embedded import EmbeddedKafka, free_port, wait_for_port
from celery_kafka_bridge.errors import ConfigError
from celery_kafka_bridge.kafka.sink import KafkaSink
from celery_kafka_bridge.tls import amqp_ssl
from harness.support import Names, Rabbit, poll, read_topic, vhost_url
from tests.conftest import BridgeFactory


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture
def tls_files() -> Iterator[TlsFiles]:
    """A throwaway CA and a server certificate for localhost, readable by the rabbitmq user."""
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    with tempfile.TemporaryDirectory(prefix="bridge-tls-") as directory:
        root = Path(directory)
        os.chmod(root, 0o755)
        files = TlsFiles(root / "ca.pem", root / "cert.pem", root / "key.pem")
        ca.cert_pem.write_to_path(str(files.ca))
        server.cert_chain_pems[0].write_to_path(str(files.cert))
        server.private_key_pem.write_to_path(str(files.key))
        for path in (files.ca, files.cert, files.key):
            os.chmod(path, 0o644)
        yield files


@dataclass(frozen=True)
class AmqpsListener:
    port: int
    ca: Path


@pytest.fixture
def amqps(tls_files: TlsFiles) -> Iterator[AmqpsListener]:
    """An extra TLS listener of the running RabbitMQ, stopped again at the end."""
    port = free_port()
    options = (
        f'[{{certfile,"{tls_files.cert}"}},{{keyfile,"{tls_files.key}"}},'
        f'{{cacertfile,"{tls_files.ca}"}},{{verify,verify_none}}]'
    )
    started = subprocess.run(
        ["rabbitmqctl", "eval", f"rabbit_networking:start_ssl_listener({port}, {options}, 1, 1)."],
        capture_output=True,
        text=True,
        check=True,
    )
    assert started.stdout.strip() == "ok", started.stdout + started.stderr
    wait_for_port(port, 10)
    yield AmqpsListener(port, tls_files.ca)
    subprocess.run(
        ["rabbitmqctl", "eval", f"rabbit_networking:stop_tcp_listener({port})."],
        capture_output=True,
        check=True,
    )


@pytest.mark.slow
def test_the_bridge_consumes_over_amqps_and_verifies_the_server_certificate(
    names: Names,
    rabbit: Rabbit,
    amqps: AmqpsListener,
    start_bridge: BridgeFactory,
    kafka: EmbeddedKafka,
) -> None:
    url = vhost_url(names.vhost, f"amqps://guest:guest@localhost:{amqps.port}")
    untrusting = start_bridge(wait=False, BRIDGE_AMQP_URL=url)
    poll(lambda: "CERTIFICATE_VERIFY_FAILED" in untrusting.log(), 20, what="rejected certificate")
    untrusting.kill()
    bridge = start_bridge(BRIDGE_AMQP_URL=url, BRIDGE_AMQP_SSL_CAFILE=str(amqps.ca))
    assert f"at amqps://guest:***@localhost:{amqps.port}/{names.vhost}" in bridge.log()
    body = b'{"type": "worker-heartbeat", "hostname": "tls@h", "timestamp": 1.0}'
    rabbit.publish(names.exchange, "worker.heartbeat", body, "application/json")
    (record,) = read_topic(kafka.bootstrap_servers, names.topic, until=bool, timeout=30, idle=0.5)
    assert record.value == body
    poll(lambda: bridge.http("/readyz")[0] == 200, 15, what="ready over TLS")


def test_amqp_tls_settings_become_kombu_ssl_options(tls_files: TlsFiles) -> None:
    config = Config.load(
        amqp_url="amqps://u:p@rabbit:5671//",
        amqp_ssl_cafile=tls_files.ca,
        amqp_ssl_certfile=tls_files.cert,
        amqp_ssl_keyfile=tls_files.key,
    )
    assert amqp_ssl(config) == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": None,  # kombu fills in the URL's host, so the name is checked
        "ca_certs": str(tls_files.ca),
        "certfile": str(tls_files.cert),
        "keyfile": str(tls_files.key),
    }
    assert amqp_ssl(Config.load(amqp_url="amqp://u:p@rabbit//")) is False


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_kafka_sasl_ssl_settings_reach_the_producer(
    mechanism: str, tls_files: TlsFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("BRIDGE_KAFKA_SASL_PASSWORD_FILE", str(secret))
    config = Config.load(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="bridge",
        kafka_ssl_cafile=tls_files.ca,
    )
    producer = AIOKafkaProducer(**KafkaSink(config).producer_options())
    client = producer.client
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == mechanism
    assert client._sasl_plain_username == "bridge"
    assert client._sasl_plain_password == "s3cret"
    assert isinstance(client._ssl_context, ssl.SSLContext)
    assert client._ssl_context.verify_mode == ssl.CERT_REQUIRED
    await producer.stop()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"amqp_ssl_cafile": __file__}, r"BRIDGE_AMQP_SSL_\* settings need an amqps://"),
        ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "needs BRIDGE_KAFKA_SASL_USERNAME"),
        ({"kafka_ssl_cafile": "/no/such/ca.pem"}, "BRIDGE_KAFKA_SSL_CAFILE: Path does not"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ],
)
def test_inconsistent_security_settings_fail_at_start(
    settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.load(**settings)
