"""S3 sink against moto's HTTP server (a real S3 API endpoint on localhost)."""

from __future__ import annotations

import hashlib
import http.client
import http.server
import threading
import urllib.request

import boto3
import pytest
from moto.server import ThreadedMotoServer

from stream_app.config import S3SinkSettings, parse_config
from stream_app.sinks.base import FileConflict, NotOwner, SinkError
from stream_app.sinks.s3 import S3Sink
from stream_app.tools.broker import free_port

MB = 1024 * 1024


@pytest.fixture(scope="module")
def moto_url():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    # the standard credential chain: environment variables
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket(moto_url, request):
    name = f"clearing-{abs(hash(request.node.name)) % 10**8}"
    client(moto_url).create_bucket(Bucket=name)
    return name


def client(url):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def sink(url, bucket, **extra) -> S3Sink:
    return S3Sink(S3SinkSettings(type="s3", bucket=bucket, endpointUrl=url, region="us-east-1", prefix="out/",
                                 **extra))


def test_small_file_put_is_idempotent_and_conflicts_are_refused(moto_url, bucket):
    s = sink(moto_url, bucket)
    result = s.write("A.txt", lambda: [b"hello ", b"world\n"])
    assert result.location == f"s3://{bucket}/out/A.txt" and not result.already_present
    head = client(moto_url).head_object(Bucket=bucket, Key="out/A.txt")
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"hello world\n").hexdigest()
    assert s.write("A.txt", lambda: [b"hello world\n"]).already_present
    with pytest.raises(FileConflict):
        s.write("A.txt", lambda: [b"other\n"])
    with urllib.request.urlopen(result.url) as resp:  # the presigned GET works
        assert resp.read() == b"hello world\n"


def test_large_files_go_up_as_multipart_streamed_in_parts(moto_url, bucket):
    s = sink(moto_url, bucket, partSizeMb=5)
    blocks = [bytes([i]) * MB for i in range(12)]
    result = s.write("BIG.dat", lambda: iter(blocks))
    c = client(moto_url)
    body = c.get_object(Bucket=bucket, Key="out/BIG.dat")["Body"].read()
    assert body == b"".join(blocks) and result.bytes == 12 * MB
    assert c.head_object(Bucket=bucket, Key="out/BIG.dat", PartNumber=1)["PartsCount"] == 3
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_failure_mid_upload_leaves_no_object_and_no_orphan_upload(moto_url, bucket):
    s = sink(moto_url, bucket, partSizeMb=5)
    calls = {"n": 0}

    def failing_chunks():
        calls["n"] += 1
        for i in range(12):
            if calls["n"] == 2 and i == 8:  # second pass (the upload), after the first part went up
                raise OSError(5, "Input/output error")
            yield b"x" * MB

    with pytest.raises(OSError):
        s.write("BROKEN.dat", failing_chunks)
    c = client(moto_url)
    assert "Contents" not in c.list_objects_v2(Bucket=bucket, Prefix="out/BROKEN")
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("size_mb", [0, 12])  # one PUT, a multipart upload
def test_a_writer_that_lost_its_partition_puts_no_object(moto_url, bucket, size_mb):
    s = sink(moto_url, bucket, partSizeMb=5)

    def not_owner() -> None:
        raise NotOwner("GONE.dat", "partition in/0 is no longer assigned to this worker")

    with pytest.raises(NotOwner):
        s.write("GONE.dat", lambda: [b"x" * max(1, size_mb * MB)], not_owner)
    c = client(moto_url)
    assert "Contents" not in c.list_objects_v2(Bucket=bucket, Prefix="out/GONE")
    assert c.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


@pytest.mark.parametrize("extra, expected", [
    ({"sse": "AES256"}, {"ServerSideEncryption": "AES256"}),
    ({"sse": "aws:kms", "kmsKeyId": "alias/clearing"}, {"ServerSideEncryption": "aws:kms"}),
    ({"storageClass": "STANDARD_IA"}, {"StorageClass": "STANDARD_IA"}),
])
def test_encryption_and_storage_class_headers(moto_url, bucket, extra, expected):
    sink(moto_url, bucket, **extra).write("E.txt", lambda: [b"x"])
    head = client(moto_url).head_object(Bucket=bucket, Key="out/E.txt")
    for key, value in expected.items():
        assert head[key] == value
    if "kmsKeyId" in extra:
        assert "clearing" in head["SSEKMSKeyId"] or head["SSEKMSKeyId"]


def test_terminal_errors_are_classified(moto_url):
    with pytest.raises(SinkError) as err:
        sink(moto_url, "no-such-bucket-here").write("A.txt", lambda: [b"x"])
    assert err.value.error_class in ("NoSuchBucket", "404") and not err.value.transient


class _FlakyProxy:
    """Forwards to moto but answers 503 SlowDown to the first ``failures`` requests."""

    def __init__(self, upstream: str, failures: int) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        proxy = self
        self.failures, self.seen = failures, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    payload = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(payload)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload)
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(host, int(port))
                conn.request(self.command, self.path, body, dict(self.headers))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_transient_errors_are_retried_with_backoff(moto_url, bucket):
    proxy = _FlakyProxy(moto_url, failures=2)
    try:
        result = sink(proxy.url, bucket, maxAttempts=5, presignExpirySeconds=None).write("R.txt", lambda: [b"retry"])
        assert not result.already_present and proxy.seen >= 4
        exhausted = _FlakyProxy(moto_url, failures=100)
        with pytest.raises(SinkError) as err:
            sink(exhausted.url, bucket, maxAttempts=2).write("R2.txt", lambda: [b"x"])
        assert err.value.transient  # SlowDown, or 503 for a HEAD (no body to carry the code)
        exhausted.server.shutdown()
    finally:
        proxy.server.shutdown()


def test_manifest_object_per_window_is_written_after_the_file(moto_url, bucket):
    s = sink(moto_url, bucket)
    for part in range(2):
        s.write(f"W_{part}.txt", lambda: [b"x"])
        entry = {"name": f"W_{part}.txt", "file_key": "in/0/1772409600000", "part": part}
        s.record_manifest(entry["name"], entry)
        s.record_manifest(entry["name"], entry)  # idempotent
    body = client(moto_url).get_object(Bucket=bucket, Key=s.manifest_key("in/0/1772409600000"))["Body"].read()
    assert [line.count(b'"name"') for line in body.splitlines()] == [1, 1]


def test_pipeline_to_s3_gives_the_same_bytes_as_the_local_sink(moto_url, bucket, tmp_path):
    from stream_app.replay.run import run_records
    from tests.pipeline.test_files import _files, pipeline, raws

    records = raws(200, partitions=2)
    local = tmp_path / "local"
    local.mkdir()
    run_records(pipeline(local, maxRecordsPerFile=50)[0], records)
    p, pub, _ = pipeline(tmp_path, sink=sink(moto_url, bucket), maxRecordsPerFile=50)
    run_records(p, records)
    c = client(moto_url)
    for name, body in _files(local).items():
        assert c.get_object(Bucket=bucket, Key=f"out/{name}")["Body"].read() == body
    created = pub.of_type("created")
    assert created and all(e["url"] and e["location"].startswith(f"s3://{bucket}/out/") for e in created)


def test_verify_audits_an_s3_sink_too(moto_url, bucket, tmp_path):
    """The replay audit on S3: stored names (not manifests), strays and manifest fields."""
    from stream_app.replay.run import run_records
    from stream_app.replay.verify import VerifyingSink
    from tests.pipeline.test_files import pipeline, raws

    records = raws(120, partitions=2)
    run_records(pipeline(tmp_path, sink=sink(moto_url, bucket), maxRecordsPerFile=50)[0], records)
    stored = sink(moto_url, bucket).stored_names()
    assert stored and not any(n.startswith("manifests/") for n in stored)
    client(moto_url).put_object(Bucket=bucket, Key="out/STRAY.txt", Body=b"x")
    entry = next(e for e in sink(moto_url, bucket).manifest_entries())
    key = sink(moto_url, bucket).manifest_key(entry["file_key"])
    body = client(moto_url).get_object(Bucket=bucket, Key=key)["Body"].read()
    client(moto_url).put_object(Bucket=bucket, Key=key, Body=body.replace(
        f'"records":{entry["records"]}'.encode(), f'"records":{entry["records"] + 1}'.encode(), 1))
    audit = VerifyingSink(sink(moto_url, bucket))
    run_records(pipeline(tmp_path, sink=audit, maxRecordsPerFile=50)[0], records)
    audit.finish(complete=True)
    assert "STRAY       STRAY.txt: stored, but replay produces no such file" in audit.problems
    assert any(p.startswith(f"MANIFEST    {entry['name']}: records is") for p in audit.problems), audit.problems
    assert len(audit.problems) == 2, audit.problems


def test_s3_config_validation(tmp_path):
    from tests.helpers import config_dict

    data = config_dict(tmp_path)
    data["sink"] = {"type": "s3", "bucket": "clearing", "kmsKeyId": "k"}
    with pytest.raises(Exception, match="sink.kmsKeyId needs sink.sse"):
        parse_config(data)
    data["sink"] = {"type": "s3", "bucket": "clearing", "accessKey": "AKIA..."}
    with pytest.raises(Exception, match="sink.accessKey: unknown key"):
        parse_config(data)


def test_discard_partials_aborts_leftover_uploads_under_the_prefix_only(moto_url, bucket):
    c = client(moto_url)
    c.create_multipart_upload(Bucket=bucket, Key="out/CRASHED.dat")
    c.create_multipart_upload(Bucket=bucket, Key="elsewhere/OTHER.dat")
    # (moto reports a fixed initiation time in 2010, so every upload there counts as stale)
    assert sink(moto_url, bucket).discard_partials() == 1
    assert [u["Key"] for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == ["elsewhere/OTHER.dat"]
