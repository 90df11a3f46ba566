"""The Helm chart as a platform team reviews it: a strict values schema, the recommended
labels and name overrides, overridable security contexts, no service-account token, an
optional NetworkPolicy, the spool's ephemeral storage, the right Service type, OAUTHBEARER
values and NOTES that tell the truth.  Rendered by the Helm library (helm-python-sdk)."""

from __future__ import annotations

import json

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests.deploy.test_deploy import CHART, REGISTRY, container, render, worker_config

SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def _validate(values: dict) -> None:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(chart.merge_values(values))


@pytest.mark.parametrize("values, key", [
    ({"replicaCountt": 2}, "replicaCountt"),
    ({"serviceMonitor": {"enabled": True, "label": {"release": "x"}}}, "label"),
    ({"kafka": {"bootstrapServers": "k:9092", "sasl": {"enabled": False, "mechansim": "PLAIN"}}}, "mechansim"),
    ({"persistence": {"enabeld": False}}, "enabeld"),
    ({"networkPolicy": {"enabled": True, "kafka": {"too": []}}}, "too"),
    ({"image": {"repository": "r", "tagg": "1"}}, "tagg"),
])
def test_a_typo_in_the_values_fails_naming_the_key(values, key):
    with pytest.raises(helm.HelmError) as err:
        _validate(values)
    assert key in str(err.value)


def test_the_schema_is_draft_07_and_strict_everywhere_the_chart_owns_the_keys():
    """Draft-07 is what every Helm 3.x validates (gojsonschema) as well as Helm 4's validator."""
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(SCHEMA).validate({**defaults, **REGISTRY})
    for example in sorted((CHART / "ci").glob("*.yaml")):
        jsonschema.Draft7Validator(SCHEMA).validate({**defaults, **yaml.safe_load(example.read_text())})
    # every object of the chart's own values is closed; open ones are Kubernetes objects or the worker config
    open_objects = {"global", "config", "podSecurityContext", "securityContext", "resources", "podAnnotations",
                    "nodeSelector", "affinity", "avroSchemas"}

    def walk(node: dict, where: str) -> None:
        if where.split(".")[0] in open_objects:
            return
        if node.get("type") == "object" and node.get("properties"):
            assert node.get("additionalProperties") is False, where
            for name, child in node["properties"].items():
                walk(child, name if not where else f"{where}.{name}")

    walk(SCHEMA, "")
    assert set(defaults) <= set(SCHEMA["properties"]), set(defaults) - set(SCHEMA["properties"])


def test_recommended_labels_and_name_overrides():
    m = render()
    labels = m["StatefulSet"][0]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "worker" and labels["app.kubernetes.io/part-of"] == "clearing"
    assert labels["app.kubernetes.io/version"] == "0.4.0" and labels["app.kubernetes.io/managed-by"] == "Helm"
    assert m["StatefulSet"][0]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    assert container(m, "StatefulSet")["image"] == "ghcr.io/example/stream-app:0.4.0"  # the appVersion
    named = render({"nameOverride": "clearing-files", "partOf": "card-clearing"})
    assert named["StatefulSet"][0]["metadata"]["name"] == "clearing-clearing-files"
    assert named["Service"][0]["spec"]["selector"]["app.kubernetes.io/name"] == "clearing-files"
    assert named["StatefulSet"][0]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "card-clearing"
    full = render({"fullnameOverride": "cfw"})
    assert {d["metadata"]["name"] for kind in ("StatefulSet", "Service", "ConfigMap", "ServiceAccount")
            for d in full[kind]} == {"cfw"}
    assert full["StatefulSet"][0]["spec"]["serviceName"] == "cfw"


def test_security_contexts_and_grace_period_are_overridable_and_no_token_is_mounted():
    m = render()
    pod = m["StatefulSet"][0]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and m["ServiceAccount"][0]["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["terminationGracePeriodSeconds"] == 30
    # OpenShift's restricted SCC assigns the UID and fsGroup itself (null removes a default key)
    openshift = render({"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
                        "terminationGracePeriodSeconds": 120})
    pod = openshift["StatefulSet"][0]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["terminationGracePeriodSeconds"] == 120
    hardened = render({"securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                           "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}})
    assert container(hardened, "StatefulSet")["securityContext"]["runAsNonRoot"] is True
    existing = render({"serviceAccount": {"create": False, "name": "clearing-irsa"}})
    assert "ServiceAccount" not in existing
    assert existing["StatefulSet"][0]["spec"]["template"]["spec"]["serviceAccountName"] == "clearing-irsa"


def test_ephemeral_storage_is_requested_for_the_spool_unless_set():
    assert container(render({"spool": {"sizeLimit": "4Gi"}}), "StatefulSet")["resources"]["requests"][
        "ephemeral-storage"] == "4Gi"
    own = render({"resources": {"requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "20Gi"},
                                "limits": {"memory": "2Gi"}}})
    assert container(own, "StatefulSet")["resources"]["requests"]["ephemeral-storage"] == "20Gi"


def test_the_service_is_headless_only_for_the_statefulset():
    assert render()["Service"][0]["spec"]["clusterIP"] == "None"  # headless: local sink, a volume per replica
    s3 = render({"persistence": {"enabled": True}, "s3": {"enabled": True, "bucket": "files"}})
    assert "Deployment" in s3 and "clusterIP" not in s3["Service"][0]["spec"]
    assert s3["Service"][0]["spec"]["type"] == "ClusterIP"


def test_service_monitor_labels_reach_the_prometheus_selector():
    m = render({"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                   "scrapeTimeout": "10s"}})
    monitor = m["ServiceMonitor"][0]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/name"] == "stream-app"
    assert monitor["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"


def test_network_policy_allows_kafka_registry_s3_and_the_token_endpoint_and_scrapes_from_monitoring():
    assert "NetworkPolicy" not in render()
    kafka_peer = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    m = render({"networkPolicy": {"enabled": True, "kafka": {"to": kafka_peer, "ports": [9096]}},
                "s3": {"enabled": True, "bucket": "files"},
                "kafka": {"bootstrapServers": "k:9096", "sasl": {
                    "enabled": True, "mechanism": "OAUTHBEARER",
                    "oauth": {"tokenEndpointUrl": "https://idp/token", "clientId": "c", "existingSecret": "oauth"}}}})
    (policy,) = m["NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "stream-app",
                                                  "app.kubernetes.io/instance": "clearing"}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}]
    rules = [(sorted(p["port"] for p in r["ports"]), r.get("to")) for r in spec["egress"]]
    assert ([53, 53], None) in rules and ([9096], kafka_peer) in rules
    assert ([8081], None) in rules and rules.count(([443], None)) == 2  # S3 and the token endpoint
    assert not any(ports == [22] for ports, _ in rules)  # no delivery target named: no rule
    narrow = render({"networkPolicy": {"enabled": True, "dns": False,
                                       "delivery": {"to": [{"ipBlock": {"cidr": "192.0.2.10/32"}}], "ports": [2222]}}},
                    schema={"avroSchemas": {"1": "{}"}})
    rules = [(sorted(p["port"] for p in r["ports"]), r.get("to")) for r in narrow["NetworkPolicy"][0]["spec"]["egress"]]
    assert rules == [([9092], None), ([2222], [{"ipBlock": {"cidr": "192.0.2.10/32"}}])]


def test_oauthbearer_values_give_the_worker_its_oauth_config_and_the_secret_from_a_secret(monkeypatch):
    m = render({"kafka": {"bootstrapServers": "k:9093", "tls": {"enabled": True, "existingSecret": "ca"},
                          "sasl": {"enabled": True, "mechanism": "OAUTHBEARER", "oauth": {
                              "tokenEndpointUrl": "https://login.example.com/t/oauth2/v2.0/token",
                              "clientId": "clearing", "scope": "kafka/.default", "existingSecret": "kafka-oauth"}}}})
    env = {e["name"]: e for e in container(m, "StatefulSet")["env"]}
    assert env["KAFKA_OAUTH_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-oauth",
                                                                              "key": "client-secret"}
    assert "KAFKA_PASSWORD" not in env
    settings = worker_config(m, {"KAFKA_BOOTSTRAP_SERVERS": "k:9093"}, monkeypatch)
    security = settings.kafka.security
    assert (security.protocol, security.saslMechanism) == ("SASL_SSL", "OAUTHBEARER")
    assert security.oauth is not None and security.oauth.clientSecretEnv == "KAFKA_OAUTH_CLIENT_SECRET"
    assert (security.oauth.clientId, security.oauth.scope) == ("clearing", "kafka/.default")
    msk = render({"kafka": {"bootstrapServers": "b-1.msk:9098", "tls": {"enabled": True, "existingSecret": "ca"},
                            "sasl": {"enabled": True, "mechanism": "OAUTHBEARER",
                                     "oauth": {"method": "aws-msk-iam", "region": "eu-west-1"}}}})
    settings = worker_config(msk, {"KAFKA_BOOTSTRAP_SERVERS": "b-1.msk:9098"}, monkeypatch)
    assert settings.kafka.security.oauth is not None and settings.kafka.security.oauth.method == "aws-msk-iam"
    assert not any(e["name"].startswith("KAFKA_OAUTH") for e in container(msk, "StatefulSet")["env"])
    with pytest.raises(helm.HelmError, match="existingSecret"):  # oidc without its secret
        _validate({"kafka": {"bootstrapServers": "k", "sasl": {"enabled": True, "mechanism": "OAUTHBEARER",
                                                                "oauth": {"tokenEndpointUrl": "https://i/t",
                                                                          "clientId": "c"}}}})


def test_notes_say_how_to_check_readiness_and_where_the_files_go():
    def notes(values: dict) -> str:
        out = helm.Chart.load(str(CHART)).render({**REGISTRY, **values}, name="clearing", namespace="payments")
        return next(text for path, text in out.items() if path.endswith("NOTES.txt"))

    local = notes({})
    assert "rollout status statefulset/clearing-stream-app" in local and "/readyz" in local
    assert "/data/clearing-out on each replica's own volume" in local
    s3 = notes({"s3": {"enabled": True, "bucket": "acme-files", "prefix": "out/"}})
    assert "rollout status deployment/clearing-stream-app" in s3 and "s3://acme-files/out/" in s3
    assert "serves /metrics, /healthz and /readyz only" in s3
