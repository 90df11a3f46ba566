"""Before Faust starts: wait for the broker instead of crashing (and crash-looping in Kubernetes).

While waiting, ``/healthz`` answers 200 and ``/readyz`` 503 on the worker's web port, so probes
see a live process that is not ready, and the log says why once per attempt (with backoff).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from stream_app.config import AppSettings
from stream_app.ops.problems import CONFIG, CREDENTIALS, MISSING_TOPIC, BrokerProblem, classify, group_committed
from stream_app.ops.security import confluent_security

log = logging.getLogger(__name__)


class _ProbeServer:
    def __init__(self, host: str, port: int, reason: str) -> None:
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server API
                ready_path = self.path.startswith("/readyz")
                body = json.dumps({"ready": False, "reason": state.reason} if ready_path else {"alive": True}).encode()
                self.send_response(503 if ready_path else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.reason = reason
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.allow_reuse_address = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def broker_reachable(settings: AppSettings, timeout_s: float = 5.0) -> BrokerProblem | None:
    """None when the cluster answers a metadata request and has every input topic, else why not."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:  # an OAuth token endpoint is asked here: refused (terminal) or unreachable (waited for)
        conf = {"bootstrap.servers": settings.kafka.bootstrapServers, "log_level": 0,
                **confluent_security(settings.kafka.security)}
    except BrokerProblem as exc:
        return exc
    try:
        topics = AdminClient(conf).list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        return classify(exc, f"Kafka at {settings.kafka.bootstrapServers}")
    kafka = settings.kafka
    needed = [(name, "kafka.inputTopics") for name in kafka.inputTopics] + [
        (kafka.journalTopic, "kafka.journalTopic"), (kafka.deadLetterTopic, "kafka.deadLetterTopic")]
    missing = [(name, key) for name, key in needed if name not in topics]
    if missing:  # created later by an operator or a topic job: waited for, as the broker is
        # (a cluster that does not create topics on first use would otherwise refuse the first
        # journal event or dead letter, mid-run)
        name, key = missing[0]
        return BrokerProblem(f"topic {name} does not exist ({key})", MISSING_TOPIC)
    for name in kafka.inputTopics:
        count = len(topics[name].partitions)
        if count > kafka.topicPartitions:  # their checkpoints would have no changelog partition
            return BrokerProblem(f"input topic {name} has {count} partitions, more than kafka.topicPartitions "
                                 f"({kafka.topicPartitions}); set it to {count}", CONFIG)
    return None


class BrokerProbe:
    """``/readyz``'s view of the cluster: one admin client, reused, asking for the metadata of
    one input topic (not the whole cluster), the answer cached for ``ttl_s``.

    It also keeps the cluster's identity.  The worker's state (its tables, what it routed to the
    repartition topic, its committed offsets) belongs to the cluster id it first saw; a cluster
    that comes back with another id was re-created empty, and committing there would put offsets
    past what the files hold (docs/operations.md, "When the cluster lost data").  ``confirmed``
    says whether the cluster is known to be the same one now: commits wait for it."""

    def __init__(self, settings: AppSettings, ttl_s: float = 2.0) -> None:
        from confluent_kafka.admin import AdminClient

        self._admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrapServers, "log_level": 0,
                                   **confluent_security(settings.kafka.security)})
        self._topic = settings.kafka.inputTopics[0]
        self._ttl_s = ttl_s
        self._checked_at = -ttl_s
        self._problem: str | None = None
        self._lock = threading.Lock()
        self.cluster_id: str | None = None  # the cluster this worker's state belongs to
        self.changed_to: str | None = None  # another cluster answering at the same address
        self._confirmed_at: float | None = None

    def problem(self, timeout_s: float = 2.0) -> str | None:
        from confluent_kafka import KafkaException

        with self._lock:
            if time.monotonic() - self._checked_at < self._ttl_s:
                return self._problem
            try:
                self._observe(self._admin.list_topics(self._topic, timeout=timeout_s).cluster_id)
                self._problem = None
            except KafkaException as exc:
                self._problem = str(exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else exc)
                self._confirmed_at = None  # whatever answers next must be recognised first
            self._checked_at = time.monotonic()
            return self._problem

    def recheck(self, timeout_s: float = 2.0) -> str | None:
        """``problem`` asked now, whatever the cached answer."""
        with self._lock:
            self._checked_at = -self._ttl_s
        return self.problem(timeout_s)

    def _observe(self, cluster_id: str | None) -> None:
        if not cluster_id:
            return
        if self.cluster_id is None:
            self.cluster_id = cluster_id
        elif cluster_id != self.cluster_id and self.changed_to is None:
            self.changed_to = cluster_id
        self._confirmed_at = time.monotonic()

    def confirmed(self, max_age_s: float) -> bool:
        """The cluster answered as the same cluster within ``max_age_s``, with no failed check since."""
        return (self.changed_to is None and self._confirmed_at is not None
                and time.monotonic() - self._confirmed_at <= max_age_s)


def wait_for_broker(settings: AppSettings, max_delay_s: float = 30.0) -> None:
    """Return once the cluster answers and holds the input topics; an unreachable cluster or a
    missing topic is waited for (transient, with backoff), refused credentials raise
    ``BrokerProblem`` (terminal: a retry cannot fix them)."""
    bootstrap = settings.kafka.bootstrapServers
    problem = broker_reachable(settings)
    if problem is None:
        return
    probes = (_ProbeServer(settings.webHost, settings.webPort, str(problem)) if settings.webPort else None)
    delay = 1.0
    try:
        while problem is not None:
            if problem.exit_code in (CREDENTIALS, CONFIG):  # a retry cannot fix these
                raise problem
            log.warning("%s; retrying in %.0f s", problem, delay)
            if probes is not None:
                probes.reason = str(problem)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
            problem = broker_reachable(settings)
        log.info("Kafka at %s is reachable; starting", bootstrap)
    finally:
        if probes is not None:
            probes.close()


def group_committed_offsets(settings: AppSettings, tps: list[tuple[str, int]], timeout_s: float = 10.0
                            ) -> dict[tuple[str, int], int]:
    """The group's committed offset per partition, as the cluster holds it (only those with one)."""
    conf = {"bootstrap.servers": settings.kafka.bootstrapServers, "group.id": settings.appId,
            "log_level": 0, **confluent_security(settings.kafka.security)}
    found = group_committed(conf, tps, timeout_s)
    return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
