"""The schema registry through confluent-kafka's client: auth, lookups, event-schema registration.

No Confluent-API registry server can run here (docs/development.md, "Schema registry"):
Karapace is not on PyPI, Confluent's is not on Maven Central, and Apicurio Registry 3.3.3 is
served only in part (its schema-type modules are not).  So these tests run against
``RecordedRegistry``: an HTTP server that answers the requests the client makes with the
responses of the Confluent REST API reference (status codes, bodies and error codes as
documented), and checks the credentials.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from stream_app.codecs.avro import AvroDecoder, SchemaResolver, encode_confluent, load_schema
from stream_app.codecs.decode_process import ProcessAvroDecoder
from stream_app.codecs.registry import (
    DEAD_LETTER_SCHEMA_ID,
    JOURNAL_SCHEMA_ID,
    RegistryUnavailable,
    client_conf,
    event_schema_ids,
)
from stream_app.config import ConfigError, SchemaRegistrySettings, load_config
from stream_app.core.records import RawRecord
from stream_app.pipeline.deadletter import dead_letter
from stream_app.pipeline.journal import Journal, encode_events
from stream_app.resources import AVRO_DIR
from stream_app.tools.demo import matched_records
from tests.helpers import config_dict, write_config

SCHEMA_PATH = AVRO_DIR / "matched_record.avsc"
CREDENTIALS = "ABCKEY:s3cr3t/xyz"
JSON = "application/vnd.schemaregistry.v1+json"


class RecordedRegistry:
    """Confluent REST API: POST /subjects/{subject}/versions, GET /schemas/ids/{id}."""

    def __init__(self, credentials: str | None = CREDENTIALS, refuse: set[str] | None = None) -> None:
        registry = self
        self.subjects: dict[str, list[int]] = {}
        self.schemas: dict[int, str] = {}
        self.requests: list[tuple[str, str]] = []
        self._next_id = 100
        expected = None if credentials is None else "Basic " + base64.b64encode(credentials.encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", JSON)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                registry.requests.append((self.command, self.path))
                if expected is not None and self.headers.get("Authorization") != expected:
                    self._answer(401, {"error_code": 40101, "message": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if not self._authorized():
                    return
                path = self.path.split("?", 1)[0]
                if path.startswith("/schemas/ids/"):
                    schema_id = int(path.rsplit("/", 1)[-1])
                    if schema_id in registry.schemas:
                        self._answer(200, {"schema": registry.schemas[schema_id]})
                    else:
                        self._answer(404, {"error_code": 40403, "message": f"Schema {schema_id} not found"})
                    return
                self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path = self.path.split("?", 1)[0]
                subject = path.split("/")[2]
                if not path.endswith("/versions"):
                    self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                    return
                if subject in (refuse or set()):
                    self._answer(409, {"error_code": 409, "message": "Schema being registered is incompatible "
                                                                      "with an earlier schema for subject"})
                    return
                text = json.dumps(json.loads(body["schema"]))
                found = next((i for i, s in registry.schemas.items() if s == text), None)
                if found is None:
                    found = registry._next_id
                    registry._next_id += 1
                    registry.schemas[found] = text
                registry.subjects.setdefault(subject, [])
                if found not in registry.subjects[subject]:
                    registry.subjects[subject].append(found)
                self._answer(200, {"id": found})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, schema_text: str) -> int:
        schema_id = self._next_id
        self._next_id += 1
        self.schemas[schema_id] = json.dumps(json.loads(schema_text))
        return schema_id

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry():
    server = RecordedRegistry()
    yield server
    server.close()


@pytest.fixture
def auth(monkeypatch):
    monkeypatch.setenv("REGISTRY_AUTH", CREDENTIALS)


def _settings(tmp_path: Path, registry: RecordedRegistry, **options: Any):
    data = config_dict(tmp_path)
    data["input"] = {"schemaRegistry": {"url": registry.url, "basicAuthEnv": "REGISTRY_AUTH", **options}}
    return load_config(write_config(tmp_path / "c.yaml", data))


def test_lookups_use_basic_auth_and_the_client_cache(registry, auth):
    schema_id = registry.add(SCHEMA_PATH.read_text())
    conf = client_conf(SchemaRegistrySettings(url=registry.url, basicAuthEnv="REGISTRY_AUTH"))
    decoder = AvroDecoder(SchemaResolver(registry=conf), "matched_at", 1_000_000)
    sample = next(matched_records(1, seed=2))
    payload = encode_confluent(schema_id, load_schema(SCHEMA_PATH), sample)
    for _ in range(3):
        assert decoder.decode(RawRecord("t", 0, 1, None, None, payload)).value["record_id"] == sample["record_id"]
    assert [r for r in registry.requests if r[1].startswith(f"/schemas/ids/{schema_id}")] == [
        ("GET", registry.requests[0][1])]  # asked once


def test_wrong_credentials_hold_the_batch_back_and_an_unknown_id_is_a_dead_letter(registry, monkeypatch):
    from stream_app.codecs import DecodeError

    schema_id = registry.add(SCHEMA_PATH.read_text())
    monkeypatch.setenv("REGISTRY_AUTH", "ABCKEY:wrong")
    conf = client_conf(SchemaRegistrySettings(url=registry.url, basicAuthEnv="REGISTRY_AUTH"))
    with pytest.raises(RegistryUnavailable, match="HTTP 401"):
        SchemaResolver(registry=conf).get(schema_id)
    monkeypatch.setenv("REGISTRY_AUTH", CREDENTIALS)
    conf = client_conf(SchemaRegistrySettings(url=registry.url, basicAuthEnv="REGISTRY_AUTH"))
    decoder = AvroDecoder(SchemaResolver(registry=conf), "matched_at", 1_000_000)
    payload = encode_confluent(schema_id + 50, load_schema(SCHEMA_PATH), next(matched_records(1, seed=2)))
    with pytest.raises(DecodeError) as err:
        decoder.decode(RawRecord("t", 0, 1, None, None, payload))
    assert err.value.reason == "UNKNOWN_SCHEMA_ID"


def test_the_decode_helper_asks_the_registry_with_the_same_credentials(registry, auth):
    schema_id = registry.add(SCHEMA_PATH.read_text())
    conf = client_conf(SchemaRegistrySettings(url=registry.url, basicAuthEnv="REGISTRY_AUTH"))
    records = list(matched_records(20, seed=4))
    raws = [RawRecord("t", 0, i, None, None, encode_confluent(schema_id, load_schema(SCHEMA_PATH), r))
            for i, r in enumerate(records)]
    decoder = ProcessAvroDecoder({}, conf, "matched_at", 1_000_000)
    try:
        got = list(decoder.decode_many(raws))
    finally:
        decoder.close()
    assert [r.value["record_id"] for r in got] == [r["record_id"] for r in records]  # type: ignore[union-attr]


def test_event_schemas_are_registered_under_their_topics_and_confluents_deserializer_reads_them(
        tmp_path, registry, auth):
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    settings = _settings(tmp_path, registry)
    ids = event_schema_ids(settings)
    journal_topic, dead_topic = settings.kafka.journalTopic, settings.kafka.deadLetterTopic
    assert registry.subjects == {f"{journal_topic}-value": [ids.journal], f"{dead_topic}-value": [ids.dead_letter]}
    assert {ids.journal, ids.dead_letter}.isdisjoint({JOURNAL_SCHEMA_ID, DEAD_LETTER_SCHEMA_ID})
    assert event_schema_ids(settings) == ids  # a restart registers nothing new

    client = SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": CREDENTIALS})
    deserializer = AvroDeserializer(client)
    event = Journal("w1", settings.appId).flush_summary(1, 2, 3, 0)
    (payload,) = encode_events([event], ids.journal)
    read = deserializer(payload, SerializationContext(journal_topic, MessageField.VALUE))
    assert read["event_id"] == event["event_id"] and read["event_type"] == "flush-summary"
    envelope = dead_letter(RawRecord("in", 3, 44, 1_700_000_000_000, b"k", b"\x00bad"), "AVRO_DECODE_ERROR",
                           "bytes do not match", "w1", ids.dead_letter)
    read = deserializer(envelope, SerializationContext(dead_topic, MessageField.VALUE))
    assert (read["source_topic"], read["source_offset"], read["original_value"]) == ("in", 44, b"\x00bad")


def test_fixed_ids_without_registration(tmp_path, registry, auth):
    assert event_schema_ids(_settings(tmp_path, registry, registerEventSchemas=False)) == \
        event_schema_ids(load_config(write_config(tmp_path / "plain.yaml", config_dict(tmp_path))))
    assert registry.subjects == {}


def test_a_subject_that_refuses_the_schema_is_a_configuration_error(tmp_path, auth):
    server = RecordedRegistry(refuse={"journal-value"})
    try:
        data = config_dict(tmp_path)
        data["kafka"]["journalTopic"] = "journal"
        data["input"] = {"schemaRegistry": {"url": server.url, "basicAuthEnv": "REGISTRY_AUTH"}}
        with pytest.raises(ConfigError, match="journal-value refuses"):
            event_schema_ids(load_config(write_config(tmp_path / "c.yaml", data)))
    finally:
        server.close()


def test_client_settings_map_to_the_client_and_secrets_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SR_TOKEN", "tok")
    conf = client_conf(SchemaRegistrySettings(url="https://a:8081,https://b:8081", bearerTokenEnv="SR_TOKEN",
                                              logicalCluster="lsrc-1", identityPoolId="pool-2",
                                              caFile="/ca.pem", certFile="/c.pem", keyFile="/k.pem", timeoutS=3))
    assert conf == {"url": "https://a:8081,https://b:8081", "timeout": 3, "bearer.auth.credentials.source": "STATIC_TOKEN",
                    "bearer.auth.token": "tok", "bearer.auth.logical.cluster": "lsrc-1",
                    "bearer.auth.identity.pool.id": "pool-2", "ssl.ca.location": "/ca.pem",
                    "ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem"}
    from confluent_kafka.schema_registry import SchemaRegistryClient

    # the client accepts every key (it opens the TLS files at once, so those are left out here)
    SchemaRegistryClient({k: v for k, v in conf.items() if not k.startswith("ssl.")})
    with pytest.raises(ConfigError, match="basicAuthEnv: environment variable NOPE"):
        client_conf(SchemaRegistrySettings(url="https://a", basicAuthEnv="NOPE"))
    with pytest.raises(ValueError, match="go together"):
        SchemaRegistrySettings(url="https://a", bearerTokenEnv="SR_TOKEN")


def test_event_readers_resolve_the_writer_schema_by_id_with_two_registered_versions(registry, auth):
    """Journal events of two schema versions, each under the id the registry gave its version:
    the reader resolves each id and reads both into the current schema (Avro resolution fills
    the field the old version lacks); an unknown id and a wrong magic byte are named."""
    from stream_app.codecs.event_schemas import (
        JOURNAL_SCHEMA,
        JOURNAL_SCHEMA_V1,
        EventDecodeError,
        journal_reader,
    )
    from stream_app.codecs.registry import SchemaLookup

    v1_text = json.dumps({**json.loads((AVRO_DIR / "journal_event.avsc").read_text()),
                          "fields": json.loads((AVRO_DIR / "journal_event.avsc").read_text())["fields"][:-4]})
    v1_id = registry.add(v1_text)
    v2_id = registry.add((AVRO_DIR / "journal_event.avsc").read_text())
    conf = client_conf(SchemaRegistrySettings(url=registry.url, basicAuthEnv="REGISTRY_AUTH"))
    reader = journal_reader(SchemaLookup(conf).schema_text)
    event = Journal("w1", "app").flush_summary(1, 2, 3, 0)
    old = encode_confluent(v1_id, JOURNAL_SCHEMA_V1, {k: v for k, v in event.items() if k != "terminal"})
    new = encode_confluent(v2_id, JOURNAL_SCHEMA, {**event, "terminal": True})
    assert reader.decode(old)["terminal"] is False and reader.decode(old)["event_id"] == event["event_id"]
    assert reader.decode(new)["terminal"] is True
    with pytest.raises(EventDecodeError, match=f"unknown schema id {v2_id + 7} .*nor in the schema registry"):
        reader.decode(encode_confluent(v2_id + 7, JOURNAL_SCHEMA, event | {"terminal": False}))
    with pytest.raises(EventDecodeError, match="magic byte is 1, expected 0"):
        reader.decode(b"\x01" + new[1:])
    # without a registry only the local ids resolve, and the error says so
    with pytest.raises(EventDecodeError, match=f"unknown schema id {v1_id} .*no schema registry is configured"):
        journal_reader().decode(old)
