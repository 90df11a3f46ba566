"""Broker and credential problems as every command reports them: one line, a distinct exit code.

A command that cannot reach the cluster, is refused by it or finds a topic missing says which in
one line naming what failed (never a traceback, never a record's contents).  Exit codes follow
BSD's sysexits.h, as service managers and schedulers read them:

  0   success
  1   ``replay --verify`` found a difference (the audit ran; its finding is the answer)
  64  usage: an unknown option, a malformed option value, no configuration named
  65  data: a replay the input cannot satisfy (offsets no longer readable, a partial window)
  69  a topic does not exist
  75  temporarily unavailable: the broker or the schema registry is unreachable (retry later)
  77  credentials are missing or refused (SASL, OAUTHBEARER, TLS, an ACL that denies a topic)
  78  configuration: the config file is missing, invalid or names something that is not there
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from stream_app.config import ConfigError

T = TypeVar("T")

USAGE, DATA, MISSING_TOPIC, UNREACHABLE, CREDENTIALS, CONFIG = 64, 65, 69, 75, 77, 78


class BrokerProblem(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CredentialsMissing(ConfigError):
    """A secret the config names (an environment variable, a mounted file) is not there."""

    exit_code = CREDENTIALS


def _codes() -> tuple[frozenset[int], frozenset[int], frozenset[int]]:
    from confluent_kafka import KafkaError as E

    credentials = frozenset({E._AUTHENTICATION, E._SSL, E.SASL_AUTHENTICATION_FAILED, E.TOPIC_AUTHORIZATION_FAILED,
                             E.GROUP_AUTHORIZATION_FAILED, E.CLUSTER_AUTHORIZATION_FAILED,
                             E.ILLEGAL_SASL_STATE, E.UNSUPPORTED_SASL_MECHANISM})
    missing = frozenset({E._UNKNOWN_TOPIC, E.UNKNOWN_TOPIC_OR_PART, E._UNKNOWN_PARTITION})
    unreachable = frozenset({E._TRANSPORT, E._ALL_BROKERS_DOWN, E._TIMED_OUT, E._RESOLVE, E.REQUEST_TIMED_OUT,
                             E.BROKER_NOT_AVAILABLE, E.LEADER_NOT_AVAILABLE, E.NOT_LEADER_FOR_PARTITION})
    return credentials, missing, unreachable


def classify(error: Any, what: str) -> BrokerProblem:
    """``error`` (a confluent-kafka ``KafkaError``, or the ``KafkaException`` carrying one) while
    doing ``what``, as the problem a command reports."""
    if hasattr(error, "args") and error.args and hasattr(error.args[0], "code"):
        error = error.args[0]
    code = error.code() if hasattr(error, "code") else None
    text = error.str() if hasattr(error, "str") else str(error)
    credentials, missing, unreachable = _codes()
    if code in credentials:
        return BrokerProblem(f"{what}: credentials refused: {text}", CREDENTIALS)
    if code in missing:
        return BrokerProblem(f"{what}: topic does not exist: {text}", MISSING_TOPIC)
    if code in unreachable:
        return BrokerProblem(f"{what}: broker unreachable: {text}", UNREACHABLE)
    return BrokerProblem(f"{what}: broker error: {text}", UNREACHABLE)


def topic_partitions(client: Any, topic: str, timeout_s: float = 15.0) -> list[int]:
    """The partitions of ``topic`` through a confluent-kafka client; a missing topic or an
    unreachable broker is a ``BrokerProblem`` naming it."""
    from confluent_kafka import KafkaException

    try:
        meta = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        raise classify(exc, f"reading the metadata of topic {topic}") from None
    if meta is None:
        raise BrokerProblem(f"topic {topic} does not exist", MISSING_TOPIC)
    if meta.error is not None:
        raise classify(meta.error, f"topic {topic}")
    if not meta.partitions:
        raise BrokerProblem(f"topic {topic} does not exist (no partitions)", MISSING_TOPIC)
    return sorted(meta.partitions)


def is_transient(error: Any) -> bool:
    """librdkafka flags few errors retriable (an OffsetFetch's NOT_COORDINATOR is not), so the
    coordinator and leadership codes are named here too."""
    from confluent_kafka import KafkaError as E

    if not hasattr(error, "code"):
        return False
    moving = {E.NOT_COORDINATOR, E.COORDINATOR_LOAD_IN_PROGRESS, E.COORDINATOR_NOT_AVAILABLE,
              E.LEADER_NOT_AVAILABLE, E.NOT_LEADER_FOR_PARTITION, E.REQUEST_TIMED_OUT}
    return bool(error.code() in moving or (hasattr(error, "retriable") and error.retriable()))


def retried(call: Callable[[], T], attempts: int = 8, first_delay_s: float = 0.25) -> T:
    """``call()`` again while it fails with an error Kafka calls retriable: a group coordinator
    that moved or is still loading (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS), a leader
    election.  Apache Kafka answers so for a while after a start or a rebalance of the offsets
    topic; the last failure is raised as it is."""
    from confluent_kafka import KafkaException

    delay = first_delay_s
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException as exc:
            error: Any = exc.args[0] if exc.args else None
            if attempt == attempts - 1 or not is_transient(error):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 4.0)
    raise AssertionError("unreachable")


def group_committed(config: dict[str, Any], tps: list[tuple[str, int]], timeout_s: float = 10.0) -> list[Any]:
    """The committed offsets (confluent-kafka ``TopicPartition``s; -1001 where none) of the
    group ``config["group.id"]``, read without joining it.  A retriable answer (NOT_COORDINATOR
    while a fresh broker's offsets topic loads) is asked again by a new client: librdkafka can
    keep asking the coordinator it was first told."""
    from confluent_kafka import Consumer, TopicPartition

    def ask() -> list[TopicPartition]:
        consumer = Consumer({**config, "enable.auto.commit": False})
        try:
            return consumer.committed([TopicPartition(t, p) for t, p in tps], timeout=timeout_s)
        finally:
            consumer.close()

    return retried(ask)
