"""The seam every identity source plugs into."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from twisted.internet.defer import Deferred


@dataclass(frozen=True)
class Identity:
    """Who a client is, as established by the gateway (never by the client)."""

    name: str  # canonical: the configured name, the directory's attribute, the token's claim
    groups: frozenset[str] = field(default_factory=frozenset)
    source: str = "local"  # local | oidc | ldap
    typed: str | None = None  # the name as the client typed it, when that was not ``name``


class AuthError(Exception):
    """A login refused. ``sqlstate`` and ``message`` go to the client as they are;
    ``reason`` is a short machine label for logs and metrics; ``detail`` is for the gateway
    log only (e.g. why a directory could not be reached). Never put a secret in any."""

    def __init__(self, message: str, sqlstate: str = "28P01", reason: str = "bad_password",
                 detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.reason = reason
        self.detail = detail


class PasswordAuthenticator(Protocol):
    """Checks a cleartext password (an OIDC token, an LDAP password) for a user name.

    Returns a Deferred that fires with an Identity, or fails with AuthError.
    Returns None when this source does not handle the name/password at all
    (so the next source in ``[identity].order`` is tried)."""

    source: str

    def authenticate(self, username: str, password: str, peer: str) -> Deferred[Identity] | None: ...
