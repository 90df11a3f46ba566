"""Apache Kafka 4.x, a single-node KRaft broker started from the Maven Central jars the way the
distribution's bin scripts start it: ``kafka.tools.StorageTool format``, then ``kafka.Kafka
server.properties`` on a class path of every jar of ``kafka_2.13`` (resolved by Maven from
``.ci/kafka/pom.xml`` into a cache directory, once per version).

Used by the tests that need what the embedded broker lacks (SASL OAUTHBEARER) and by the
Apache Kafka runs of the guarantees.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from stream_app.tools.broker import free_port

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / ".ci" / "kafka" / "pom.xml"
KAFKA_VERSION = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())[1]  # type: ignore[index]
# The newest 3.9 release, which many platforms still run (log4j 1 through reload4j, as its
# distribution ships).
KAFKA_3_VERSION = "3.9.1"


class KafkaUnavailable(Exception):
    """Java or Maven is missing, or the jars could not be resolved."""


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The broker's class path directory (Maven resolves it on first use; later runs reuse it)."""
    default = Path.home() / ".cache" / "stream-app" / f"kafka-{version}" / "libs"
    cache = Path(os.environ["STREAM_APP_KAFKA_LIBS"]) if os.environ.get("STREAM_APP_KAFKA_LIBS") and \
        version == KAFKA_VERSION else default
    if (cache / f"kafka_2.13-{version}.jar").exists():
        return cache
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise KafkaUnavailable("Apache Kafka needs java and mvn on PATH")
    cache.parent.mkdir(parents=True, exist_ok=True)
    # Test processes (pytest-xdist workers) resolve one at a time: the first fills the cache,
    # the others find it filled, and none replaces a class path a running broker reads.
    with open(cache.parent / ".resolve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache / f"kafka_2.13-{version}.jar").exists():
            return cache
        return _resolve(cache, version)


def _resolve(cache: Path, version: str) -> Path:
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    proc = subprocess.run(["mvn", "-q", "-B", "-f", str(POM), f"-Dkafka.version={version}",
                           "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise KafkaUnavailable(f"mvn could not resolve kafka_2.13 {version}: {proc.stdout[-2000:]}")
    if not version.startswith("4."):  # 3.x logs through reload4j (its own dependency): one slf4j binding
        for jar in tmp.glob("log4j-*-2.*.jar"):
            jar.unlink()
    shutil.rmtree(cache, ignore_errors=True)
    tmp.rename(cache)  # whole or not at all: an interrupted resolve is never taken for a class path
    return cache


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""

LOG4J1 = """\
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File={log}
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
"""


class ApacheKafka:
    """One broker (combined broker and controller).  ``bootstrap`` is the client listener.

    ``client_listener``: the security protocol clients connect with (PLAINTEXT, or
    SASL_PLAINTEXT with ``properties`` naming the mechanism); the broker's own traffic uses a
    PLAINTEXT listener of its own, so a SASL client listener needs no broker credentials.
    """

    def __init__(self, workdir: Path, client_listener: str = "PLAINTEXT", properties: dict[str, str] | None = None,
                 system_properties: dict[str, str] | None = None, heap: str = "768m",
                 version: str = KAFKA_VERSION) -> None:
        self.workdir = workdir
        self.kafka_version = version
        self.port, self.internal_port, self.controller_port = free_port(), free_port(), free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        # the broker's own PLAINTEXT listener: test set-up and checks, beside a SASL client listener
        self.internal_bootstrap = f"127.0.0.1:{self.internal_port}"
        self.client_listener = client_listener
        self.properties = properties or {}
        self.system_properties = system_properties or {}
        self.heap = heap
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.cluster_id = ""

    def server_properties(self) -> dict[str, str]:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"CLIENT://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{self.internal_port},"
                         f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{self.internal_port}",
            "listener.security.protocol.map": f"CLIENT:{self.client_listener},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.workdir / "data"),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
        }
        props.update(self.properties)
        return props

    def _java(self, main: str, *args: str) -> list[str]:
        jvm = [f"-D{k}={v}" for k, v in self.system_properties.items()]
        return ["java", f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
                f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}", *jvm,
                "-cp", f"{kafka_libs(self.kafka_version)}/*", main, *args]

    def start(self, timeout_s: float = 90.0) -> ApacheKafka:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j2.properties").write_text(LOG4J2.format(log=self.log))
        (self.workdir / "log4j.properties").write_text(LOG4J1.format(log=self.log))
        config = self.workdir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        meta = self.workdir / "data" / "meta.properties"
        if meta.exists():  # a restart on the same log directory
            self.cluster_id = re.search(r"cluster.id=(\S+)", meta.read_text())[1]  # type: ignore[index]
        else:
            self.cluster_id = _cluster_id()
            subprocess.run(self._java("kafka.tools.StorageTool", "format", "--standalone", "-t",
                                      self.cluster_id, "-c", str(config)),
                           check=True, capture_output=True, timeout=120)
        logged = self.log.stat().st_size if self.log.exists() else 0  # a restart appends to the log
        with open(self.workdir / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(self._java("kafka.Kafka", str(config)), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KafkaUnavailable(f"the broker exited with {self.proc.returncode}: {self.tail()}")
            if self.log.exists() and "Kafka Server started" in self.log.read_bytes()[logged:].decode(errors="replace"):
                return self
            time.sleep(0.3)
        self.stop()
        raise KafkaUnavailable(f"the broker did not start in {timeout_s:.0f} s: {self.tail()}")

    def version(self, bootstrap: str | None = None) -> str:
        """The Kafka version of the broker a client reaches at ``bootstrap``: the cluster id the
        client is told must be the one this broker was formatted with, and the version is the one
        that broker process logged at start ("Kafka version: ...")."""
        from confluent_kafka.admin import AdminClient

        cluster = AdminClient({"bootstrap.servers": bootstrap or self.internal_bootstrap}).list_topics(timeout=10)
        assert cluster.cluster_id == self.cluster_id, (cluster.cluster_id, self.cluster_id)
        found = re.findall(r"Kafka version: (\S+)", self.log.read_text(errors="replace"))
        assert found, "the broker did not log its version"
        return found[-1]

    def tail(self, chars: int = 3000) -> str:
        text = ""
        for name in ("stdout.log", "server.log"):
            path = self.workdir / name
            if path.exists():
                text += f"--- {name}\n" + path.read_text(errors="replace")[-chars:]
        return text

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Stop, delete every log and the metadata, start again empty on the same ports: the
        cluster re-created (a new cluster id), as after losing its disks."""
        self.stop()
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
        self.start()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def _cluster_id() -> str:
    """A random cluster id as Kafka's ``Uuid.randomUuid`` makes one: never starting with '-'
    (a command line would take it for an option)."""
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def main() -> None:
    """``python -m tests.apache_kafka [DIR]``: a broker for development, until Ctrl-C."""
    import sys
    import tempfile

    workdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="apache-kafka-"))
    broker = ApacheKafka(workdir).start()
    print(f"Apache Kafka {KAFKA_VERSION} at {broker.bootstrap} (data and logs in {workdir}); Ctrl-C stops it",
          flush=True)
    try:
        while broker.proc is not None and broker.proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
