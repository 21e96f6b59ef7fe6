"""What a failed Kafka write means, by kind: the one place that reads aiokafka's exceptions.

Called only once a send failed, so the per-event path never pays for it. The kinds follow
aiokafka's ``retriable`` flag and Kafka's own error table:

- ``TRANSIENT``: the cluster is busy, moving or away (not leader, timeouts, disconnects, not
  enough replicas, anything unknown): send the same batch again after a backoff.
- ``RECORD``: the topic can never take a record of the batch (too large, invalid, corrupt): find
  it, dead-letter it, send the rest.
- ``DENIED``: the bridge's principal may not write (ACLs, SASL): nothing can be written until an
  operator acts; unready, retry slowly, lose nothing.
- ``STATE``: the idempotent producer's sequence state is lost (aiokafka #1017), or the producer
  stopped answering (#1101): replace the producer and send every unconfirmed batch again.
"""

from __future__ import annotations

from enum import StrEnum

from aiokafka import errors as kafka_errors
from aiokafka.errors import (
    AuthenticationFailedError,
    BrokerResponseError,
    ClusterAuthorizationFailedError,
    CorruptRecordException,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnknownProducerId,
)

from celery_kafka_bridge.errors import TransientError


class Kind(StrEnum):
    TRANSIENT = "transient"
    RECORD = "record"
    DENIED = "denied"
    STATE = "state"


class InvalidRecordError(BrokerResponseError):  # type: ignore[misc]
    """INVALID_RECORD (87): a record the broker validates and refuses, e.g. no key on a compacted
    topic. aiokafka 0.14 has no class for it (it would surface as UnknownError)."""

    errno = 87
    message = "INVALID_RECORD"
    description = "This record has failed the validation on broker and hence will be rejected."


# Registered so that aiokafka's `for_code(87)` (the produce response handler) names it.
kafka_errors.kafka_errors.setdefault(InvalidRecordError.errno, InvalidRecordError)


class ProducerReplaced(Exception):
    """The producer a batch was handed to was replaced before Kafka answered; send it again."""


RETRIABLE = (KafkaError, TransientError, OSError, TimeoutError)
"""What a Kafka call outside the batch writers (metadata, topics) is retried on."""

TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_RECORD = (*TOO_LARGE, CorruptRecordException, InvalidRecordError, InvalidTimestampError)
_DENIED = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    SaslAuthenticationFailed,
    AuthenticationFailedError,
)
_STATE = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
    ProducerReplaced,
    # Our own bound on a send (aiokafka's futures can wait forever, #1101).
    TimeoutError,
)


def classify(exc: BaseException) -> Kind:
    """The kind of a failed write; anything not known to be permanent is transient."""
    if isinstance(exc, _RECORD):
        return Kind.RECORD
    if isinstance(exc, _DENIED):
        return Kind.DENIED
    if isinstance(exc, _STATE):
        return Kind.STATE
    return Kind.TRANSIENT


def missing_permission(exc: BaseException, topic: str) -> str:
    """What the bridge's principal lacks, in an operator's words."""
    if isinstance(exc, TopicAuthorizationFailedError):
        return f"Write (and Describe) on topic {topic}"
    if isinstance(exc, ClusterAuthorizationFailedError):
        return "IdempotentWrite on the cluster (idempotent producers)"
    if isinstance(exc, TransactionalIdAuthorizationFailed):
        return "Write on the transactional id"
    return "a successful SASL login (check the user name, password and mechanism)"


def refuses_idempotence(exc: BaseException) -> bool:
    """Whether a producer start failed because the broker will not make it idempotent: a
    permanent broker error that is not an authorization one (only InitProducerId answers with
    one there; Tansu answers UnknownError)."""
    return (
        isinstance(exc, BrokerResponseError)
        and not exc.retriable
        and classify(exc) is not Kind.DENIED
    )
