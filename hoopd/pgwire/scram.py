"""SCRAM-SHA-256 (RFC 5802/7677) in PostgreSQL's flavour, on top of scramp.

Verifiers use PostgreSQL's format: ``SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>``
(all base64), so a hash from ``hoopd hash-password`` or from pg_authid works.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass

from scramp import ScramClient, ScramException, ScramMechanism

_MECH = ScramMechanism("SCRAM-SHA-256")
PLUS = "SCRAM-SHA-256-PLUS"
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

    Written here rather than with scramp's server, which rejects the empty user name
    (``n=,``) that every PostgreSQL client sends. Accepts gs2 headers ``n,,`` and ``y,,``
    (we never offer -PLUS, so ``y`` is legitimate: npgsql sends it). Raises ScramFailure
    on a bad proof or a malformed message."""

    def __init__(self, verifier: Verifier) -> None:
        self._v = verifier
        self._gs2 = ""
        self._nonce = ""
        self._auth_prefix = ""

    def client_first(self, data: bytes) -> bytes:
        text = _text(data)
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            raise ScramFailure("malformed SCRAM client-first message (or channel binding requested)")
        bare = parts[2]
        attrs = _attrs(bare)
        cnonce = attrs.get("r", "")
        if "n" not in attrs or not cnonce or "m" in attrs:
            raise ScramFailure("malformed SCRAM client-first message")
        self._gs2 = f"{parts[0]},{parts[1]},"
        self._nonce = cnonce + base64.b64encode(os.urandom(18)).decode()
        v = self._v
        server_first = f"r={self._nonce},s={base64.b64encode(v.salt).decode()},i={v.iterations}"
        self._auth_prefix = f"{bare},{server_first},"
        return server_first.encode()

    def client_final(self, data: bytes) -> bytes:
        text = _text(data)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        attrs = _attrs(without_proof) if sep else {}
        if attrs.get("c") != base64.b64encode(self._gs2.encode()).decode() or attrs.get("r") != self._nonce:
            raise ScramFailure("SCRAM client-final message does not match the exchange")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise ScramFailure("malformed SCRAM proof") from None
        auth = (self._auth_prefix + without_proof).encode()
        sig = hmac.digest(self._v.stored_key, auth, "sha256")
        if len(proof) != len(sig):
            raise ScramFailure("malformed SCRAM proof")
        client_key = bytes(a ^ b for a, b in zip(proof, sig))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self._v.stored_key):
            raise ScramFailure("invalid proof")
        server_sig = hmac.digest(self._v.server_key, auth, "sha256")
        return b"v=" + base64.b64encode(server_sig)


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramFailure("SCRAM message is not UTF-8") from None


def _attrs(msg: str) -> dict[str, str]:
    out = {}
    for item in msg.split(","):
        if len(item) < 2 or item[1] != "=":
            raise ScramFailure("malformed SCRAM attribute")
        out[item[0]] = item[2:]
    return out


class ScramClientExchange:
    """Client side (the gateway logging in upstream).

    ``binding`` is the ``tls-server-end-point`` data of the server's certificate when the
    connection is TLS (None otherwise, or when channel binding is turned off). With it,
    SCRAM-SHA-256-PLUS is chosen when the server offers it; if the server does not, the gs2
    flag ``y`` tells a server that does support it that the offer was stripped. With
    ``require_binding`` an exchange without channel binding is refused."""

    def __init__(self, user: str, password: str, mechanisms: list[str], binding: bytes | None = None,
                 require_binding: bool = False) -> None:
        cb = ("tls-server-end-point", binding) if binding else None
        if cb and PLUS in mechanisms:
            self.mechanism = PLUS
        elif require_binding:
            raise ScramFailure(f"server does not offer {PLUS} over TLS ({', '.join(mechanisms) or 'no mechanism'})"
                               if binding else "channel binding is not possible on this connection")
        elif "SCRAM-SHA-256" in mechanisms:
            self.mechanism = "SCRAM-SHA-256"
        else:
            raise ScramFailure(f"server offers no supported SASL mechanism ({', '.join(mechanisms)})")
        self.finished = False
        # PostgreSQL ignores the user name in the SCRAM messages (the startup packet has it)
        try:
            self._client = ScramClient([self.mechanism], user, password, channel_binding=cb)
        except ScramException as e:
            raise ScramFailure(str(e)) from None

    def client_first(self) -> bytes:
        return self._client.get_client_first().encode()

    def server_first(self, data: bytes) -> bytes:
        try:
            self._client.set_server_first(data.decode("utf-8"))
            return self._client.get_client_final().encode()
        except (ScramException, UnicodeDecodeError) as e:
            raise ScramFailure(str(e)) from None

    def server_final(self, data: bytes) -> None:
        """Check the server's signature (it proves the server knows the verifier)."""
        try:
            self._client.set_server_final(data.decode("utf-8"))
        except (ScramException, UnicodeDecodeError) as e:
            raise ScramFailure(str(e)) from None
        self.finished = True


class ScramFailure(Exception):
    pass
