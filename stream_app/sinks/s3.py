"""S3 (and S3-compatible) sink.

An object becomes visible only when its upload completes: small files go up with one PUT, large
ones as a multipart upload streamed from the spool in ``partSizeMb`` parts (never whole in
memory) and aborted on any failure, so neither a partial object nor an orphan upload remains.
Credentials come from the standard AWS chain only (environment, shared files, instance/IRSA
roles).  Transient errors (throttling, 5xx, timeouts, connection resets) are retried by
botocore's standard retry mode (exponential backoff with jitter); what is left is classified
for the pipeline: transient -> retried again later, terminal -> ``write-failed`` and the window
does not commit until an operator fixes it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, cast

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ReadTimeoutError
from botocore.exceptions import ConnectionError as BotoConnectionError

from stream_app.config import S3SinkSettings
from stream_app.core.compression import ChunkSource
from stream_app.core.naming import check_file_name
from stream_app.ops.faults import failpoint
from stream_app.sinks.base import BeforePublish, FileConflict, NotOwner, SinkError, WriteResult

TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "RequestTimeout",
    "RequestTimeoutException", "InternalError", "ServiceUnavailable", "BadDigest", "IncompleteBody",
})
_UNSAFE_KEY = re.compile(r"[^A-Za-z0-9._=-]+")


def classify(exc: Exception) -> SinkError:
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        transient = code in TRANSIENT_CODES or status >= 500 or status == 429
        return SinkError(f"S3 {exc.operation_name} failed: {code}", code, transient)
    if isinstance(exc, NoCredentialsError):
        return SinkError("no AWS credentials in the standard chain", "NoCredentials", False)
    if isinstance(exc, (BotoConnectionError, ReadTimeoutError)):
        return SinkError(f"S3 unreachable: {type(exc).__name__}", type(exc).__name__, True)
    if isinstance(exc, BotoCoreError):
        return SinkError(f"S3 client error: {type(exc).__name__}", type(exc).__name__, True)
    raise exc


def _parts(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Re-block a chunk stream into parts of exactly ``size`` bytes (the last may be shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)


class S3Sink:
    def __init__(self, settings: S3SinkSettings) -> None:
        self._settings = settings
        config = Config(region_name=settings.region, retries={"mode": "standard", "max_attempts": settings.maxAttempts},
                        connect_timeout=settings.timeoutSeconds, read_timeout=settings.timeoutSeconds)
        self._client = boto3.client("s3", endpoint_url=settings.endpointUrl, config=config)
        self._bucket = settings.bucket
        self._part_size = settings.partSizeMb * 1024 * 1024

    def location(self, name: str) -> str:
        return f"s3://{self._bucket}/{self.key_for(name)}"

    def key_for(self, name: str) -> str:
        return f"{self._settings.prefix}{check_file_name(name)}"

    def _put_args(self, sha: str) -> dict[str, Any]:
        args: dict[str, Any] = {"Metadata": {"sha256": sha}}
        if self._settings.sse != "none":
            args["ServerSideEncryption"] = self._settings.sse
            if self._settings.kmsKeyId:
                args["SSEKMSKeyId"] = self._settings.kmsKeyId
        if self._settings.storageClass:
            args["StorageClass"] = self._settings.storageClass
        return args

    def check_writable(self) -> None:
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except Exception as exc:  # classified below; anything unexpected propagates
            raise classify(exc) from None

    def write(self, name: str, chunks: ChunkSource, before_publish: BeforePublish | None = None) -> WriteResult:
        key = self.key_for(name)
        try:
            failpoint("sink.write")
            digest, size = hashlib.sha256(), 0
            for chunk in chunks():  # first pass: the checksum goes into the object's metadata
                digest.update(chunk)
                size += len(chunk)
            sha = digest.hexdigest()
            existing = self._existing_sha(key)
            if existing is not None:
                if existing != sha:
                    raise FileConflict(name)
                return WriteResult(name, f"s3://{self._bucket}/{key}", size, sha, True, self._presign(key))
            if size <= self._part_size:
                if before_publish is not None:
                    before_publish()
                self._client.put_object(Bucket=self._bucket, Key=key, Body=b"".join(chunks()), **self._put_args(sha))
            else:
                self._multipart(key, chunks, sha, before_publish)
        except NotOwner:
            raise
        except Exception as exc:
            raise classify(exc) from None
        return WriteResult(name, f"s3://{self._bucket}/{key}", size, sha, False, self._presign(key))

    def _existing_sha(self, key: str) -> str | None:
        try:
            head = self._client.head_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head.get("Metadata", {}).get("sha256", "")

    def _multipart(self, key: str, chunks: ChunkSource, sha: str, before_publish: BeforePublish | None) -> None:
        upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=key, **self._put_args(sha))["UploadId"]
        try:
            done = []
            for number, body in enumerate(_parts(iter(chunks()), self._part_size), start=1):
                etag = self._client.upload_part(Bucket=self._bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                                Body=body)["ETag"]
                done.append({"PartNumber": number, "ETag": etag})
            if before_publish is not None:
                before_publish()
            self._client.complete_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id,
                                                   MultipartUpload={"Parts": done})
        except BaseException:
            try:
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # the bucket's lifecycle rule for incomplete uploads is the last resort
            raise

    def open_stored(self, name: str) -> BinaryIO:
        try:
            return cast(BinaryIO, self._client.get_object(Bucket=self._bucket, Key=self.key_for(name))["Body"])
        except Exception as exc:
            raise classify(exc) from None

    def stat(self, name: str) -> str | None:
        try:
            return self._existing_sha(self.key_for(name))
        except Exception as exc:
            raise classify(exc) from None

    def stored_names(self) -> list[str]:
        prefix, names = self._settings.prefix, []
        try:
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(prefix):]
                    if not name.startswith("manifests/"):
                        names.append(name)
        except Exception as exc:
            raise classify(exc) from None
        return sorted(names)

    def manifest_entries(self, window_start_ms: int | None = None) -> list[dict]:
        entries: list[dict] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=f"{self._settings.prefix}manifests/")
            for page in pages:
                for obj in page.get("Contents", []):
                    if window_start_ms is not None and str(window_start_ms) not in obj["Key"]:
                        continue
                    body = self._client.get_object(Bucket=self._bucket, Key=obj["Key"])["Body"].read()
                    entries.extend(orjson.loads(line) for line in body.splitlines() if line.strip())
        except Exception as exc:
            raise classify(exc) from None
        return [e for e in entries if window_start_ms is None or e["window_start"] == window_start_ms]

    def discard_partials(self) -> int:
        """Abort multipart uploads under the prefix that a crashed run left behind.

        Only uploads older than ``staleUploadSeconds`` are touched, so that another replica's
        upload in progress is left alone.
        """
        cutoff = datetime.now(UTC) - timedelta(seconds=self._settings.staleUploadSeconds)
        removed = 0
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self._bucket, Prefix=self._settings.prefix)
            for page in pages:
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        self._client.abort_multipart_upload(Bucket=self._bucket, Key=upload["Key"],
                                                            UploadId=upload["UploadId"])
                        removed += 1
        except Exception as exc:
            raise classify(exc) from None
        return removed

    def _presign(self, key: str) -> str | None:
        if not self._settings.presignExpirySeconds:
            return None
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self._bucket, "Key": key}, ExpiresIn=self._settings.presignExpirySeconds)

    def manifest_key(self, file_key: str) -> str:
        return f"{self._settings.prefix}manifests/{_UNSAFE_KEY.sub('_', file_key)}.jsonl"

    def record_manifest(self, name: str, entry: dict) -> None:
        """One manifest object per file window, rewritten with each new part (objects are immutable)."""
        if not self._settings.manifest:
            return
        key = self.manifest_key(entry["file_key"])
        try:
            try:
                current = self._client.get_object(Bucket=self._bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                    raise
                current = b""
            lines = [line for line in current.splitlines() if line.strip()]
            if any(orjson.loads(line)["name"] == name for line in lines):
                return
            lines.append(orjson.dumps(entry, option=orjson.OPT_SORT_KEYS))
            body = b"\n".join(lines) + b"\n"
            self._client.put_object(Bucket=self._bucket, Key=key, Body=body,
                                    **self._put_args(hashlib.sha256(body).hexdigest()))
        except Exception as exc:
            raise classify(exc) from None
