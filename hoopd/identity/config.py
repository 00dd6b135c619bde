"""The ``[identity]`` config section: source order, rate limits, OIDC and LDAP settings.

``parse_identity(table, base)`` is called by ``hoopd.config.parse``; relative file paths
are resolved against ``base`` (the config file's folder). Secrets become ``config.Secret``.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hoopd.confkit import ConfigError, Secret, Table

SOURCES = ("local", "oidc", "ldap")
PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
# Asymmetric JWS algorithms only: "none" and HS* (shared secrets) are never accepted.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True)
class OIDCConfig:
    issuer: str
    audience: tuple[str, ...]
    username_claim: str | None = None  # None: first present of preferred_username, email, sub
    groups_claim: str = "groups"  # dotted path, e.g. realm_access.roles
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 60.0
    jwks_uri: str | None = None  # None: from discovery
    ca_file: str | None = None  # None: the system trust store
    timeout: float = 10.0  # per HTTP request to the IdP


@dataclass(frozen=True)
class LDAPConfig:
    url: str
    user_base: str
    bind_dn: str | None = None  # None: anonymous search
    bind_password: Secret | None = None
    user_filter: str = "(uid={username})"
    group_base: str | None = None  # None: no group search; memberOf only
    group_filter: str = "(&(objectClass=groupOfNames)(member={dn}))"
    group_name_attribute: str = "cn"
    username_attribute: str | None = None  # the name identities carry, as the entry spells it; None: see name_attribute
    start_tls: bool = False
    ca_file: str | None = None
    connect_timeout: float = 5.0
    timeout: float = 10.0  # per LDAP operation
    pool_size: int = 4

    @property
    def name_attribute(self) -> str:
        """``username_attribute``, else the attribute ``user_filter`` matches the name
        against (``mail`` in ``(&(objectClass=person)(mail={username}))``), else uid."""
        if self.username_attribute:
            return self.username_attribute
        m = FILTER_NAME_ATTRIBUTE.search(self.user_filter)
        return m.group(1) if m else "uid"


FILTER_NAME_ATTRIBUTE = re.compile(r"\(([A-Za-z][\w-]*)=\{username\}\)")


@dataclass(frozen=True)
class IdentityConfig:
    order: tuple[str, ...] = ("local",)
    login_timeout: float = 20.0  # all password sources together, then the login fails
    max_failed_logins_per_user: int = 5  # one name from one address, within failed_login_window; 0 = no limit
    max_failed_logins_per_address: int = 20
    max_failed_logins_per_user_total: int = 50  # one name from all addresses together
    failed_login_window: float = 300.0
    oidc: OIDCConfig | None = None
    ldap: LDAPConfig | None = None


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _https_url(t: Table, name: str, required: bool = False) -> str | None:
    """An https:// URL (http:// only for a loopback host, e.g. a local test IdP)."""
    url = t.str(name, required=required)
    if url is None:
        return None
    parts = urlsplit(url)
    if not parts.hostname or not (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))):
        raise ConfigError(t.key(name), f"expected an https:// URL (http:// only for loopback), got {url!r}")
    return url


def _ca_file(t: Table, name: str, base: Path) -> str | None:
    """A readable PEM file with at least one CA certificate."""
    v = t.str(name)
    if v is None:
        return None
    p = base / v
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(t.key(name), f"cannot read {p}: {e.strerror}") from None
    if not PEM_CERT.search(data):
        raise ConfigError(t.key(name), f"no PEM certificate in {p}")
    return str(p)


def _template(t: Table, name: str, default: str, fields: tuple[str, ...]) -> str:
    """An LDAP filter with ``{field}`` placeholders (values are escaped when filled in)."""
    v = t.str(name, default)
    try:
        v.format(**{f: "x" for f in fields})
    except (KeyError, IndexError, ValueError) as e:
        use = " or ".join("{" + f + "}" for f in fields)
        raise ConfigError(t.key(name), f"bad placeholder {e} (use {use})") from None
    if not (v.startswith("(") and v.endswith(")")):
        raise ConfigError(t.key(name), f"expected an LDAP filter in parentheses, got {v!r}")
    return v


def _oidc(t: Table, base: Path) -> OIDCConfig:
    issuer = _https_url(t, "issuer", required=True)
    audience = t.str_list("audience", required=True)
    if not audience:
        raise ConfigError(t.key("audience"), "needs at least one audience")
    algorithms = t.str_list("algorithms", OIDCConfig.algorithms)
    for a in algorithms:
        if a not in ALGORITHMS:
            raise ConfigError(t.key("algorithms"), f"{a!r} is not accepted (choose from {', '.join(ALGORITHMS)}; "
                              "none and HS* are refused)")
    if not algorithms:
        raise ConfigError(t.key("algorithms"), "needs at least one algorithm")
    groups_claim = t.str("groups_claim", "groups")
    if not all(groups_claim.split(".")):
        raise ConfigError(t.key("groups_claim"),
                          f"expected a dotted claim path like realm_access.roles, got {groups_claim!r}")
    cfg = OIDCConfig(issuer=issuer, audience=audience,  # type: ignore[arg-type]
                     username_claim=t.str("username_claim"), groups_claim=groups_claim, algorithms=algorithms,
                     leeway=t.duration("leeway", 60.0), jwks_uri=_https_url(t, "jwks_uri"),
                     ca_file=_ca_file(t, "ca_file", base), timeout=t.duration("timeout", 10.0))
    t.done()
    return cfg


def _bind_password(t: Table, base: Path) -> Secret | None:
    name = t.str("bind_password_file")
    if name is None:
        return None
    p = base / name
    try:
        return Secret(p.read_text().rstrip("\r\n"), f"file {p}")
    except OSError as e:
        raise ConfigError(t.key("bind_password_file"), f"cannot read {p}: {e.strerror}") from None


def _ldap(t: Table, base: Path) -> LDAPConfig:
    url = t.str("url", required=True)
    scheme = urlsplit(url).scheme
    if scheme not in ("ldap", "ldaps") or not urlsplit(url).hostname:
        raise ConfigError(t.key("url"), f"expected ldap://HOST[:PORT] or ldaps://HOST[:PORT], got {url!r}")
    start_tls = t.bool("start_tls", False)
    if scheme == "ldaps" and start_tls:
        raise ConfigError(t.key("start_tls"), "ldaps:// is already TLS; use start_tls with ldap:// only")
    bind_dn = t.str("bind_dn")
    bind_password = _bind_password(t, base)
    if bind_dn is not None and bind_password is None:
        raise ConfigError(t.key("bind_password_file"), "is required with bind_dn")
    if bind_dn is None and bind_password is not None:
        raise ConfigError(t.key("bind_dn"), "is required with bind_password_file")
    cfg = LDAPConfig(
        url=url, user_base=t.str("user_base", required=True), bind_dn=bind_dn, bind_password=bind_password,
        user_filter=_template(t, "user_filter", LDAPConfig.user_filter, ("username",)),
        group_base=t.str("group_base"),
        group_filter=_template(t, "group_filter", LDAPConfig.group_filter, ("dn", "username")),
        group_name_attribute=t.str("group_name_attribute", "cn"),
        username_attribute=t.str("username_attribute"), start_tls=start_tls,
        ca_file=_ca_file(t, "ca_file", base), connect_timeout=t.duration("connect_timeout", 5.0),
        timeout=t.duration("timeout", 10.0), pool_size=t.int("pool_size", 4, lo=1, hi=64))
    t.done()
    return cfg


def parse_identity(t: Table, base: Path) -> IdentityConfig:
    """Validate ``[identity]`` (``t`` may be an empty table: local accounts only)."""
    oidc = _oidc(t.table("oidc"), base) if t.has("oidc") else None
    ldap = _ldap(t.table("ldap"), base) if t.has("ldap") else None
    configured = {"local": True, "oidc": oidc is not None, "ldap": ldap is not None}
    if t.has("order"):
        order = t.str_list("order")
        for i, s in enumerate(order):
            if s not in SOURCES:
                raise ConfigError(t.key("order"), f"expected local, oidc or ldap, got {s!r}")
            if s in order[:i]:
                raise ConfigError(t.key("order"), f"{s!r} is listed twice")
            if not configured[s]:
                raise ConfigError(t.key("order"), f"{s!r} is listed but [identity.{s}] is not configured")
        if "local" in order[1:]:
            raise ConfigError(t.key("order"), '"local" must come first when listed (SCRAM is chosen before '
                              "the client sends a password)")
        if not order:
            raise ConfigError(t.key("order"), "needs at least one source")
    else:
        order = tuple(s for s in SOURCES if configured[s])
    cfg = IdentityConfig(
        order=order, login_timeout=t.duration("login_timeout", 20.0),
        max_failed_logins_per_user=t.int("max_failed_logins_per_user", 5, lo=0),
        max_failed_logins_per_address=t.int("max_failed_logins_per_address", 20, lo=0),
        max_failed_logins_per_user_total=t.int("max_failed_logins_per_user_total", 50, lo=0),
        failed_login_window=t.duration("failed_login_window", 300.0), oidc=oidc, ldap=ldap)
    t.done()
    return cfg
