"""A small OpenID Connect provider on loopback for the login tests (standard library HTTP server).

It does what the hospital's identity provider does for Streamlit's st.login: discovery
(/.well-known/openid-configuration), an authorisation page where the user types an e-mail
address (/authorize), the code exchange (/token: client secret, redirect URI and PKCE S256
checked, one use per code) and the signing keys (/jwks). ID tokens are real RS256 JWTs signed
with a fresh key (cryptography), so Authlib's own validation runs: signature, issuer, audience,
expiry, nonce.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KEY_ID = "stub-key-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


@dataclass
class StubProvider:
    """The provider's state: one registered client, issued codes, and what happened."""

    client_id: str
    client_secret: str
    redirect_uri: str
    key: Any = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens_issued: list[str] = field(default_factory=list)  # e-mail addresses
    refused: list[str] = field(default_factory=list)  # why token requests were refused
    issuer: str = ""

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        jwk = {"kty": "RSA", "kid": KEY_ID, "use": "sig", "alg": "RS256"}
        return {
            "keys": [jwk | {"n": b64url(_int_bytes(numbers.n)), "e": b64url(_int_bytes(numbers.e))}]
        }

    def id_token(self, email: str, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer, "sub": hashlib.sha256(email.encode()).hexdigest()[:20],
            "aud": self.client_id, "iat": now, "exp": now + 300, "nonce": nonce,
            "email": email, "email_verified": True, "name": email.split("@")[0].title(),
        }  # fmt: skip
        header = {"alg": "RS256", "kid": KEY_ID, "typ": "JWT"}
        signing_input = ".".join(b64url(json.dumps(p).encode()) for p in (header, claims))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile"],
        }

    def exchange(self, form: dict[str, str], authorization: str | None) -> dict[str, Any] | None:
        """The token response for a valid code exchange, else None (reason in `refused`)."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if authorization and authorization.startswith("Basic "):
            client_id, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
        grant = self.codes.pop(form.get("code", ""), None)
        checks = {
            "client": client_id == self.client_id and secret == self.client_secret,
            "code": grant is not None and time.time() < float(grant["expires"]),
            "redirect_uri": grant is not None and form.get("redirect_uri") == grant["redirect_uri"],
            "pkce": grant is not None and b64url(hashlib.sha256(
                form.get("code_verifier", "").encode()).digest()) == grant["code_challenge"],
        }  # fmt: skip
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            self.refused.append(",".join(failed))
            return None
        self.tokens_issued.append(grant["email"])
        return {
            "access_token": secrets.token_urlsafe(24), "token_type": "Bearer",
            "expires_in": 300, "scope": "openid email profile",
            "id_token": self.id_token(grant["email"], grant["nonce"]),
        }  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    """The provider's HTTP endpoints; `provider` is set on a subclass per server."""

    provider: StubProvider

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        return

    def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: Any, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length") or 0)
        return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        url = urlparse(self.path)
        if url.path == "/.well-known/openid-configuration":
            return self._json(self.provider.metadata())
        if url.path == "/jwks":
            return self._json(self.provider.jwks())
        if url.path == "/authorize":
            return self._login_page({k: v[0] for k, v in parse_qs(url.query).items()})
        return self._send(404, b"not found", "text/plain")

    def _login_page(self, query: dict[str, str]) -> None:
        if query.get("client_id") != self.provider.client_id or (
            query.get("redirect_uri") != self.provider.redirect_uri
        ):
            return self._send(400, b"unknown client or redirect_uri", "text/plain")
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in query.items()
        )
        page = (
            "<html><body><h1>Hospital sign-in (test provider)</h1>"
            f'<form method="post" action="/authorize">{hidden}'
            '<label>E-mail <input name="email" id="email"></label>'
            '<button type="submit" id="sign-in">Sign in</button></form></body></html>'
        )
        return self._send(200, page.encode(), "text/html")

    def do_POST(self) -> None:  # noqa: N802
        form = self._form()
        if self.path == "/authorize":
            code = secrets.token_urlsafe(24)
            self.provider.codes[code] = {
                "email": form.get("email", ""), "nonce": form.get("nonce", ""),
                "redirect_uri": form.get("redirect_uri", ""),
                "code_challenge": form.get("code_challenge", ""),
                "expires": str(time.time() + 60),
            }  # fmt: skip
            target = (
                self.provider.redirect_uri
                + "?"
                + urlencode({"code": code, "state": form.get("state", "")})
            )
            return self._send(302, b"", "text/plain", {"Location": target})
        if self.path == "/token":
            answer = self.provider.exchange(form, self.headers.get("Authorization"))
            if answer is None:
                return self._json({"error": "invalid_grant"}, status=400)
            return self._json(answer)
        return self._send(404, b"not found", "text/plain")


class RunningProvider:
    """StubProvider served on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self, provider: StubProvider) -> None:
        self.provider = provider
        handler = type("Handler", (_Handler,), {"provider": provider})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        provider.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def metadata_url(self) -> str:
        return f"{self.provider.issuer}/.well-known/openid-configuration"

    def __enter__(self) -> RunningProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
