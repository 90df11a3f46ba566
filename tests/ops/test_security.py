"""Kafka security settings reach both client libraries the same way; secrets never sit in config."""

from __future__ import annotations

import ssl

import faust
import pytest
from click.testing import CliRunner

from stream_app.cli import main
from stream_app.config import ConfigError, parse_config
from stream_app.live.credentials import faust_credentials
from stream_app.ops.security import confluent_security
from tests.helpers import config_dict, write_config


def security(tmp_path, **values):
    data = config_dict(tmp_path)
    data["kafka"]["security"] = values
    return parse_config(data).kafka.security


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_from_environment(tmp_path, monkeypatch, mechanism):
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cret")
    sec = security(tmp_path, protocol="SASL_SSL", saslMechanism=mechanism, username="clearing",
                   passwordEnv="KAFKA_PASSWORD")
    conf = confluent_security(sec)
    assert conf == {"security.protocol": "SASL_SSL", "sasl.mechanism": mechanism, "sasl.username": "clearing",
                    "sasl.password": "s3cret"}
    creds = faust_credentials(sec)
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password, creds.mechanism.value) == ("clearing", "s3cret", mechanism)
    assert isinstance(creds.ssl_context, ssl.SSLContext)


def test_password_from_a_mounted_file(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    sec = security(tmp_path, protocol="SASL_PLAINTEXT", saslMechanism="PLAIN", username="u", passwordFile=str(secret))
    assert confluent_security(sec)["sasl.password"] == "from-file"
    assert faust_credentials(sec).ssl_context is None


def test_ssl_with_ca_and_client_certificate_paths(tmp_path):
    import subprocess

    key, cert = tmp_path / "client.key", tmp_path / "client.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=stream-app"], check=True, capture_output=True)
    sec = security(tmp_path, protocol="SSL", caFile=str(cert), certFile=str(cert), keyFile=str(key))
    assert confluent_security(sec) == {"security.protocol": "SSL", "ssl.ca.location": str(cert),
                                       "ssl.certificate.location": str(cert), "ssl.key.location": str(key)}
    assert isinstance(faust_credentials(sec), faust.SSLCredentials)


@pytest.mark.parametrize("values, message", [
    ({"protocol": "SASL_SSL", "saslMechanism": "PLAIN", "username": "u", "password": "plain"},
     "kafka.security.password: unknown key"),
    ({"protocol": "SASL_SSL", "saslMechanism": "PLAIN", "username": "u"}, "passwordEnv or passwordFile"),
    ({"protocol": "PLAINTEXT", "username": "u"}, "SASL settings given"),
    ({"protocol": "SASL_SSL", "saslMechanism": "GSSAPI", "username": "u", "passwordEnv": "X"}, "saslMechanism"),
    ({"protocol": "SSL", "certFile": "/c"}, "certFile and keyFile go together"),
])
def test_bad_security_settings_name_the_key(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        security(tmp_path, **values)


def test_missing_secret_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    sec = security(tmp_path, protocol="SASL_SSL", saslMechanism="PLAIN", username="u", passwordEnv="NOPE")
    with pytest.raises(ConfigError, match="NOPE is not set"):
        confluent_security(sec)


def test_config_dump_masks_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_PASSWORD", "s3cret")
    data = config_dict(tmp_path)
    data["kafka"]["security"] = {"protocol": "SASL_SSL", "saslMechanism": "PLAIN", "username": "u",
                                 "passwordEnv": "KAFKA_PASSWORD"}
    data["input"] = {"schemaRegistry": {"url": "https://svc:registry-pass@registry:8081"}}
    result = CliRunner().invoke(main, ["config", "--config", str(write_config(tmp_path / "c.yaml", data))])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and "registry-pass" not in result.output
    assert "https://****@registry:8081" in result.output and "passwordEnv: KAFKA_PASSWORD" in result.output
