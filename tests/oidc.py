"""A local OpenID Connect provider for the OAUTHBEARER tests: the client-credentials grant
(RFC 6749 section 4.4, client authentication by HTTP Basic or form fields) issuing RS256 JWT
access tokens, and the JWKS endpoint a Kafka broker validates them with.  Signing is done with
``cryptography``; the broker checks signature, expiry, subject and audience for real."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
import urllib.parse
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class OidcProvider:
    def __init__(self, clients: dict[str, str], audience: str = "kafka", lifetime_s: int = 3600) -> None:
        self.clients = clients
        self.audience = audience
        self.lifetime_s = lifetime_s
        self.issued: list[str] = []  # client ids, one per token issued
        self.refused = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                if self.path == "/jwks":
                    self._answer(200, provider.jwks())
                else:
                    self._answer(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802
                form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["Content-Length"])).decode()))
                client_id, secret = form.get("client_id"), form.get("client_secret")
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    client_id, secret = urllib.parse.unquote(user), urllib.parse.unquote(password)
                if self.path != "/token" or form.get("grant_type") != "client_credentials":
                    self._answer(400, {"error": "unsupported_grant_type"})
                elif client_id is None or provider.clients.get(client_id) != secret:
                    provider.refused += 1
                    self._answer(401, {"error": "invalid_client"})
                else:
                    provider.issued.append(client_id)
                    self._answer(200, {"access_token": provider.token(client_id, form.get("scope")),
                                       "token_type": "Bearer", "expires_in": provider.lifetime_s})

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.token_url = f"{self.url}/token"
        self.jwks_url = f"{self.url}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        return {"keys": [{"kty": "RSA", "kid": "test-key", "use": "sig", "alg": "RS256",
                          "n": _b64(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                          "e": _b64(numbers.e.to_bytes(3, "big"))}]}

    def token(self, subject: str, scope: str | None = None) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "sub": subject, "aud": self.audience, "iat": now, "exp": now + self.lifetime_s,
                  **({"scope": scope} if scope else {})}
        header = {"alg": "RS256", "typ": "JWT", "kid": "test-key"}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    def broker_properties(self) -> dict[str, str]:
        """A Kafka client listener that takes OAUTHBEARER and validates tokens against this provider."""
        prefix = "listener.name.client.oauthbearer."
        return {
            "sasl.enabled.mechanisms": "OAUTHBEARER",
            "listener.name.client.sasl.enabled.mechanisms": "OAUTHBEARER",
            prefix + "sasl.jaas.config":
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required ;",
            prefix + "sasl.server.callback.handler.class":
                "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler",
            "sasl.oauthbearer.jwks.endpoint.url": self.jwks_url,
            "sasl.oauthbearer.expected.audience": self.audience,
            "sasl.oauthbearer.expected.issuer": self.url,
        }

    def broker_system_properties(self) -> dict[str, str]:
        # Kafka 4 fetches only the URLs this allow-list names (KIP-1062's hardening)
        return {"org.apache.kafka.sasl.oauthbearer.allowed.urls": f"{self.jwks_url},{self.token_url}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
