"""Shared test helpers (no fixtures here; see conftest.py)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from stream_app.config import AppSettings, parse_config
from stream_app.core.records import RawRecord

TEMPLATE_WORKER: dict[str, Any] = {
    "mode": "template",
    # files per source partition (the names carry it); business-file tests set fileScope: window
    "fileScope": "partition",
    # idle close needs 5 s without records after catching up: long enough that a partition starved
    # by the fetcher on a busy 2-core machine is not mistaken for an idle one
    "window": {"sizeMs": 3_600_000, "graceMs": 0, "idleTimeoutMs": 5000},
    "maxRecordsPerFile": 1000,
    "fileNameTemplate": "F_{{ window_start | ts('%Y%m%dT%H%M') }}_p{{ partition }}_{{ part }}.txt",
    "headerTemplate": "H|{{ file_key }}|{{ record_count }}\n",
    "recordTemplate": "D|{{ seq }}|{{ record.record_id }}|{{ record.amount | money }}|{{ record.currency }}\n",
    "footerTemplate": "T|{{ totals.count }}"
                      "{% for c, t in totals.by_currency.items() %}|{{ c }}={{ t.amount | money }}{% endfor %}\n",
}


# Bootstrap addresses of embedded (Tansu) brokers, filled in by conftest.py: their listed end
# offsets can be stale, so worker configs for them turn kafka.confirmChangelogEnds on; for any
# other broker (Apache Kafka) every quirk workaround stays off.
EMBEDDED_BOOTSTRAPS: set[str] = set()


def embedded_broker(bootstrap: str) -> bool:
    return bootstrap in EMBEDDED_BOOTSTRAPS


def config_dict(out_dir: Path, bootstrap: str = "127.0.0.1:9", topic: str = "in", **worker: Any) -> dict:
    merged = copy.deepcopy(TEMPLATE_WORKER)
    for key, value in worker.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return {
        "appId": "test-app",
        "workerId": "test-worker",
        "kafka": {"bootstrapServers": bootstrap, "inputTopics": [topic], "confirmChangelogEnds": embedded_broker(bootstrap)},
        "worker": merged,
        "sink": {"type": "local", "localTargetDir": str(out_dir)},
    }


def settings_for(out_dir: Path, **worker: Any) -> AppSettings:
    return parse_config(config_dict(out_dir, **worker))


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class CollectingPublisher:
    def __init__(self) -> None:
        self.events: list[dict] = []
        self.dead: list[tuple[RawRecord, str, str]] = []

    def journal(self, event: dict, partition_key: str) -> None:
        self.events.append(event)

    def dead_letter(self, raw: RawRecord, reason: str, detail: str) -> None:
        self.dead.append((raw, reason, detail))

    def of_type(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event_type"] == kind]


AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_bucket(monkeypatch: Any, bucket: str = "clearing") -> Iterator[tuple[str, Any]]:
    """A real S3 API (moto's server) on a loopback port with ``bucket`` created: (url, client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from stream_app.tools.broker import free_port

    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    try:
        yield url, client
    finally:
        server.stop()


def s3_sink(url: str, bucket: str = "clearing", prefix: str = "out/") -> dict:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpointUrl": url, "region": "us-east-1",
            "presignExpirySeconds": None}
