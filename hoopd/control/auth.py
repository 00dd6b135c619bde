"""Who is calling the HTTP API: a ``[[control.tokens]]`` bearer token, or an OIDC token.

An OIDC token counts only when a TokenVerifier is wired and its groups meet
``[control].admin_groups`` (admin) or ``viewer_groups`` (viewer). With
``[control].oidc_audience`` set, the token must be minted for that audience instead of
``[identity.oidc].audience``: a database login token is then not an API token.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from hoopd.control.config import ApiToken, ControlConfig
from hoopd.control.providers import TokenVerifier
from hoopd.control.tokens import matches
from hoopd.identity.base import AuthError, Identity
from hoopd.log import get_logger

log = get_logger("hoopd.control")
RANK = {"caller": -1, "viewer": 0, "admin": 1}  # caller: an identity with no control role (the MCP endpoint)


class ApiError(Exception):
    """An error answer: HTTP status, a short code and a message for the JSON body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        if status == 401:
            self.headers.setdefault("WWW-Authenticate", 'Bearer realm="hoopd"')


@dataclass(frozen=True)
class Principal:
    name: str  # how admin actions are attributed: "api:<token name>" or "oidc:<user>"
    role: str  # viewer | admin | caller
    user: str | None = None  # the identity behind it (an OIDC user, a token's ``user``)
    groups: frozenset[str] = frozenset()  # its OIDC groups (a token's: its user's [[users]] groups)

    def require(self, role: str) -> None:
        if RANK[self.role] < RANK[role]:
            raise ApiError(403, "forbidden", f"{self.name} has the {self.role} role; this needs {role}")


def bearer(header: bytes | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.decode("latin-1").strip().partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def find_token(cfg: ControlConfig, token: str) -> ApiToken | None:
    """The ``[[control.tokens]]`` entry a bearer token is, if any."""
    return next((t for t in cfg.tokens if matches(token, t.token_hash)), None)


def oidc_principal(cfg: ControlConfig, identity: Identity, anyone: bool = False) -> Principal:
    """An OIDC identity's role from the control groups; ApiError(403) when it has none
    (``anyone``: then a "caller")."""
    if identity.groups & cfg.admin_groups:
        return Principal(f"oidc:{identity.name}", "admin", identity.name, identity.groups)
    if identity.groups & cfg.viewer_groups:
        return Principal(f"oidc:{identity.name}", "viewer", identity.name, identity.groups)
    if anyone:
        return Principal(f"oidc:{identity.name}", "caller", identity.name, identity.groups)
    raise ApiError(403, "forbidden", f"oidc:{identity.name} is in none of the control admin or viewer groups")


@defer.inlineCallbacks
def authenticate(cfg: ControlConfig, verifier: TokenVerifier | None, header: bytes | None,
                 anyone: bool = False) -> Any:
    """Fires with a Principal; fails with ApiError(401) for a missing or wrong token.
    ``anyone``: an OIDC identity outside the control groups is a "caller" (not 403)."""
    token = bearer(header)
    if token is None:
        raise ApiError(401, "unauthorized", "an Authorization: Bearer token is required")
    found = find_token(cfg, token)
    if found is not None:
        return Principal(f"api:{found.name}", found.role, found.user)
    if verifier is not None and token.count(".") == 2:
        try:
            identity = yield verifier.verify(token, audience=cfg.oidc_audience or None)
        except AuthError as e:
            log.info("control API: OIDC token refused: {why}", why=e.reason)
        except Exception:
            log.failure("control API: OIDC token check failed")
        else:
            return oidc_principal(cfg, identity, anyone)
    raise ApiError(401, "unauthorized", "invalid token")
