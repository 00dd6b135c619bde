"""The ``[control]`` config section: who may use the HTTP control port and the SSH console.

``parse_control(table, base)`` is called by ``hoopd.config.parse``; a relative
``ssh_authorized_keys`` path is resolved against ``base`` (the config file's folder); a keys
file others could change is refused (hoopd.filecheck).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hoopd.confkit import ConfigError, Secret, Table
from hoopd.filecheck import check_access_file
from hoopd.identity.config import OIDCConfig

ROLES = ("caller", "viewer", "admin")  # caller: the MCP endpoint only (a token bound to a user)
TOKEN_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


@dataclass(frozen=True)
class ApiToken:
    """One bearer token for ``/api/``; only its hash is kept (``hoopd hash-token``)."""

    name: str
    role: str  # caller | viewer | admin
    token_hash: str = field(repr=False)  # "sha256:<hex>"
    user: str | None = None  # the identity it acts for (reviews: its [[users]] groups decide)


@dataclass(frozen=True)
class ControlConfig:
    tokens: tuple[ApiToken, ...] = ()
    admin_groups: frozenset[str] = frozenset()  # OIDC groups that get the admin role on /api/
    viewer_groups: frozenset[str] = frozenset()  # OIDC groups that get the viewer role
    ssh_authorized_keys: str | None = None  # file of "NAME KEYTYPE KEY [comment]" lines
    open_health: bool = True  # /healthz and /readyz without a token
    open_metrics: bool = False  # /metrics without a token
    shutdown_grace: float = 30.0  # seconds live sessions get on shutdown before 57P01
    ready_timeout: float = 2.0  # per upstream TCP probe in /readyz
    oidc_audience: tuple[str, ...] = ()  # set: API OIDC tokens need this audience, not [identity.oidc]'s
    http_idle_timeout: float = 60.0  # an HTTP connection with no request in flight is closed after this
    http_request_timeout: float = 10.0  # a request's headers and body must all arrive within this
    http_max_connections: int = 64  # concurrent HTTP connections; more are answered 503 and closed
    web: "WebSignIn | None" = None  # [control.web]: the console's OIDC sign-in


@dataclass(frozen=True)
class WebSignIn:
    """[control.web]: sign-in to the web console with the [identity.oidc] provider
    (authorization code flow with PKCE); the ID token's audience is ``client_id``."""

    client_id: str
    client_secret: Secret = field(repr=False)
    redirect_url: str  # where the provider sends the browser back: https://HOST:PORT/ui/oidc/callback


def parse_control(t: Table, base: Path) -> ControlConfig:
    """Read ``[control]``."""
    d = ControlConfig()
    tokens: list[ApiToken] = []
    for tt in t.tables("tokens"):
        name = tt.str("name", required=True)
        if not _TOKEN_NAME.match(name):
            raise ConfigError(tt.key("name"), f"token names are letters, digits, _ . @ - (at most 64), got {name!r}")
        if any(x.name == name for x in tokens):
            raise ConfigError(tt.key("name"), f"duplicate token name {name!r}")
        role = tt.str("role", required=True, choices=ROLES)
        th = tt.str("token_hash", required=True)
        if not TOKEN_HASH.match(th):
            raise ConfigError(tt.key("token_hash"), 'expected "sha256:" and 64 hex digits (run `hoopd hash-token`)')
        user = tt.str("user")
        if role == "caller" and user is None:
            raise ConfigError(tt.key("user"), 'a "caller" token (the MCP endpoint only) acts as a user: name it')
        tokens.append(ApiToken(name, role, th, user))
        tt.done()
    keys = t.str("ssh_authorized_keys")
    if keys is not None and not os.path.isabs(keys):
        keys = str(base / keys)
    if keys is not None:
        check_access_file(t.key("ssh_authorized_keys"), keys)
    cfg = ControlConfig(
        tokens=tuple(tokens),
        admin_groups=frozenset(t.str_list("admin_groups")),
        viewer_groups=frozenset(t.str_list("viewer_groups")),
        ssh_authorized_keys=keys,
        open_health=t.bool("open_health", d.open_health),
        open_metrics=t.bool("open_metrics", d.open_metrics),
        shutdown_grace=t.duration("shutdown_grace", d.shutdown_grace),
        ready_timeout=t.duration("ready_timeout", d.ready_timeout),
        oidc_audience=t.str_list("oidc_audience"),
        http_idle_timeout=t.duration("http_idle_timeout", d.http_idle_timeout),
        http_request_timeout=t.duration("http_request_timeout", d.http_request_timeout),
        http_max_connections=t.int("http_max_connections", d.http_max_connections, lo=1),
        web=_web(t.table("web"), base) if t.has("web") else None,
    )
    for k in ("ready_timeout", "http_idle_timeout", "http_request_timeout"):
        if getattr(cfg, k) <= 0:
            raise ConfigError(t.key(k), "must be more than 0 seconds")
    t.done()
    return cfg


def _web(t: Table, base: Path) -> WebSignIn:
    path = t.str("client_secret_file", required=True)
    p = Path(path) if os.path.isabs(path) else base / path
    try:
        secret = p.read_text().strip()
    except OSError as e:
        raise ConfigError(t.key("client_secret_file"), f"cannot read {p}: {e.strerror}") from None
    redirect = t.str("redirect_url", required=True)
    if not redirect.startswith(("https://", "http://")) or not redirect.endswith("/ui/oidc/callback"):
        raise ConfigError(t.key("redirect_url"), "expected this gateway's URL of /ui/oidc/callback")
    cfg = WebSignIn(t.str("client_id", required=True), Secret(secret, f"file {p}"), redirect)
    t.done()
    return cfg


def check_oidc_audience(control: ControlConfig, oidc: OIDCConfig | None) -> None:
    """``[control].oidc_audience`` must name an audience of its own on the one OIDC issuer."""
    if control.web is not None and oidc is None:
        raise ConfigError("control.web", "needs [identity.oidc] (the provider the console signs in with)")
    if not control.oidc_audience:
        return
    key = "control.oidc_audience"
    if oidc is None:
        raise ConfigError(key, "needs [identity.oidc] (the issuer whose keys sign the API tokens)")
    shared = sorted(set(control.oidc_audience) & set(oidc.audience))
    if shared:
        raise ConfigError(key, f"{', '.join(shared)} is also in identity.oidc.audience: a database login token"
                               " would still open the API; give the API an audience of its own")
