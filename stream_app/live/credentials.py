"""The Faust app's broker credentials, from the same settings as the confluent-kafka clients."""

from __future__ import annotations

from typing import Any

import faust

from stream_app.config import KafkaSecurity
from stream_app.ops.security import sasl_password, ssl_context, token_provider


def faust_credentials(security: KafkaSecurity) -> Any:
    """``broker_credentials`` for the Faust app (None for PLAINTEXT)."""
    if security.protocol == "PLAINTEXT":
        return None
    if security.protocol == "SSL":
        return faust.SSLCredentials(ssl_context(security))
    if security.oauth is not None:
        return faust.OAuthCredentials(oauth_cb=token_provider(security.oauth),
                                      ssl_context=ssl_context(security) if security.protocol == "SASL_SSL" else None)
    return faust.SASLCredentials(
        username=security.username, password=sasl_password(security), mechanism=security.saslMechanism,
        ssl_context=ssl_context(security) if security.protocol == "SASL_SSL" else None,
    )
