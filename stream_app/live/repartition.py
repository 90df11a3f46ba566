"""The repartition topic of business files: created at start, written by confluent-kafka.

The routing stage's records go through confluent-kafka rather than Faust's aiokafka producer:
librdkafka batches, compresses and sends in its own threads (outside the GIL), several times
faster per record than aiokafka here, and its idempotent producer keeps each partition's
records in order across retries — the file stage relies on a source partition's records
arriving before that partition's close frontier, and on no record being skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from confluent_kafka import KafkaException

from stream_app.codecs.repartition import repartition_message_bytes
from stream_app.config import AppSettings
from stream_app.ops.faults import failpoint
from stream_app.ops.producer_calls import serve
from stream_app.ops.security import confluent_security
from stream_app.pipeline.ports import RoutedRecordsLost

log = logging.getLogger(__name__)


class RepartitionTopicError(RuntimeError):
    """The repartition topic exists with another partition count: a terminal configuration error."""


def ensure_repartition_topic(settings: AppSettings, timeout_s: float = 30.0) -> None:
    """Create ``<appId>-files-repartition`` when missing; refuse one with a different partition count
    (file keys would move to other partitions and their records to other owners)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    kafka = settings.kafka
    name, partitions = settings.repartition_topic, kafka.repartition_partitions
    admin = AdminClient({"bootstrap.servers": kafka.bootstrapServers, "log_level": 0,
                         **confluent_security(kafka.security)})
    message_bytes = repartition_message_bytes(settings.input.maxRecordBytes)
    meta = admin.list_topics(timeout=timeout_s).topics.get(name)
    if meta is not None and meta.error is None:
        if len(meta.partitions) != partitions:
            raise RepartitionTopicError(
                f"topic {name} has {len(meta.partitions)} partitions but kafka.repartitionPartitions is {partitions}; "
                "a repartition topic cannot be resized while files are open (drain it, or use a new appId)")
        _ensure_message_bytes(admin, name, message_bytes, timeout_s)
        return
    topic = NewTopic(name, num_partitions=partitions, replication_factor=kafka.replicationFactor,
                     config={"retention.ms": str(kafka.repartitionRetentionMs), "cleanup.policy": "delete",
                             "max.message.bytes": str(message_bytes)})
    for _, future in admin.create_topics([topic], request_timeout=timeout_s).items():
        try:
            future.result()
            log.info("created the repartition topic %s (%d partitions)", name, partitions)
        except Exception as exc:  # another replica created it meanwhile
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise


def _ensure_message_bytes(admin: Any, name: str, wanted: int, timeout_s: float) -> None:
    """The existing topic takes every accepted record (``max.message.bytes``, from
    input.maxRecordBytes): raised when smaller (the worker owns this internal topic), or a
    terminal error naming the setting when the broker refuses."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    try:
        entries = admin.describe_configs([resource], request_timeout=timeout_s)[resource].result()
    except Exception as exc:  # a broker without DescribeConfigs: the send checks each record anyway
        log.warning("could not read max.message.bytes of %s (%s); assuming it takes %d bytes",
                    name, type(exc).__name__, wanted)
        return
    entry = entries.get("max.message.bytes")
    current = int(entry.value) if entry is not None and entry.value is not None else None
    if current is not None and current >= wanted:
        return
    change = ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
        ConfigEntry("max.message.bytes", str(wanted), incremental_operation=AlterConfigOpType.SET)])
    try:
        admin.incremental_alter_configs([change], request_timeout=timeout_s)[change].result()
    except Exception as exc:
        raise RepartitionTopicError(
            f"topic {name} takes records of at most {current} bytes (max.message.bytes) but input.maxRecordBytes "
            f"needs {wanted}, and raising it was refused ({exc}); raise it on the topic, or lower "
            "input.maxRecordBytes") from None
    log.info("raised max.message.bytes of %s from %s to %d (input.maxRecordBytes)", name, current, wanted)


class RepartitionSendError(RoutedRecordsLost):
    """Some repartition records were not delivered: the routing stage rewinds (``RoutingStage.rewind``)."""


class _KnownConfigWarning(logging.Filter):
    """librdkafka warns at every start that the gapless guarantee is experimental; it is chosen
    on purpose (see KafkaRepartitionSender), so that warning would only alarm operators."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "enable.gapless.guarantee is experimental" not in record.getMessage()


_LIBRDKAFKA_LOG = logging.getLogger("librdkafka.repartition")
_LIBRDKAFKA_LOG.addFilter(_KnownConfigWarning())

# How long delivered() may wait on the broker before /readyz says so.
UNDELIVERED_REPORT_S = 30.0


class KafkaRepartitionSender:
    """``RepartitionSender`` for the live worker; ``delivered()`` waits for every acknowledgement.

    What reaches the broker is always a prefix of what was sent, per partition, in each producer
    session: librdkafka never times a record out (``message.timeout.ms`` 0: it retries while the
    broker is away) and its gapless guarantee turns any error that could leave a gap into a fatal
    one, after which nothing more is delivered.  So after a failure the routing stage can send
    everything after its checkpoints again through a new producer (``restart``): the file stage
    keeps the first copy of each record and drops the rest by source coordinates.
    """

    def __init__(self, settings: AppSettings) -> None:
        from confluent_kafka import Producer

        kafka = settings.kafka
        self.topic = settings.repartition_topic
        conf: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrapServers, **confluent_security(kafka.security),
            "enable.idempotence": True, "enable.gapless.guarantee": True, "acks": "all",
            "message.timeout.ms": 0, "linger.ms": 5, "queue.buffering.max.kbytes": 262144, "log_level": 4,
            # as the topic's max.message.bytes: any record the routing stage sends fits (it
            # dead-letters one that does not, TOO_LARGE_TO_ROUTE), so no send is refused for size
            "message.max.bytes": repartition_message_bytes(settings.input.maxRecordBytes),
            # through Python logging (and its OutageFilter), not straight to stderr
            "logger": _LIBRDKAFKA_LOG,
        }
        self._make = lambda: Producer(conf)
        self._producer = self._make()
        self._errors: list[str] = []
        self._broken: str | None = None  # a send refused: nothing after it may be delivered
        self._waiting_since: float | None = None

    def _on_delivery(self, err: Any, msg: Any) -> None:  # runs in the thread that flushes
        if err is not None:
            self._errors.append(str(err))

    def send(self, partition: int, key: bytes, value: bytes) -> None:
        # Records go on being routed while a routing commit awaits the acknowledgements, so sends
        # may follow a failure that delivered() has not reported yet; nothing after it may be
        # delivered (the routing stage routes them again after its rewind), and a producer in a
        # fatal state refuses them.
        if self._broken is not None or self._errors:
            return
        try:
            failpoint("repartition.send")
        except OSError as exc:  # as a fatal producer error: this and every later record undelivered
            self._broken = f"send refused ({exc.strerror})"
            return
        while True:
            try:
                self._producer.produce(self.topic, value, key, partition=partition, on_delivery=self._on_delivery)
                break
            except BufferError:  # librdkafka's queue is full: let it send some first
                if failed := serve(self._producer, 0.05):
                    self._broken = failed
                    return
            except KafkaException as exc:  # a fatal producer error, not yet seen by a delivery report
                self._broken = f"send refused ({exc.args[0] if exc.args else exc})"
                return
        self._broken = serve(self._producer)

    @property
    def undeliverable(self) -> str | None:
        """Why /readyz is 503: records waiting for the broker for longer than UNDELIVERED_REPORT_S."""
        since = self._waiting_since
        if since is None or time.monotonic() - since < UNDELIVERED_REPORT_S:
            return None
        return f"{len(self._producer)} repartition record(s) not acknowledged for {time.monotonic() - since:.0f} s"

    async def delivered(self) -> None:
        """Every record sent is acknowledged; raises ``RepartitionSendError`` once the queue is
        empty (or the producer finished) when some were not (then ``restart`` and route again
        from the checkpoints)."""
        # In steps, so that a stop (or a broker outage) never leaves a thread blocked in flush().
        self._waiting_since = time.monotonic()
        try:
            while len(self._producer):  # queued or in flight
                if failed := await asyncio.to_thread(serve, self._producer, 2.0):
                    self._broken = self._broken or failed
                    break  # finished: it delivers nothing more (its queue may never empty)
        finally:
            self._waiting_since = None
        if self._errors or self._broken:
            errors = [*self._errors, *([self._broken] if self._broken else [])]
            raise RepartitionSendError(f"{len(errors)} repartition delivery error(s), the first: {errors[0]}")

    def restart(self) -> None:
        """A new producer session (``delivered`` raised: the old one's queue is empty, or it is
        finished and delivers nothing more)."""
        self._producer = self._make()
        self._errors, self._broken = [], None

    def close(self) -> None:
        serve(self._producer, 10.0)
