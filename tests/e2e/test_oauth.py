"""SASL OAUTHBEARER with OIDC client credentials, for both Kafka clients: librdkafka's own OIDC
(replay, tools, the worker's start-up and event producers) and aiokafka's token provider (the
Faust worker).  Tested against a local OIDC provider issuing RS256 JWTs and an Apache Kafka
broker that validates them against the provider's JWKS (the embedded broker has no
OAUTHBEARER)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_app.config import KafkaOAuth, parse_config
from stream_app.ops.problems import CREDENTIALS, UNREACHABLE, BrokerProblem
from stream_app.ops.security import OAuthTokenProvider
from tests.apache_kafka import KAFKA_VERSION, ApacheKafka
from tests.harness import LiveWorker, avro_values
from tests.helpers import config_dict, write_config
from tests.oidc import OidcProvider

SECRET_ENV = "STREAM_APP_TEST_OAUTH_SECRET"


@pytest.fixture
def idp():
    provider = OidcProvider({"clearing-worker": "s3cr3t:/+x"})
    yield provider
    provider.close()


def _oauth(idp: OidcProvider, **extra: object) -> KafkaOAuth:
    return KafkaOAuth(tokenEndpointUrl=idp.token_url, clientId="clearing-worker", clientSecretEnv=SECRET_ENV,
                      scope="kafka", **extra)  # type: ignore[arg-type]


def test_the_token_provider_caches_refreshes_and_classifies_failures(idp, monkeypatch):
    import asyncio

    monkeypatch.setenv(SECRET_ENV, "s3cr3t:/+x")
    provider = OAuthTokenProvider(_oauth(idp))
    first = asyncio.run(provider.token())
    assert first.count(".") == 2 and asyncio.run(provider.token()) == first and idp.issued == ["clearing-worker"]
    provider._refresh_at = time.time() - 1  # 80 % of the lifetime has passed
    time.sleep(1.1)  # a new iat, so a new token
    assert provider.current() != first and len(idp.issued) == 2
    monkeypatch.setenv(SECRET_ENV, "wrong")
    with pytest.raises(BrokerProblem, match="credentials refused: HTTP 401") as refused:
        OAuthTokenProvider(_oauth(idp)).current()
    assert refused.value.exit_code == CREDENTIALS
    down = KafkaOAuth(tokenEndpointUrl="http://127.0.0.1:9/token", clientId="c", clientSecretEnv=SECRET_ENV)
    with pytest.raises(BrokerProblem, match="unreachable") as unreachable:
        OAuthTokenProvider(down).current()
    assert unreachable.value.exit_code == UNREACHABLE


@pytest.mark.parametrize("security, says", [
    ({"protocol": "SASL_SSL", "saslMechanism": "OAUTHBEARER"}, "needs the oauth settings"),
    ({"protocol": "SASL_SSL", "saslMechanism": "OAUTHBEARER", "oauth": {"tokenEndpointUrl": "https://idp/t"}},
     "oidc needs tokenEndpointUrl, clientId"),
    ({"protocol": "SASL_SSL", "saslMechanism": "OAUTHBEARER", "username": "u",
      "oauth": {"tokenEndpointUrl": "https://idp/t", "clientId": "c", "clientSecretEnv": "S"}}, "no username"),
    ({"protocol": "SASL_SSL", "saslMechanism": "SCRAM-SHA-512", "username": "u", "passwordEnv": "P",
      "oauth": {"method": "aws-msk-iam"}}, "only with saslMechanism OAUTHBEARER"),
    ({"protocol": "SASL_SSL", "saslMechanism": "OAUTHBEARER",
      "oauth": {"method": "aws-msk-iam", "clientId": "c"}}, "aws-msk-iam takes no token endpoint"),
])
def test_oauth_settings_are_validated_naming_the_key(tmp_path, security, says):
    from stream_app.config import ConfigError

    data = config_dict(tmp_path)
    data["kafka"]["security"] = security
    with pytest.raises(ConfigError, match=says):
        parse_config(data)


def test_msk_iam_tokens_are_signed_locally_with_the_pods_aws_credentials(monkeypatch):
    """Amazon MSK's IAM access control through OAUTHBEARER: a SigV4-presigned kafka-cluster:Connect
    URL, base64url-encoded, made from the AWS credentials the SDK finds (IRSA in a pod)."""
    import base64
    import urllib.parse

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    provider = OAuthTokenProvider(KafkaOAuth(method="aws-msk-iam", region="eu-west-1"))
    token, expires = provider.token_and_expiry()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert url.startswith("https://kafka.eu-west-1.amazonaws.com/") and query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/") and "X-Amz-Signature" in query
    assert expires > time.time()


@pytest.fixture(scope="module")
def oauth_kafka(tmp_path_factory):
    """Apache Kafka whose client listener takes only OAUTHBEARER tokens of ``module_idp``."""
    idp = OidcProvider({"clearing-worker": "s3cr3t:/+x"})
    broker = ApacheKafka(tmp_path_factory.mktemp("oauth-kafka"), "SASL_PLAINTEXT", idp.broker_properties(),
                         idp.broker_system_properties()).start()
    try:
        assert broker.version() == KAFKA_VERSION
        yield broker, idp
    finally:
        broker.stop()
        idp.close()


def _secure(worker: LiveWorker, broker: ApacheKafka, idp: OidcProvider) -> None:
    """The worker talks to the OAUTHBEARER listener; the test itself uses the PLAINTEXT one."""
    worker.config_data["kafka"]["bootstrapServers"] = broker.bootstrap
    worker.config_data["kafka"]["security"] = {
        "protocol": "SASL_PLAINTEXT", "saslMechanism": "OAUTHBEARER",
        "oauth": {"tokenEndpointUrl": idp.token_url, "clientId": "clearing-worker", "clientSecretEnv": SECRET_ENV,
                  "scope": "kafka"}}
    write_config(worker.config_path, worker.config_data)


def _cli(args: list[str], secret: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, SECRET_ENV: secret})
    return proc.returncode, proc.stderr


@pytest.mark.e2e
def test_a_worker_and_the_tools_authenticate_with_oauthbearer(oauth_kafka, tmp_path):
    broker, idp = oauth_kafka
    worker = LiveWorker(broker.internal_bootstrap, tmp_path, partitions=2, maxRecordsPerFile=40)
    _secure(worker, broker, idp)
    worker.produce(avro_values(120, seed=5, span_hours=3.5))
    issued_before = len(idp.issued)
    worker.start(env={SECRET_ENV: "s3cr3t:/+x"})
    try:
        worker.wait_for(lambda: worker.committed() == {0: 60, 1: 60}, 120, what="every record committed")
    finally:
        assert worker.stop() == 0
    worker.assert_reference_files(tmp_path)
    assert len(idp.issued) - issued_before >= 2  # the Python provider (aiokafka) and librdkafka's OIDC
    # the tools through the same listener: the journal reads; a wrong secret is refused in one line
    code, err = _cli(["journal", "--config", str(worker.config_path), "--summary"], "s3cr3t:/+x")
    assert code == 0, err
    code, err = _cli(["journal", "--config", str(worker.config_path)], "wrong")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == CREDENTIALS and len(lines) == 1 and "credentials refused: HTTP 401" in lines[0], err
    refused = LiveWorker.replica(worker, tmp_path / "refused")
    refused.start(env={SECRET_ENV: "wrong"})
    assert refused.proc is not None and refused.proc.wait(timeout=60) == CREDENTIALS
    assert "credentials refused" in Path(refused.log).read_text()
