"""SCRAM-SHA-256 (RFC 5802/7677) in PostgreSQL's flavour, on top of scramp.

Verifiers use PostgreSQL's format: ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``
(all base64), so a hash from ``hoopd hash-password`` or from pg_authid works.
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from scramp import ScramClient, ScramException, ScramMechanism

_MECH = ScramMechanism("SCRAM-SHA-256")
_VERIFIER = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")


@dataclass(frozen=True)
class Verifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def make_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    salt_b, stored, server, i = _MECH.make_auth_info(password, iteration_count=iterations, salt=salt)
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${i}:{b64(salt_b)}${b64(stored)}:{b64(server)}"


def parse_verifier(text: str) -> Verifier:
    m = _VERIFIER.match(text)
    if not m:
        raise ValueError("not a SCRAM-SHA-256 verifier")
    d = base64.b64decode
    return Verifier(int(m.group(1)), d(m.group(2)), d(m.group(3)), d(m.group(4)))


def mock_verifier() -> Verifier:
    """A random verifier for unknown users, so a login fails the same way as a wrong password."""
    return Verifier(4096, os.urandom(16), os.urandom(32), os.urandom(32))


class ScramServerExchange:
    """Server side of one SCRAM exchange: client-first -> server-first, client-final -> server-final.

    Raises ScramFailure on a bad proof or malformed message. Accepts gs2 headers ``n,,`` and
    ``y,,`` (we never offer -PLUS, so ``y`` is legitimate: npgsql sends it)."""

    def __init__(self, verifier: Verifier) -> None:
        v = verifier
        self._server = _MECH.make_server(lambda _user: (v.salt, v.stored_key, v.server_key, v.iterations))

    def client_first(self, data: bytes) -> bytes:
        try:
            self._server.set_client_first(data.decode("utf-8"))
            return self._server.get_server_first().encode()
        except (ScramException, UnicodeDecodeError) as e:
            raise ScramFailure(str(e)) from None

    def client_final(self, data: bytes) -> bytes:
        try:
            self._server.set_client_final(data.decode("utf-8"))
            return self._server.get_server_final().encode()
        except (ScramException, UnicodeDecodeError) as e:
            raise ScramFailure(str(e)) from None


class ScramClientExchange:
    """Client side (the gateway logging in upstream)."""

    def __init__(self, user: str, password: str, mechanisms: list[str]) -> None:
        if "SCRAM-SHA-256" not in mechanisms:
            raise ScramFailure(f"server offers no supported SASL mechanism ({', '.join(mechanisms)})")
        self._client = ScramClient(["SCRAM-SHA-256"], user, password)  # PostgreSQL ignores the name

    def client_first(self) -> bytes:
        return self._client.get_client_first().encode()

    def server_first(self, data: bytes) -> bytes:
        try:
            self._client.set_server_first(data.decode("utf-8"))
            return self._client.get_client_final().encode()
        except (ScramException, UnicodeDecodeError) as e:
            raise ScramFailure(str(e)) from None

    def server_final(self, data: bytes) -> None:
        try:
            self._client.set_server_final(data.decode("utf-8"))
        except (ScramException, UnicodeDecodeError) as e:
            raise ScramFailure(str(e)) from None


class ScramFailure(Exception):
    pass
