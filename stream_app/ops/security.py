"""Kafka security settings, applied the same way to every client: Faust (aiokafka) for the worker,
confluent-kafka for replay, the start-up check and the tools.

Secrets never live in the config file: the SASL password comes from an environment variable
(``passwordEnv``) or a mounted file (``passwordFile``), and is read only when a client is built.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any

from stream_app.config import KafkaSecurity
from stream_app.ops.problems import CredentialsMissing


def sasl_password(security: KafkaSecurity) -> str | None:
    if security.passwordEnv:
        value = os.environ.get(security.passwordEnv)
        if value is None:
            raise CredentialsMissing(f"kafka.security.passwordEnv: environment variable {security.passwordEnv} is not set")
        return value
    if security.passwordFile:
        try:
            return Path(security.passwordFile).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise CredentialsMissing(f"kafka.security.passwordFile: cannot read {security.passwordFile}: "
                              f"{exc.strerror}") from None
    return None


def confluent_security(security: KafkaSecurity) -> dict[str, Any]:
    """librdkafka properties for confluent-kafka clients."""
    conf: dict[str, Any] = {"security.protocol": security.protocol}
    if security.protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        conf.update({"sasl.mechanism": security.saslMechanism, "sasl.username": security.username,
                     "sasl.password": sasl_password(security)})
    if security.protocol in ("SSL", "SASL_SSL"):
        conf.update(tls_files(security.caFile, security.certFile, security.keyFile))
    return conf


def tls_files(ca: str | None, cert: str | None, key: str | None) -> dict[str, str]:
    """TLS files as librdkafka and confluent-kafka's schema-registry client both name them."""
    files = {"ssl.ca.location": ca, "ssl.certificate.location": cert, "ssl.key.location": key}
    return {name: path for name, path in files.items() if path}


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=security.caFile)
    if security.certFile:
        context.load_cert_chain(security.certFile, security.keyFile)
    return context


def faust_credentials(security: KafkaSecurity) -> Any:
    """``broker_credentials`` for the Faust app (None for PLAINTEXT)."""
    import faust

    if security.protocol == "PLAINTEXT":
        return None
    if security.protocol == "SSL":
        return faust.SSLCredentials(ssl_context(security))
    return faust.SASLCredentials(
        username=security.username, password=sasl_password(security), mechanism=security.saslMechanism,
        ssl_context=ssl_context(security) if security.protocol == "SASL_SSL" else None,
    )
