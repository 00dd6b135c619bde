"""TOML -> typed, validated, immutable configuration.

``load(path)`` is the one entry point (twistd, ``hoopd check-config`` and reload use it).
Errors are ConfigError with the key path: ``connections.shop.port: expected an integer
1-65535, got "x"``. Secrets are read here (files, environment) and kept out of repr().
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from hoopd.confkit import ConfigError, Secret, Table
from hoopd.control.config import ControlConfig, check_oidc_audience, parse_control
from hoopd.identity.config import IdentityConfig, parse_identity
from hoopd.journal.config import JournalConfig, parse_journal
from hoopd.filecheck import warnings as file_warnings
from hoopd.names import name_key
from hoopd.levels import LEVEL_RANK, LEVELS

if TYPE_CHECKING:
    from hoopd.alerts import BurstSettings, Webhook
    from hoopd.masking.rules import MaskingConfig
    from hoopd.policy.rules import Rule
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class GatewayConfig:
    node: str = "gw-1"
    state_dir: str = "/var/lib/hoopd"
    login_timeout: float = 30.0
    max_sessions: int = 1000
    max_message_bytes: int = 256 << 20  # largest client message accepted (PostgreSQL's 1 GiB stays the ceiling)
    max_buffered_bytes: int = 512 << 20  # partly received client messages held, all sessions together
    hold_timeout: float = 3600.0  # longest a stage may hold a statement (an approval) before it is refused
    max_rewrite_bytes: int = 16 << 20  # largest server message a rewriting stage (masking) buffers; larger: FATAL 54000
    workers: int = 1  # reactor processes serving the postgres listener (hoopd.workers); "auto": one per core


@dataclass(frozen=True)
class ListenConfig:
    postgres: str = "tcp:6432:interface=127.0.0.1"
    http: str | None = None
    ssh: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    mode: str = "disable"  # disable | allow | require
    cert: str | None = None
    key: str | None = None
    allow_cleartext_loopback: bool = False  # cleartext passwords over plaintext from 127.0.0.0/8, ::1


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    levels: Mapping[str, str] = field(default_factory=dict)  # namespace -> level


@dataclass(frozen=True)
class UserConfig:
    name: str
    password_hash: str = field(repr=False)
    groups: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Credential:
    user: str
    password: Secret | None = None


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    host: str
    port: int = 5432
    database: str = "postgres"
    tls: str = "verify-full"  # disable | require | verify-full
    ca_file: str | None = None
    connect_timeout: float = 10.0
    credentials: Mapping[str, Credential] = field(default_factory=dict)  # default | read_only | ...
    access: Mapping[str, str] = field(default_factory=dict)  # group -> level
    rules: tuple[Rule, ...] = ()  # [[connections.NAME.rules]], checked before the global [[rules]]
    unparseable: str | None = None  # None: the global [policy] unparseable
    require_auth: tuple[str, ...] = ("scram-sha-256",)  # upstream auth methods answered (libpq's require_auth)
    allow_plaintext_password: bool = False  # md5/password may go over tls = "disable"
    channel_binding: str = "prefer"  # disable | prefer | require (SCRAM-SHA-256-PLUS over TLS)
    grant_reviewers: tuple[str, ...] = ()  # groups (globs) that approve access grants; none: no grants
    max_grant: float = 8 * 3600.0  # longest grant, seconds

    def credential_for(self, level: str) -> Credential:
        return self.credentials.get(level) or self.credentials["default"]

    def level_for(self, groups: frozenset[str]) -> str | None:
        """The highest level any of the groups grants, or None."""
        levels = [self.access[g] for g in groups if g in self.access]
        return max(levels, key=LEVEL_RANK.__getitem__) if levels else None


@dataclass(frozen=True)
class FunctionSettings:
    """``[policy]`` keys for the read_only function allowlist (hoopd.policy.functions)."""

    read_only_functions: frozenset[str] = frozenset()  # read_only_functions: "schema.name" of vetted volatile functions
    catalog_max_age: float = 60.0  # function_catalog_max_age: seconds a database's function catalog is trusted


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig
    listen: ListenConfig
    tls: TLSConfig
    logging: LoggingConfig
    journal: JournalConfig
    users: Mapping[str, UserConfig]  # by hoopd.names.name_key of the name
    connections: Mapping[str, ConnectionConfig]
    source: str = ""
    identity: IdentityConfig = field(default_factory=IdentityConfig)  # [identity]: order, OIDC, LDAP, limits
    control: ControlConfig = field(default_factory=ControlConfig)  # [control]: API tokens, SSH keys, shutdown
    rules: tuple[Rule, ...] = ()  # global [[rules]] (hoopd.policy)
    unparseable: str = "admin"  # [policy] unparseable: lowest level whose unparseable statements pass
    policy_enabled: bool = True  # [policy] enabled: false takes the SQL policy stage out (needs a restart)
    max_statement_bytes: int = 256 << 10  # [policy] max_statement_bytes: longer statements are refused below admin
    functions: FunctionSettings = field(default_factory=FunctionSettings)  # [policy] read_only function allowlist
    masking: MaskingConfig | None = None  # [masking] (hoopd.masking.rules); None: no rules, no masking stage
    alerts: tuple[Webhook, ...] = ()  # [[alerts.webhooks]] (hoopd.alerts)
    bursts: BurstSettings | None = None  # [alerts] burst thresholds (None: the defaults)
    mcp: "McpConfig" = field(default_factory=lambda: McpConfig())  # [mcp] (hoopd.mcp)
    state: ConnectionConfig | None = None  # [state]: the database several nodes share (hoopd.state)


@dataclass(frozen=True)
class McpConfig:
    """[mcp]: the Model Context Protocol endpoint at /mcp on the control port."""

    enabled: bool = False
    max_rows: int = 1000  # rows of one result returned (more: truncated = true)
    max_result_bytes: int = 4 << 20  # bytes of row data returned per call
    timeout: float = 300.0  # longest call (a review hold included), then it is cancelled
    max_calls: int = 4  # calls of one identity running at once


def _mcp(root: Table, gateway: GatewayConfig, listen: ListenConfig) -> McpConfig:
    t = root.table("mcp")
    d = McpConfig()
    cfg = McpConfig(enabled=t.bool("enabled", d.enabled), max_rows=t.int("max_rows", d.max_rows, lo=1),
                    max_result_bytes=t.size("max_result_bytes", d.max_result_bytes),
                    timeout=t.duration("timeout", d.timeout), max_calls=t.int("max_calls", d.max_calls, lo=1))
    t.done()
    if cfg.enabled and not listen.http:
        raise ConfigError("mcp.enabled", "the MCP endpoint is served on the control port: set listen.http")
    return cfg


LOG_LEVELS = ("none", "critical", "error", "warn", "info", "debug", "trace")


def _name(t: Table, name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(t.key(name), f"{what} names are letters, digits, _ . - (at most 63), got {name!r}")
    return name


def _secret(t: Table, base: Path) -> Secret | None:
    sources = [k for k in ("password", "password_file", "password_env") if t.has(k)]
    if len(sources) > 1:
        raise ConfigError(t.path, f"give only one of password, password_file, password_env (got {', '.join(sources)})")
    if not sources:
        return None
    kind = sources[0]
    val = t.str(kind, required=True)
    if kind == "password":
        return Secret(val, "inline")
    if kind == "password_env":
        if val not in os.environ:
            raise ConfigError(t.key(kind), f"environment variable {val} is not set")
        return Secret(os.environ[val], f"env {val}")
    p = (base / val) if not os.path.isabs(val) else Path(val)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(t.key(kind), f"cannot read {p}: {e.strerror}") from None
    return Secret(text.rstrip("\r\n"), f"file {p}")


WILDCARD = "*"
"""The connection for a client database no other connection is named after (like
pgbouncer's ``*``): the upstream database is the client's."""


def _connection(name: str, t: Table, base: Path) -> ConnectionConfig:
    host = t.str("host", required=True)
    port = t.int("port", 5432, lo=1, hi=65535)
    database = t.str("database", name)
    tls = t.str("tls", "verify-full", choices=("disable", "require", "verify-full"))
    ca_file = t.str("ca_file")
    connect_timeout = t.duration("connect_timeout", 10.0)
    creds: dict[str, Credential] = {}
    ct = t.table("credentials", required=True)
    for level, _ in list(ct.items()):
        if level not in ("default",) + LEVELS:
            raise ConfigError(ct.key(level), "expected default, read_only, read_write or admin")
        c = ct.table(level)
        creds[level] = Credential(c.str("user", required=True), _secret(c, base))
        c.done()
    if "default" not in creds:
        raise ConfigError(ct.key("default"), "is required (the credential used for levels without their own)")
    at = t.table("access")
    access = {g: at.str(g, choices=LEVELS) for g, _ in list(at.items())}
    from hoopd.policy.config import parse_connection  # here: hoopd.policy imports this module

    rules, unparseable = parse_connection(t)
    require_auth, allow_plaintext, channel_binding = _upstream_auth(t, tls)
    grant_reviewers = tuple(t.str_list("grant_reviewers"))
    max_grant = t.duration("max_grant", ConnectionConfig.max_grant)
    if max_grant < 60:
        raise ConfigError(t.key("max_grant"), "must be at least 60s")
    t.done()
    return ConnectionConfig(name, host, port, database, tls, ca_file, connect_timeout, creds, access,
                            rules, unparseable, require_auth=require_auth, allow_plaintext_password=allow_plaintext,
                            channel_binding=channel_binding, grant_reviewers=grant_reviewers, max_grant=max_grant)


AUTH_METHODS = ("scram-sha-256", "md5", "password", "none")


def _upstream_auth(t: Table, tls: str) -> tuple[tuple[str, ...], bool, str]:
    """``require_auth``, ``allow_plaintext_password``, ``channel_binding`` of a connection."""
    methods = t.str_list("require_auth", ("scram-sha-256",))
    for i, meth in enumerate(methods):
        if meth not in AUTH_METHODS:
            raise ConfigError(t.key("require_auth"), f"expected {', '.join(AUTH_METHODS)}, got {meth!r}")
        if meth in methods[:i]:
            raise ConfigError(t.key("require_auth"), f"{meth!r} is listed twice")
    if not methods:
        raise ConfigError(t.key("require_auth"), 'needs at least one method (e.g. "scram-sha-256")')
    allow_plaintext = t.bool("allow_plaintext_password", False)
    exposed = [meth for meth in methods if meth in ("md5", "password")]
    if exposed and tls == "disable" and not allow_plaintext:
        raise ConfigError(t.key("require_auth"), f"{exposed[0]!r} sends the password (or its md5 hash) over an "
                          f'unencrypted connection (tls = "disable"): use TLS, or set '
                          f"{t.key('allow_plaintext_password')} = true")
    channel_binding = t.str("channel_binding", "prefer", choices=("disable", "prefer", "require"))
    if channel_binding == "require" and (tls == "disable" or methods != ("scram-sha-256",)):
        raise ConfigError(t.key("channel_binding"), '"require" needs TLS (tls = "require" or "verify-full") and '
                          'require_auth = ["scram-sha-256"] only')
    return methods, allow_plaintext, channel_binding


MAX_WORKERS = 64


def _workers(g: Table) -> int:
    """[gateway] workers: a number of processes, or "auto" (one per core)."""
    raw = g.raw("workers", 1)
    if raw == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_WORKERS:
        raise ConfigError(g.key("workers"), f'must be a number from 1 to {MAX_WORKERS}, or "auto"')
    return raw


def parse(data: dict, base: Path = Path("."), source: str = "") -> Config:
    """Validate a decoded TOML document."""
    root = Table(data, "")
    g = root.table("gateway")
    gateway = GatewayConfig(
        node=_name(g, g.str("node", "gw-1"), "node"),
        state_dir=g.str("state_dir", "/var/lib/hoopd"),
        login_timeout=g.duration("login_timeout", 30.0),
        max_sessions=g.int("max_sessions", 1000, lo=1),
        max_message_bytes=g.int("max_message_bytes", GatewayConfig.max_message_bytes, lo=10_000, hi=(1 << 30) - 5),
        max_buffered_bytes=g.int("max_buffered_bytes", GatewayConfig.max_buffered_bytes, lo=1 << 20),
        hold_timeout=g.duration("hold_timeout", GatewayConfig.hold_timeout),
        max_rewrite_bytes=g.int("max_rewrite_bytes", GatewayConfig.max_rewrite_bytes, lo=1 << 20, hi=(1 << 30) - 5),
        workers=_workers(g),
    )
    if gateway.hold_timeout < 1:
        raise ConfigError("gateway.hold_timeout", "must be at least 1s")
    g.done()
    li = root.table("listen")
    listen = ListenConfig(li.str("postgres", ListenConfig.postgres), li.str("http"), li.str("ssh"))
    li.done()
    tt = root.table("tls")
    tls = TLSConfig(tt.str("mode", "disable", choices=("disable", "allow", "require")),
                    tt.str("cert"), tt.str("key"), tt.bool("allow_cleartext_loopback", False))
    tt.done()
    if tls.mode != "disable":
        for k in ("cert", "key"):
            path = getattr(tls, k)
            if path is None:
                raise ConfigError(f"tls.{k}", f'is required when tls.mode = "{tls.mode}"')
            if not os.access(base / path, os.R_OK):
                raise ConfigError(f"tls.{k}", f"cannot read {base / path}")
        tls = TLSConfig(tls.mode, str(base / tls.cert), str(base / tls.key), tls.allow_cleartext_loopback)  # type: ignore[operator]
    lt = root.table("logging")
    logging = LoggingConfig(lt.str("level", "info", choices=LOG_LEVELS), {})
    lv = lt.table("levels")
    logging = LoggingConfig(logging.level, {ns: lv.str(ns, choices=LOG_LEVELS) for ns, _ in list(lv.items())})
    lt.done()
    journal = parse_journal(root.table("journal"), base)
    users: dict[str, UserConfig] = {}  # by name_key: one name per person
    for u in root.tables("users"):
        name = u.str("name", required=True)
        key = name_key(name)
        if not key:
            raise ConfigError(u.key("name"), "is empty")
        if key in users:
            raise ConfigError(u.key("name"), f"duplicate user {name!r}" if users[key].name == name else
                              f"{name!r} is the same name as user {users[key].name!r} (names compare ignoring"
                              " case, surrounding spaces and control characters)")
        ph = u.str("password_hash", required=True)
        if not ph.startswith("SCRAM-SHA-256$"):
            raise ConfigError(u.key("password_hash"), "expected a SCRAM-SHA-256 verifier (run `hoopd hash-password`)")
        users[key] = UserConfig(name, ph, frozenset(u.str_list("groups")))
        u.done()
    conns: dict[str, ConnectionConfig] = {}
    ctab = root.table("connections")
    for cname, _ in list(ctab.items()):
        if cname != WILDCARD:
            _name(ctab, cname, "connection")
        elif ctab.table(cname).has("database"):
            raise ConfigError(ctab.table(cname).key("database"), 'the "*" connection serves the database each client'
                              " names; it has no database of its own")
        conns[cname] = _connection(cname, ctab.table(cname), base)
    identity = parse_identity(root.table("identity"), base)
    control = parse_control(root.table("control"), base)
    check_oidc_audience(control, identity.oidc)
    from hoopd.policy.config import parse_global

    from hoopd.masking.rules import parse_masking

    rules, unparseable, policy_enabled, max_statement_bytes, vetted, max_age = parse_global(root)
    masking = parse_masking(root, base)
    from hoopd.alerts import parse_alerts

    alerts, bursts = parse_alerts(root, base)
    mcp = _mcp(root, gateway, listen)
    state = None
    if root.has("state"):
        st = root.table("state")
        state = _connection("state", st, base)
        if state.access or state.rules or state.grant_reviewers:
            raise ConfigError("state", "the state database takes host, port, database, tls, ca_file, connect_timeout"
                              " and credentials.default only")
        if gateway.workers > 1:
            raise ConfigError("state", "several nodes ([state]) need gateway.workers = 1 on each node for now")
    root.done()
    functions = FunctionSettings(vetted, max_age)
    for rule in [*rules, *(r for c in conns.values() for r in c.rules)]:
        if rule.review is not None and rule.review.timeout > gateway.hold_timeout:
            raise ConfigError("gateway.hold_timeout", f"is {gateway.hold_timeout:g}s, shorter than the review timeout"
                              f" of rule {rule.name!r} ({rule.review.timeout:g}s): statements would be refused first")
    return Config(gateway, listen, tls, logging, journal, users, conns, source, identity, control,
                  rules, unparseable, policy_enabled, max_statement_bytes, functions,
                  masking if masking.rules else None, alerts, bursts, mcp, state)


def read_toml(path: str | os.PathLike) -> dict:
    """A config file's TOML document (ConfigError when it cannot be read or parsed)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {p}: {e.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("", f"{p}: not valid TOML: {e}") from None


def load(path: str | os.PathLike) -> Config:
    """Read and validate a config file; relative paths inside are relative to its folder."""
    p = Path(path)
    return parse(read_toml(p), p.parent.resolve(), str(p))


def warnings(cfg: Config) -> list[str]:
    """Everything check-config, start-up and reload warn about in a valid config."""
    return shared_role_warnings(cfg) + file_warnings(cfg)


def shared_role_warnings(cfg: Config) -> list[str]:
    """Connections whose read_only level logs in upstream as the same role as a level that
    may write: the weak configuration, where only the gateway stands between a read_only
    user and a write (printed by check-config and at start-up)."""
    out = []
    for name, conn in cfg.connections.items():
        levels = set(conn.access.values())
        if "read_only" not in levels:
            continue
        role = conn.credential_for("read_only").user
        shared = [lvl for lvl in ("read_write", "admin") if lvl in levels and conn.credential_for(lvl).user == role]
        if shared:
            out.append(f"connections.{name}: read_only shares the upstream role \"{role}\" with {' and '.join(shared)};"
                       " read_only sessions then rest on the gateway alone (the role can see other sessions' SQL in"
                       " pg_stat_activity and could write if the gateway were bypassed); give read_only a"
                       f" SELECT-only role of its own in [connections.{name}.credentials.read_only]")
    return out
