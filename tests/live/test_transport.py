"""live/transport.py against a real broker: a subscription waits for topics the cluster does
not list yet (a changelog topic Faust has just created), instead of a group assignment without
them for ``metadata.max.age.ms``."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaClient

from stream_app.live.transport import topics_missing_from_metadata
from stream_app.tools.broker import create_topics


@pytest.mark.both_brokers
def test_the_subscription_wait_returns_once_a_late_topic_is_listed_and_names_one_never_created(kafka_bootstrap):
    late, never = f"late-{uuid.uuid4().hex[:8]}", f"never-{uuid.uuid4().hex[:8]}"

    async def create_late() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(create_topics, kafka_bootstrap, {late: 2})

    async def scenario() -> tuple[set[str], float, set[str]]:
        client = AIOKafkaClient(bootstrap_servers=kafka_bootstrap)
        await client.bootstrap()
        try:
            started = time.monotonic()
            missing, _ = await asyncio.gather(topics_missing_from_metadata(client, {late}, timeout_s=30), create_late())
            waited = time.monotonic() - started
            return missing, waited, await topics_missing_from_metadata(client, {late, never}, timeout_s=1.0)
        finally:
            await client.close()

    missing, waited, still_missing = asyncio.run(scenario())
    assert missing == set() and 1.0 <= waited < 30  # waited for the topic, not for the deadline
    assert still_missing == {never}
