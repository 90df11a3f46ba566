"""The one configuration model, validated at start.

Keys are camelCase as in the seed's scenario YAML.  Unknown keys are errors (``extra="forbid"``)
so a typo never silently falls back to a default.  ``${VAR}`` in any string is replaced by the
environment variable VAR (an unset variable is an error naming it); that is the only way values
come from the environment, so there is no chain of fallback keys.

One module on purpose (longer than 400 lines): it is the reference of every key, read top to
bottom next to docs/configuration.md, with each cross-key rule beside the keys it relates.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stream_app.resources import AVRO_DIR, SCHEMAS_DIR

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConfigError(Exception):
    """A configuration problem; the message names the offending key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class KafkaOAuth(_Model):
    """SASL OAUTHBEARER: where the worker gets its access tokens.

    ``oidc``: the OAuth 2.0 client-credentials grant at ``tokenEndpointUrl`` (Azure Event Hubs,
    Confluent Cloud, Keycloak, Okta and most OIDC providers); the secret comes from an
    environment variable or a mounted file, never the config.  ``aws-msk-iam``: Amazon MSK's IAM
    access control, a token signed with the pod's AWS credentials (IRSA, an instance role), no
    secret at all (needs the ``msk`` extra).
    """

    method: Literal["oidc", "aws-msk-iam"] = "oidc"
    tokenEndpointUrl: str | None = Field(default=None, pattern=r"^https?://")
    clientId: str | None = None
    clientSecretEnv: str | None = None
    clientSecretFile: str | None = None
    # space-separated scopes the token endpoint is asked for (Azure: "<resource>/.default")
    scope: str | None = None
    # a private CA for the token endpoint's TLS (else the system's trust store)
    caFile: str | None = None
    # aws-msk-iam: the cluster's region (else the AWS SDK's default region)
    region: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaOAuth:
        if self.method == "oidc":
            if not self.tokenEndpointUrl or not self.clientId or not (self.clientSecretEnv or self.clientSecretFile):
                raise ValueError("kafka.security.oauth: oidc needs tokenEndpointUrl, clientId and "
                                 "clientSecretEnv or clientSecretFile")
            if self.clientSecretEnv and self.clientSecretFile:
                raise ValueError("kafka.security.oauth: set clientSecretEnv or clientSecretFile, not both")
            if self.region:
                raise ValueError("kafka.security.oauth.region: only for method aws-msk-iam")
        elif self.tokenEndpointUrl or self.clientId or self.clientSecretEnv or self.clientSecretFile or self.scope:
            raise ValueError("kafka.security.oauth: aws-msk-iam takes no token endpoint, client or scope "
                             "(the token is signed with the pod's AWS credentials)")
        return self


class KafkaSecurity(_Model):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    saslMechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    username: str | None = None
    # The password is never written in the config: name an environment variable or a mounted file.
    passwordEnv: str | None = None
    passwordFile: str | None = None
    # saslMechanism OAUTHBEARER: how tokens are obtained
    oauth: KafkaOAuth | None = None
    caFile: str | None = None
    certFile: str | None = None
    keyFile: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        sasl = self.protocol.startswith("SASL")
        if self.saslMechanism == "OAUTHBEARER":
            if self.oauth is None:
                raise ValueError("kafka.security.oauth: saslMechanism OAUTHBEARER needs the oauth settings")
            if self.username or self.passwordEnv or self.passwordFile:
                raise ValueError("kafka.security: OAUTHBEARER takes no username or password (see kafka.security.oauth)")
        elif self.oauth is not None:
            raise ValueError("kafka.security.oauth: only with saslMechanism OAUTHBEARER")
        elif sasl and (not self.saslMechanism or not self.username or not (self.passwordEnv or self.passwordFile)):
            raise ValueError("kafka.security: SASL needs saslMechanism, username and passwordEnv or passwordFile")
        if sasl and not self.saslMechanism:
            raise ValueError("kafka.security.saslMechanism: required with protocol " + self.protocol)
        if not sasl and (self.saslMechanism or self.username or self.passwordEnv or self.passwordFile or self.oauth):
            raise ValueError(f"kafka.security: SASL settings given but protocol is {self.protocol}")
        if self.passwordEnv and self.passwordFile:
            raise ValueError("kafka.security: set passwordEnv or passwordFile, not both")
        if self.protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and (self.caFile or self.certFile or self.keyFile):
            raise ValueError(f"kafka.security: TLS files given but protocol {self.protocol} does not use TLS")
        if bool(self.certFile) != bool(self.keyFile):
            raise ValueError("kafka.security: certFile and keyFile go together")
        return self


class KafkaSettings(_Model):
    bootstrapServers: str = Field(min_length=1)
    inputTopics: list[str] = Field(min_length=1)
    journalTopic: str = "clearing-journal"
    deadLetterTopic: str = "clearing-dead-letter"
    # Partitions of every input topic; Faust's table changelogs are co-partitioned with them.
    topicPartitions: int = Field(default=1, ge=1)
    # Replication of the internal topics (table changelogs); 3 on a production cluster.
    replicationFactor: int = Field(default=1, ge=1)
    sessionTimeoutMs: int = Field(default=6000, ge=1000)
    rebalanceTimeoutMs: int = Field(default=10000, ge=1000)
    heartbeatIntervalMs: int = Field(default=1000, ge=100)
    commitIntervalMs: int = Field(default=1000, ge=100)
    # max.partition.fetch.bytes: what one fetch returns per partition.  Faust's 1 MiB default
    # leaves the worker waiting on broker round trips between batches; the fetch loop stays
    # bounded by what it buffers (one fetch per partition) and by aiokafka's 50 MiB per request.
    maxPartitionFetchBytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # fetch.max.wait.ms: how long the broker holds a fetch for partitions without new data.  The
    # consumer keeps one fetch per broker in flight, so a busy partition waits behind the long
    # poll of idle ones on the same broker (Faust's fixed 1500 ms measured as 1 s stalls of the
    # file stage); each idle fetch costs the broker one request per this interval.
    fetchMaxWaitMs: int = Field(default=100, ge=1, le=30_000)
    # The largest record the dead-letter and journal topics take (the broker's or topic's
    # message.max.bytes): a dead-letter envelope beyond it goes without the original value.
    maxMessageBytes: int = Field(default=1_000_000, ge=16 * 1024)
    # fileScope: window: partitions of the internal repartition topic (the file stage's input and
    # the unit of file ownership); the input topics' partition count when unset.
    repartitionPartitions: int | None = Field(default=None, ge=1)
    # Retention of the repartition topic: it must hold a window's records until its files are
    # written (window size + grace + the longest lag you want to survive).
    repartitionRetentionMs: int = Field(default=7 * 24 * 3600 * 1000, ge=3600 * 1000)
    security: KafkaSecurity = KafkaSecurity()
    # The embedded development broker (Tansu) can list stale end offsets; Faust's table recovery
    # would then stop early and miss the newest facts and checkpoints.  true: on every
    # rebalance, confirm each changelog's end by reading to end-of-partition with a second
    # client.  Needless on Kafka (a listed end is right there), where it costs time inside the
    # rebalance and read ACLs for a throwaway group; the demo and the tests turn it on.
    confirmChangelogEnds: bool = False

    @property
    def repartition_partitions(self) -> int:
        return self.repartitionPartitions or self.topicPartitions


def _instant_ms(text: str) -> int:
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (end it with Z or +HH:MM)")
    return int(parsed.timestamp() * 1000)


class SchemaRegistrySettings(_Model):
    """A Confluent-API schema registry (Confluent Platform or Cloud, Karapace, Apicurio's ccompat API)."""

    # one URL, or several separated by commas (tried in turn)
    url: str = Field(min_length=1, pattern=r"^https?://")
    # "key:secret" (a Confluent Cloud API key) in an environment variable, never in the config
    basicAuthEnv: str | None = None
    # a static bearer token in an environment variable, with the logical cluster and identity
    # pool the registry expects beside it (Confluent Cloud OAuth)
    bearerTokenEnv: str | None = None
    logicalCluster: str | None = None
    identityPoolId: str | None = None
    caFile: str | None = None
    certFile: str | None = None
    keyFile: str | None = None
    timeoutS: float = Field(default=10.0, gt=0)
    # register the journal and dead-letter schemas under <topic>-value and write the ids the
    # registry gives; false: the fixed ids of codecs/event_schemas.py (one per schema version)
    registerEventSchemas: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> SchemaRegistrySettings:
        if self.basicAuthEnv and self.bearerTokenEnv:
            raise ValueError("input.schemaRegistry: set basicAuthEnv or bearerTokenEnv, not both")
        if bool(self.bearerTokenEnv) != bool(self.logicalCluster and self.identityPoolId):
            raise ValueError("input.schemaRegistry: bearerTokenEnv, logicalCluster and identityPoolId go together")
        if self.keyFile and not self.certFile:
            raise ValueError("input.schemaRegistry: keyFile needs certFile")
        return self


class InputSettings(_Model):
    format: Literal["avro", "json"] = "avro"
    eventTimeField: str = Field(default="matched_at", min_length=1)
    # Confluent-API schema registry; when unset, ids are resolved from ``avroSchemas``.
    schemaRegistry: SchemaRegistrySettings | None = None
    # Schema id (as written in the wire format) -> .avsc file, relative to the config file.
    avroSchemas: dict[int, str] = Field(default_factory=lambda: {1: str(AVRO_DIR / "matched_record.avsc")})
    # JSON only: fields converted to Decimal (money is never float).
    decimalFields: list[str] = Field(default_factory=lambda: ["amount"])
    maxRecordBytes: int = Field(default=1_048_576, ge=1)
    # Avro only: read record bodies in a helper process (one more core for the hot path; see
    # stream_app/codecs/decode_process.py).  false: decode in the worker process.
    decodeProcess: bool = True
    # JSON only: an object holding a key twice is a dead letter (DUPLICATE_KEY), or lastWins
    # keeps the last value as JSON parsers do.
    duplicateKeys: Literal["reject", "lastWins"] = "reject"
    # JSON only: a decimal field sent as a JSON number (not a string).  exact: its literal as
    # sent, parsed without a float (more than 38 digits is a BAD_DECIMAL dead letter); reject:
    # a NUMBER_AMOUNT dead letter.  Never a rounded amount.
    jsonNumberAmounts: Literal["exact", "reject"] = "exact"
    # Sample records (a JSON object per line, as the input would decode; relative to the config
    # file): preflight renders the templates or the pack against them.  Needed for JSON input
    # and with a schema registry, where there is no local schema to make a sample from.
    sampleFile: str | None = None
    # Plausible event times, [minEventTime, maxEventTime) in ISO-8601 with a zone: a record
    # outside is dead-lettered (EVENT_TIME_OUT_OF_RANGE) instead of opening a window that can
    # never close.  Fixed bounds, not the wall clock, so replay decides the same.
    # And at most this far ahead of the partition's watermark (its highest event time so far);
    # null: no bound.  Not the wall clock, so replay decides the same.
    maxFutureMs: int | None = Field(default=86_400_000, ge=0)
    minEventTime: str = "2000-01-01T00:00:00Z"
    maxEventTime: str = "2100-01-01T00:00:00Z"

    @field_validator("minEventTime", "maxEventTime")
    @classmethod
    def _instant(cls, value: str) -> str:
        _instant_ms(value)
        return value

    @model_validator(mode="after")
    def _event_time_range(self) -> InputSettings:
        if not 0 <= self.min_event_ms < self.max_event_ms <= 253_402_300_799_999:
            raise ValueError("input: minEventTime must be before maxEventTime, both within 1970..9999")
        return self

    @property
    def min_event_ms(self) -> int:
        return _instant_ms(self.minEventTime)

    @property
    def max_event_ms(self) -> int:
        return _instant_ms(self.maxEventTime)


class WindowSettings(_Model):
    sizeMs: int = Field(default=6 * 3600 * 1000, ge=1000)
    graceMs: int = Field(default=0, ge=0)
    # A partition with no new records for this long closes its windows whose end (+grace)
    # has passed on the wall clock, so an idle partition never holds a window open forever.
    idleTimeoutMs: int = Field(default=30_000, ge=100)
    # Clearing cycles: windows aligned to a daily cut-off (local HH:MM) in this IANA time zone,
    # DST-correct (a cycle spanning a change is an hour shorter or longer).  UTC 00:00 = plain
    # UTC windows aligned to the epoch.
    timeZone: str = "UTC"
    cutoff: str = Field(default="00:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")

    @field_validator("timeZone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
        return value

    @property
    def cutoff_ms(self) -> int:
        hours, minutes = self.cutoff.split(":")
        return (int(hours) * 60 + int(minutes)) * 60_000

    @model_validator(mode="after")
    def _cycles(self) -> WindowSettings:
        if (self.timeZone != "UTC" or self.cutoff != "00:00") and 86_400_000 % self.sizeMs:
            raise ValueError("worker.window.sizeMs must divide 24 hours when timeZone or cutoff is set "
                             f"(got {self.sizeMs})")
        return self


class NegativeAmounts(_Model):
    field: str = Field(min_length=1)
    values: list[str] = Field(min_length=1)


class TotalsSettings(_Model):
    amountField: str = "amount"
    currencyField: str | None = "currency"
    # Records whose ``field`` is one of ``values`` (e.g. transaction_type REFUND, REVERSAL) count
    # negative in the totals (debits); the others positive (credits).
    negative: NegativeAmounts | None = None


class Parties(_Model):
    senderId: str = Field(min_length=1)
    receiverId: str = Field(min_length=1)


class SchemaRef(_Model):
    id: str = Field(min_length=1)
    version: str = Field(min_length=1)
    # Your own copy of the pack's XSD (e.g. the official ISO 20022 schema), instead of the pack's
    # output.xml.xsd; relative to the config file.
    xsd: str | None = None


class GroupByExpression(_Model):
    """A ``groupBy`` member computed from the record with the mapping expression language
    (docs/configuration.md), e.g. credit and debit from the transaction type."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    expr: str = Field(min_length=1)

    @field_validator("expr")
    @classmethod
    def _compiles(cls, value: str) -> str:
        from stream_app.core.structured.expressions import ExpressionError, compile_expression

        try:
            compile_expression(value)
        except ExpressionError as exc:
            raise ValueError(f"not a valid expression: {exc}") from None
        return value


class WorkerSettings(_Model):
    mode: Literal["template", "structured"] = "template"
    # window: one file per file window (window + groupBy values) across every input partition,
    # routed through a repartition topic (business files).  partition: files per source
    # partition (the key includes it), like Kafka Connect's S3 sink.
    fileScope: Literal["window", "partition"] = "window"
    # Sender and receiver of the files (templates: sender_id, receiver_id; packs the same names).
    parties: Parties | None = None
    # Structured mode: the schema pack schemas/<id>/<version>/pack.yaml.
    schema_: SchemaRef | None = Field(default=None, alias="schema")
    # Structured mode: XML documents of 1 MiB and more are checked against the pack's XSD in a
    # helper process (a second core); false checks them in the worker process.
    xsdProcess: bool = True
    # Streaming append (seed V1): records go to an on-disk spool as they arrive, so memory does
    # not grow with the window.  A start-time setting: spools are rebuilt from committed offsets.
    streamingAppendEnabled: bool = False
    # The seed's name for the window length in streaming mode; same meaning as window.sizeMs.
    streamingWindowMs: int | None = Field(default=None, ge=1000)
    window: WindowSettings = WindowSettings()
    maxRecordsPerFile: int = Field(default=1000, ge=1)
    # Further part limits, cut greedily in file order (core/limits.py; docs/configuration.md):
    # the absolute amounts of one currency in a part (totals.amountField / currencyField) ...
    maxAmountPerFile: Decimal | None = Field(default=None, gt=0)
    # ... and the bytes of a file: its detail bytes stay within maxBytesPerFile less
    # frameReserveBytes (for the header and trailer); a larger file is never written.
    maxBytesPerFile: int | None = Field(default=None, ge=1024)
    frameReserveBytes: int = Field(default=4096, ge=0)
    # Wall-clock flush of a part that has been open this long. Off by default because such
    # boundaries depend on timing: replay reproduces them only from the recorded offset ranges.
    flushIntervalMs: int | None = Field(default=None, ge=1)
    maxBufferedRecords: int = Field(default=50_000, ge=1)
    # What reaching maxBufferedRecords does: false (the default) moves the records of the
    # largest open part (window, in window scope) to disk under spoolDir until it is cut, so
    # files stay a function of the records; true cuts that part early instead (reason
    # "pressure"), which makes files depend on how fast the worker caught up.
    pressureCut: bool = False
    lateRecords: Literal["deadLetter", "currentWindow"] = "deadLetter"
    # One file per window and per value of each member: a record field, or {name, expr}.
    groupBy: list[str | GroupByExpression] = Field(default_factory=list)
    headerTemplate: str = ""
    recordTemplate: str | None = None
    footerTemplate: str = ""
    fileNameTemplate: str = Field(min_length=1)
    totals: TotalsSettings = TotalsSettings()
    writeRetryInitialMs: int = Field(default=500, ge=1)
    writeRetryMaxMs: int = Field(default=30_000, ge=1)
    # Liveness watchdog: /readyz answers 503 when work is pending (lag, or parts to write) and
    # nothing was processed, written or committed for this long.
    stallTimeoutMs: int = Field(default=300_000, ge=1000)
    # Records per fetched batch (max.poll.records).  Each batch is decoded as a pipelined stream of
    # chunks; the helper process idles between batches, so larger batches keep it busier.
    batchSize: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _mode_settings(self) -> WorkerSettings:
        if self.mode == "template":
            if not self.recordTemplate:
                raise ValueError("worker.recordTemplate is required with mode: template")
            if self.schema_ is not None:
                raise ValueError("worker.schema applies to mode: structured only")
        else:
            if self.schema_ is None:
                raise ValueError("worker.schema (id and version) is required with mode: structured")
            templates = [k for k in ("headerTemplate", "recordTemplate", "footerTemplate") if getattr(self, k)]
            if templates:
                raise ValueError(f"worker.{templates[0]} applies to mode: template only; the schema pack "
                                 "defines the layout in structured mode")
        if self.streamingWindowMs is not None:
            if not self.streamingAppendEnabled:
                raise ValueError("worker.streamingWindowMs applies only with worker.streamingAppendEnabled: true")
            if "sizeMs" in self.window.model_fields_set and self.window.sizeMs != self.streamingWindowMs:
                raise ValueError("worker.streamingWindowMs and worker.window.sizeMs disagree; set one of them")
        return self

    @field_validator("maxAmountPerFile", mode="before")
    @classmethod
    def _exact_amount(cls, value: Any) -> Any:
        if isinstance(value, float):  # YAML reads 1000000.50 as a binary float: not exact
            raise ValueError("write the amount as a string (e.g. \"1000000.50\"), so it is exact")
        return value

    @model_validator(mode="after")
    def _limits(self) -> WorkerSettings:
        if self.maxBytesPerFile is not None and self.maxBytesPerFile <= self.frameReserveBytes:
            raise ValueError(f"worker.maxBytesPerFile ({self.maxBytesPerFile}) must be larger than "
                             f"worker.frameReserveBytes ({self.frameReserveBytes})")
        return self

    @property
    def window_size_ms(self) -> int:
        return self.streamingWindowMs or self.window.sizeMs

    @property
    def group_names(self) -> list[str]:
        """The names of the groupBy members (``group.<name>`` in file names and layouts)."""
        return [g if isinstance(g, str) else g.name for g in self.groupBy]

    @property
    def group_fields(self) -> list[str]:
        """The record fields the groupBy members read."""
        from stream_app.core.structured.expressions import compile_expression

        fields: list[str] = []
        for member in self.groupBy:
            names = [member] if isinstance(member, str) else sorted(compile_expression(member.expr)[1])
            fields.extend(n for n in names if n not in fields)
        return fields

    @property
    def group_specs(self) -> list[str | tuple[str, str]]:
        """groupBy as the core's ``WindowAssigner`` takes it: field names, or (name, expression)."""
        return [g if isinstance(g, str) else (g.name, g.expr) for g in self.groupBy]

    @model_validator(mode="after")
    def _group_names_unique(self) -> WorkerSettings:
        if len(set(self.group_names)) != len(self.group_names):
            raise ValueError("worker.groupBy: member names must be unique")
        return self

    @model_validator(mode="after")
    def _buffer_holds_a_file(self) -> WorkerSettings:
        # (in streaming mode parts wait on disk, so the in-memory bound does not limit them)
        if not self.streamingAppendEnabled and self.maxBufferedRecords < self.maxRecordsPerFile:
            raise ValueError(
                "worker.maxBufferedRecords must be >= worker.maxRecordsPerFile "
                f"({self.maxBufferedRecords} < {self.maxRecordsPerFile})"
            )
        return self


class _SinkCommon(_Model):
    manifest: bool = True
    # gzip (deterministic: no name, zero mtime); file names must then end in .gz
    compression: Literal["none", "gzip"] = "none"


class LocalSinkSettings(_SinkCommon):
    type: Literal["local"] = "local"
    localTargetDir: str = Field(min_length=1)
    fileMode: str = "0640"

    @field_validator("fileMode")
    @classmethod
    def _octal(cls, value: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3}", value):
            raise ValueError("must be an octal permission string such as '0640'")
        return value

    @property
    def file_mode_bits(self) -> int:
        return int(self.fileMode, 8)


class S3SinkSettings(_SinkCommon):
    """Credentials are never configured here: the standard AWS chain (env, files, IRSA) applies."""

    type: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    region: str | None = None
    endpointUrl: str | None = None  # S3-compatible stores (MinIO, Ceph, ...)
    sse: Literal["none", "AES256", "aws:kms"] = "none"
    kmsKeyId: str | None = None
    storageClass: str | None = None
    partSizeMb: int = Field(default=8, ge=5, le=5120)
    maxAttempts: int = Field(default=5, ge=1, le=20)
    timeoutSeconds: float = Field(default=30.0, gt=0)
    presignExpirySeconds: int | None = Field(default=3600, ge=1, le=604800)
    # At start, abort multipart uploads under the prefix older than this (a crashed run's leftovers).
    staleUploadSeconds: int = Field(default=3600, ge=0)

    @model_validator(mode="after")
    def _kms(self) -> S3SinkSettings:
        if self.kmsKeyId and self.sse != "aws:kms":
            raise ValueError("sink.kmsKeyId needs sink.sse: aws:kms")
        if self.prefix.startswith("/") or ".." in self.prefix:
            raise ValueError("sink.prefix must be relative and must not contain '..'")
        return self


class SftpDestinationSettings(_Model):
    """One SFTP server that every file is delivered to once it is durable in the sink
    (``delivery/sftp.py``; docs/delivery.md)."""

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")  # in metrics, events and the outbox key
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)
    username: str = Field(min_length=1)
    # The private key (OpenSSH or PEM), e.g. from a mounted secret; a passphrase, if any, from the
    # environment variable this names (never in the file).
    privateKeyFile: str = Field(min_length=1)
    passphraseEnv: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # Pinned host keys (known_hosts format): an unknown or changed key is a terminal error.
    knownHostsFile: str = Field(min_length=1)
    remoteDir: str = Field(default=".", min_length=1)
    # {name} (the sink's file name), {stem}, {ext}, {part}, {window} (window start, UTC YYYYMMDDHHMM)
    remoteName: str = Field(default="{name}", min_length=1)
    connectTimeoutSeconds: float = Field(default=10.0, gt=0)
    # One remote operation (open, write, rename, stat); a longer silence is a transient failure.
    timeoutSeconds: float = Field(default=60.0, gt=0)
    fsync: bool = True  # where the server offers fsync@openssh.com
    maxParallel: int = Field(default=4, ge=1, le=64)  # uploads at once on the one connection
    retryInitialMs: int = Field(default=1_000, ge=10)
    retryMaxMs: int = Field(default=300_000, ge=10)

    @field_validator("remoteName")
    @classmethod
    def _remote_name(cls, value: str) -> str:
        from stream_app.core.naming import UnsafeFileName, remote_file_name

        try:
            remote_file_name(value, "SAMPLE_20260101.csv", 1, 0)
        except (KeyError, ValueError, IndexError, UnsafeFileName) as exc:
            raise ValueError(f"not a usable name template: {exc}") from None
        return value


class DeliverySettings(_Model):
    sftp: list[SftpDestinationSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> DeliverySettings:
        names = [d.name for d in self.sftp]
        if len(names) != len(set(names)):
            raise ValueError("delivery.sftp: destination names must be unique")
        return self


SinkSettings = Annotated[LocalSinkSettings | S3SinkSettings, Field(discriminator="type")]
_SINK_TAGS = {"local", "s3"}


class AppSettings(_Model):
    # Also the Kafka consumer group id and the prefix of the state tables' changelog topics.
    appId: str = Field(default="stream-app", pattern=r"^[A-Za-z0-9._-]+$")
    workerId: str = Field(default_factory=lambda: os.environ.get("HOSTNAME", "stream-app-0"))
    kafka: KafkaSettings
    input: InputSettings = InputSettings()
    worker: WorkerSettings
    sink: SinkSettings
    # After a file is durable in the sink (which stays the system of record): where it goes next.
    delivery: DeliverySettings = DeliverySettings()
    logLevel: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    logFormat: Literal["text", "json"] = "text"
    webPort: int | None = Field(default=None, ge=1, le=65535)
    # Address the web port (probes, metrics) binds to; e.g. 127.0.0.1 behind a sidecar.
    webHost: str = Field(default="0.0.0.0", min_length=1)
    # Faust's local data directory; a fresh temporary directory when unset.
    dataDir: str | None = None
    # Where schema packs live (structured mode), relative to the config file.
    schemasDir: str = str(SCHEMAS_DIR)
    # Streaming mode: where open parts are spooled (a fresh temporary directory when unset).
    spoolDir: str | None = None

    @property
    def repartition_topic(self) -> str:
        """The internal topic between the routing and the file stage (fileScope: window)."""
        return f"{self.appId}-files-repartition"

    @property
    def input_partitions(self) -> tuple[tuple[str, int], ...]:
        return tuple((t, p) for t in self.kafka.inputTopics for p in range(self.kafka.topicPartitions))


def _expand_env(node: Any, path: str) -> Any:
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str):
        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REF.sub(repl, node)
    return node


def dump_config(settings: AppSettings) -> str:
    """The effective configuration as YAML, with credentials in URLs masked (passwords are never
    in the settings: only the name of their environment variable or file)."""
    data = settings.model_dump(mode="json", by_alias=True)

    def mask(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: mask(v) for k, v in node.items()}
        if isinstance(node, list):
            return [mask(v) for v in node]
        if isinstance(node, str):
            return re.sub(r"(://)[^/@\s]+@", r"\1****@", node)
        return node

    return yaml.safe_dump(mask(data), sort_keys=False)


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) > 1 and loc[0] == "sink" and loc[1] in _SINK_TAGS:
            del loc[1]  # pydantic puts the union tag in the path; users never wrote it
        key = ".".join(str(p) for p in loc) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def _resolve_relative_paths(settings: AppSettings, base: Path) -> AppSettings:
    schemas = {
        sid: str(p if Path(p).is_absolute() else (base / p).resolve()) for sid, p in settings.input.avroSchemas.items()
    }
    sink = settings.sink
    if isinstance(sink, LocalSinkSettings) and not Path(sink.localTargetDir).is_absolute():
        sink = sink.model_copy(update={"localTargetDir": str((base / sink.localTargetDir).resolve())})
    schemas_dir = Path(settings.schemasDir)
    sample = settings.input.sampleFile
    if sample is not None and not Path(sample).is_absolute():
        sample = str((base / sample).resolve())
    worker = settings.worker
    ref = worker.schema_
    if ref is not None and ref.xsd is not None and not Path(ref.xsd).is_absolute():
        worker = worker.model_copy(update={"schema_": ref.model_copy(update={"xsd": str((base / ref.xsd).resolve())})})
    delivery = settings.delivery.model_copy(update={"sftp": [
        d.model_copy(update={key: str((base / getattr(d, key)).resolve()) for key in ("privateKeyFile", "knownHostsFile")
                             if not Path(getattr(d, key)).is_absolute()}) for d in settings.delivery.sftp]})
    return settings.model_copy(update={
        "delivery": delivery,
        "input": settings.input.model_copy(update={"avroSchemas": schemas, "sampleFile": sample}),
        "worker": worker,
        "sink": sink,
        "schemasDir": str(schemas_dir if schemas_dir.is_absolute() else (base / schemas_dir).resolve()),
    })


def parse_config(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> AppSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    try:
        settings = AppSettings.model_validate(_expand_env(data, ""))
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    return _resolve_relative_paths(settings, base_dir or Path.cwd())


def load_config(path: str | Path) -> AppSettings:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path), path.resolve().parent)
