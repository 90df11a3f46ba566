"""Kafka security settings, applied the same way to every client: Faust (aiokafka) for the worker,
confluent-kafka for replay, the start-up check and the tools.

Secrets never live in the config file: the SASL password (or the OAuth client secret) comes
from an environment variable or a mounted file, and is read only when a client is built.

SASL OAUTHBEARER: librdkafka (confluent-kafka) fetches and refreshes OIDC tokens itself
(``sasl.oauthbearer.method=oidc``); the Faust worker's aiokafka clients get theirs from
``OAuthTokenProvider``, the same client-credentials grant in Python.  Amazon MSK's IAM tokens
are signed locally with the pod's AWS credentials for both.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from aiokafka.abc import AbstractTokenProvider

from stream_app.config import KafkaOAuth, KafkaSecurity
from stream_app.ops.problems import CREDENTIALS, UNREACHABLE, BrokerProblem, CredentialsMissing


def _secret(env: str | None, file: str | None, key: str) -> str | None:
    if env:
        value = os.environ.get(env)
        if value is None:
            raise CredentialsMissing(f"{key}Env: environment variable {env} is not set")
        return value
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").rstrip("\n")
        except OSError as exc:
            raise CredentialsMissing(f"{key}File: cannot read {file}: {exc.strerror}") from None
    return None


def oauth_client_secret(oauth: KafkaOAuth) -> str | None:
    return _secret(oauth.clientSecretEnv, oauth.clientSecretFile, "kafka.security.oauth.clientSecret")


class OAuthTokenProvider(AbstractTokenProvider):
    """Access tokens for SASL OAUTHBEARER, cached until shortly before they expire.

    aiokafka calls ``token()`` on every connection's SASL handshake (the interface of
    ``aiokafka.abc.AbstractTokenProvider``); the HTTP request runs in a thread so the event loop
    never blocks on the identity provider.  A refused client (HTTP 400/401) is a credentials
    problem; anything else (a timeout, HTTP 5xx) is transient and the next handshake retries.
    """

    # refresh when this fraction of a token's lifetime has passed (librdkafka uses 80 % too)
    REFRESH_AT = 0.8

    def __init__(self, oauth: KafkaOAuth) -> None:
        self.oauth = oauth
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        if oauth.method == "oidc":
            oauth_client_secret(oauth)  # a missing secret is reported at start, not at the first connection

    async def token(self) -> str:
        return await asyncio.to_thread(self.current)

    def extensions(self) -> dict[str, str]:
        return {}

    def current(self) -> str:
        with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                token, lifetime_s = self._fetch()
                self._token, self._refresh_at = token, time.time() + lifetime_s * self.REFRESH_AT
            return self._token

    def token_and_expiry(self) -> tuple[str, float]:
        """confluent-kafka's ``oauth_cb`` answer: the token and, as its expiry, the time this
        provider refreshes it (80 % of its lifetime), so librdkafka asks again before it lapses."""
        token = self.current()
        return token, self._refresh_at

    def _fetch(self) -> tuple[str, float]:
        if self.oauth.method == "aws-msk-iam":
            return _msk_iam_token(self.oauth.region)
        return _client_credentials_token(self.oauth)


def _client_credentials_token(oauth: KafkaOAuth) -> tuple[str, float]:
    """RFC 6749 section 4.4: the client authenticates with HTTP Basic (section 2.3.1), as librdkafka does."""
    assert oauth.tokenEndpointUrl and oauth.clientId
    secret = oauth_client_secret(oauth) or ""
    form = {"grant_type": "client_credentials", **({"scope": oauth.scope} if oauth.scope else {})}
    basic = base64.b64encode(f"{urllib.parse.quote(oauth.clientId, safe='')}:"
                             f"{urllib.parse.quote(secret, safe='')}".encode()).decode()
    request = urllib.request.Request(oauth.tokenEndpointUrl, data=urllib.parse.urlencode(form).encode(),
                                     headers={"Authorization": f"Basic {basic}", "Accept": "application/json",
                                              "Content-Type": "application/x-www-form-urlencoded"})
    context = ssl.create_default_context(cafile=oauth.caFile) if oauth.tokenEndpointUrl.startswith("https") else None
    where = f"OAuth token endpoint {oauth.tokenEndpointUrl}"
    try:
        with urllib.request.urlopen(request, timeout=15, context=context) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        kind = CREDENTIALS if exc.code in (400, 401, 403) else UNREACHABLE
        raise BrokerProblem(f"{where}: credentials refused: HTTP {exc.code}" if kind == CREDENTIALS
                            else f"{where}: HTTP {exc.code}", kind) from None
    except (OSError, ValueError) as exc:
        raise BrokerProblem(f"{where} unreachable: {type(exc).__name__}: {exc}", UNREACHABLE) from None
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise BrokerProblem(f"{where}: the answer has no access_token", CREDENTIALS)
    return token, float(body.get("expires_in") or 300)


def _msk_iam_token(region: str | None) -> tuple[str, float]:
    try:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider
    except ImportError:
        raise CredentialsMissing("kafka.security.oauth.method aws-msk-iam needs the msk extra: "
                                 "pip install 'stream-app[msk]'") from None
    import boto3

    region = region or boto3.session.Session().region_name
    if not region:
        raise CredentialsMissing("kafka.security.oauth.region: not set and the AWS SDK has no default region")
    token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(region)
    return token, max(60.0, expiry_ms / 1000 - time.time())


def sasl_password(security: KafkaSecurity) -> str | None:
    return _secret(security.passwordEnv, security.passwordFile, "kafka.security.password")


def confluent_security(security: KafkaSecurity) -> dict[str, Any]:
    """librdkafka properties for confluent-kafka clients."""
    conf: dict[str, Any] = {"security.protocol": security.protocol}
    if security.oauth is not None:
        conf.update(_confluent_oauth(security.oauth))
    elif security.protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
        conf.update({"sasl.mechanism": security.saslMechanism, "sasl.username": security.username,
                     "sasl.password": sasl_password(security)})
    if security.protocol in ("SSL", "SASL_SSL"):
        conf.update(tls_files(security.caFile, security.certFile, security.keyFile))
    return conf


_PROVIDERS: dict[KafkaOAuth, OAuthTokenProvider] = {}
_PROVIDERS_LOCK = threading.Lock()


def token_provider(oauth: KafkaOAuth) -> OAuthTokenProvider:
    """One provider (one cached token) per OAuth setting in this process."""
    with _PROVIDERS_LOCK:
        return _PROVIDERS.setdefault(oauth, OAuthTokenProvider(oauth))


def _confluent_oauth(oauth: KafkaOAuth) -> dict[str, Any]:
    """librdkafka's OAUTHBEARER properties.  A token is fetched here first (then cached): when
    librdkafka's own fetch fails it reports only a broker transport failure, so a refused client
    secret would read as an unreachable broker; this way it is a ``BrokerProblem`` naming the
    token endpoint and the credentials."""
    conf: dict[str, Any] = {"sasl.mechanism": "OAUTHBEARER"}
    provider = token_provider(oauth)
    provider.current()
    if oauth.method == "aws-msk-iam":
        conf["oauth_cb"] = lambda _config: provider.token_and_expiry()
        return conf
    conf.update({"sasl.oauthbearer.method": "oidc", "sasl.oauthbearer.client.id": oauth.clientId,
                 "sasl.oauthbearer.client.secret": oauth_client_secret(oauth),
                 "sasl.oauthbearer.token.endpoint.url": oauth.tokenEndpointUrl})
    if oauth.scope:
        conf["sasl.oauthbearer.scope"] = oauth.scope
    if oauth.caFile:
        conf["https.ca.location"] = oauth.caFile
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
