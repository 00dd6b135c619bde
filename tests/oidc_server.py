"""A real OIDC identity provider for tests: twisted.web over TLS in the test reactor.

Serves ``/.well-known/openid-configuration`` and ``/jwks`` for RSA and EC keys made with
cryptography, and an authorization code flow with PKCE (``/authorize`` signs in
``sign_in_as`` at once, ``/token`` checks the client secret and the verifier); ``mint()`` signs tokens with PyJWT. Keys can be rotated, the server can be
stopped (connection refused) or made to hang, and it counts the requests it answered.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import ssl
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.web import resource, server

from tests.certs import issue, make_ca, pem_cert

AUDIENCE = "hoopd"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict:
        algo = jwt.algorithms.RSAAlgorithm if self.alg.startswith(("RS", "PS")) else jwt.algorithms.ECAlgorithm
        d = json.loads(algo.to_jwk(self.private.public_key()))
        d.update(kid=self.kid, use="sig", alg=self.alg)
        return d


def rsa_key(kid: str, alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, alg, rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_key(kid: str) -> SigningKey:
    return SigningKey(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


class _Root(resource.Resource):
    isLeaf = True

    def __init__(self, idp: "IdP") -> None:
        super().__init__()
        self.idp = idp

    def render_GET(self, request: server.Request) -> Any:
        idp = self.idp
        path = request.path.decode()
        idp.requests.append(path)
        if idp.hang:
            idp.hung.append(request)
            return server.NOT_DONE_YET
        if path == "/.well-known/openid-configuration":
            body = {"issuer": idp.discovery_issuer or idp.issuer, "jwks_uri": idp.issuer + "/jwks",
                    "authorization_endpoint": idp.issuer + "/authorize", "token_endpoint": idp.issuer + "/token"}
        elif path == "/authorize":  # signs in ``idp.sign_in_as`` at once and sends the browser back
            a = {k.decode(): v[0].decode() for k, v in request.args.items()}
            code = os.urandom(8).hex()
            idp.codes[code] = a
            request.redirect(f"{a['redirect_uri']}?{urlencode({'code': code, 'state': a['state']})}".encode())
            return b""
        elif path == "/jwks":
            body = {"keys": [k.jwk() for k in idp.keys] + idp.extra_jwks}
            if idp.cache_control:
                request.setHeader(b"cache-control", idp.cache_control.encode())
        else:
            request.setResponseCode(404)
            return b"not found"
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()

    def render_POST(self, request: server.Request) -> Any:
        """The token endpoint: the code once, for its client, with the PKCE verifier."""
        idp = self.idp
        f = {k.decode(): v[0].decode() for k, v in request.args.items()}
        a = idp.codes.pop(f.get("code", ""), None)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(f.get("code_verifier", "").encode()).digest())
        ok = (a is not None and request.path == b"/token" and f.get("client_id") == a["client_id"]
              and f.get("client_secret") == idp.client_secret and f.get("redirect_uri") == a["redirect_uri"]
              and challenge.rstrip(b"=").decode() == a.get("code_challenge"))
        request.setHeader(b"content-type", b"application/json")
        if not ok:
            request.setResponseCode(400)
            return b'{"error": "invalid_grant"}'
        sub, groups = idp.sign_in_as
        token = idp.mint(sub, aud=a["client_id"], nonce=a["nonce"], groups=groups)
        return json.dumps({"id_token": token, "access_token": "unused", "token_type": "Bearer"}).encode()


class IdP:
    """Start with ``listen(reactor)`` (returns self), stop with ``stop()`` (a Deferred)."""

    def __init__(self, folder: Path) -> None:
        ca = make_ca("test IdP CA")
        cert, key = issue(ca)
        self.ca_file = folder / "idp-ca.crt"
        self.ca_file.write_bytes(pem_cert(ca[0]))
        self._tls = ssl.CertificateOptions(privateKey=key, certificate=cert)
        self.keys: list[SigningKey] = [rsa_key("rsa-1"), ec_key("ec-1")]
        self.extra_jwks: list[dict] = []  # raw JWKs served as they are
        self.cache_control: str | None = "max-age=600"
        self.discovery_issuer: str | None = None  # lie about the issuer in discovery
        self.hang = False
        self.hung: list[server.Request] = []
        self.requests: list[str] = []
        self.port: Any = None
        self.issuer = ""
        self.codes: dict[str, dict[str, str]] = {}  # authorization code -> the /authorize request
        self.client_secret = "console-client-secret"
        self.sign_in_as: tuple[str, list[str]] = ("alice", ["dba"])  # who /authorize signs in

    def listen(self, reactor: Any, port: int = 0) -> "IdP":
        self.port = reactor.listenSSL(port, server.Site(_Root(self)), self._tls, interface="127.0.0.1")
        self.issuer = f"https://127.0.0.1:{self.port.getHost().port}"
        return self

    def stop(self) -> Deferred:
        """Stop listening (connections are refused from then on); safe to call twice."""
        for r in self.hung:
            if not r.finished and not r._disconnected:
                r.finish()
        self.hung.clear()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)

    def key(self, kid: str) -> SigningKey:
        return next(k for k in self.keys if k.kid == kid)

    def mint(self, sub: str = "alice", *, kid: str = "rsa-1", alg: str | None = None, key: Any = None,
             headers: dict | None = None, drop: tuple[str, ...] = (), **claims: Any) -> str:
        """A signed token for ``sub`` (also its preferred_username); claims override the defaults."""
        now = int(time.time())
        body = {"iss": self.issuer, "aud": AUDIENCE, "sub": sub, "preferred_username": sub, "iat": now,
                "exp": now + 600, "groups": ["dev"]}
        body.update(claims)
        for c in drop:
            body.pop(c, None)
        sk = self.key(kid) if key is None else None
        return jwt.encode(body, key if key is not None else sk.private, algorithm=alg or sk.alg,
                          headers={"kid": kid, **(headers or {})})


@pytest.fixture
def idp(tmp_path: Path):
    """A running IdP in the test reactor (stopped afterwards)."""
    from twisted.internet import reactor

    server = IdP(tmp_path).listen(reactor)
    yield server
    pytest_twisted.blockon(server.stop())
