"""The schema registry, through confluent-kafka's ``SchemaRegistryClient`` (auth, TLS, caching).

Used for two things: resolving the schema id of an input record, and registering the journal
and dead-letter schemas under their topics' subjects (``<topic>-value``, the default
TopicNameStrategy), so that events carry ids a Confluent deserializer resolves to the right schema.

Secrets come from environment variables named in the config and are read when the client is
built.  The client's configuration is a plain dict, so the decode helper process gets the same one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from stream_app.codecs.event_schemas import DEAD_LETTER_SCHEMA_ID, JOURNAL_SCHEMA_ID
from stream_app.config import AppSettings, ConfigError, SchemaRegistrySettings
from stream_app.ops.security import tls_files


class RegistryUnavailable(Exception):
    """The schema registry could not be asked; transient, the batch is retried."""


def _env(key: str, name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise ConfigError(f"input.schemaRegistry.{key}: environment variable {name} is not set")
    return value


def client_conf(registry: SchemaRegistrySettings) -> dict[str, Any]:
    """``SchemaRegistryClient`` configuration, secrets included (never log it)."""
    conf: dict[str, Any] = {"url": registry.url, "timeout": registry.timeoutS}
    if registry.basicAuthEnv:
        conf["basic.auth.user.info"] = _env("basicAuthEnv", registry.basicAuthEnv)
    if registry.bearerTokenEnv:
        conf.update({"bearer.auth.credentials.source": "STATIC_TOKEN",
                     "bearer.auth.token": _env("bearerTokenEnv", registry.bearerTokenEnv),
                     "bearer.auth.logical.cluster": registry.logicalCluster,
                     "bearer.auth.identity.pool.id": registry.identityPoolId})
    conf.update(tls_files(registry.caFile, registry.certFile, registry.keyFile))
    return conf


class SchemaLookup:
    """Schema id -> schema text (None: the registry does not know the id)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client = SchemaRegistryClient(conf)

    def schema_text(self, schema_id: int) -> str | None:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                return None
            # 401/403 (credentials), 5xx: nothing the record can help; the batch waits and retries
            raise RegistryUnavailable(f"schema registry answered HTTP {exc.http_status_code}: "
                                      f"{exc.error_message}") from None
        except Exception as exc:  # connection refused, TLS, timeouts (httpx's errors)
            raise RegistryUnavailable(f"schema registry unreachable: {type(exc).__name__}: {exc}") from None
        if schema.schema_type not in (None, "AVRO"):
            return None  # a JSON Schema or Protobuf id: not an Avro record this worker reads
        return schema.schema_str


@dataclass(frozen=True)
class EventSchemaIds:
    journal: int = JOURNAL_SCHEMA_ID
    dead_letter: int = DEAD_LETTER_SCHEMA_ID


def event_schema_ids(settings: AppSettings) -> EventSchemaIds:
    """The ids journal and dead-letter records carry: registered under their topics' subjects
    when a registry is configured (registering an identical schema again returns its id)."""
    registry = settings.input.schemaRegistry
    if registry is None or not registry.registerEventSchemas:
        return EventSchemaIds()
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from stream_app.resources import AVRO_DIR

    client = SchemaRegistryClient(client_conf(registry))

    def register(topic: str, file: str) -> int:
        text = json.dumps(json.loads((AVRO_DIR / file).read_text(encoding="utf-8")))
        try:
            return int(client.register_schema(f"{topic}-value", Schema(text, "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code == 409:  # incompatible with what the subject holds: needs a person
                raise ConfigError(f"input.schemaRegistry: subject {topic}-value refuses the {file} schema "
                                  f"(HTTP 409: {exc.error_message})") from None
            raise RegistryUnavailable(f"registering {topic}-value: HTTP {exc.http_status_code}: "
                                      f"{exc.error_message}") from None
        except Exception as exc:
            raise RegistryUnavailable(f"registering {topic}-value: {type(exc).__name__}: {exc}") from None

    kafka = settings.kafka
    return EventSchemaIds(register(kafka.journalTopic, "journal_event.avsc"),
                          register(kafka.deadLetterTopic, "dead_letter.avsc"))
