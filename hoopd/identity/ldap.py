"""LDAP: a directory password, checked with ldap3 on a dedicated bounded thread pool.

Per login: connect (ldaps://, or ldap:// + StartTLS), bind as the service account, find
the user's entry (filter values escaped), bind as that DN with the password, then collect
groups from the group search and the entry's ``memberOf``. ldap3 blocks, so this runs on a
pool of ``pool_size`` threads with ldap3's own connect/receive timeouts: a slow or dead
directory fails those logins with a clear error and touches nothing else. The pool is
started and stopped with the service tree.
"""
from __future__ import annotations

import ipaddress
import math
import re
import ssl
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from ldap3 import NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException, LDAPStartTLSError
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from twisted.application import service
from twisted.internet.defer import Deferred, fail
from twisted.python.threadpool import ThreadPool

from hoopd.identity.base import AuthError, Identity
from hoopd.names import name_key
from hoopd.identity.config import LDAPConfig

QUEUE_PER_THREAD = 4  # logins waiting for a thread beyond this are refused at once
INVALID_CREDENTIALS = 49
_CERT_DUMP = re.compile(r"certificate \{.*\} doesn't match", re.S)


def bad_password(username: str, reason: str) -> AuthError:
    """The one answer for a wrong password and an unknown user (no user enumeration)."""
    return AuthError(f'password authentication failed for user "{username}"', "28P01", reason)


def _unavailable(cfg: LDAPConfig, e: LDAPException) -> AuthError:
    why = _CERT_DUMP.sub("certificate doesn't match", str(e))  # ldap3 puts the whole certificate in
    return AuthError("hoopd: the LDAP directory cannot be reached; try again later (details in the gateway log)",
                     "28000", "ldap_unavailable", f"{cfg.url}: {why}"[:300])


def norm_dn(dn: str) -> str:
    """A DN for case-insensitive comparison (attribute types and values lowered, spacing normalised)."""
    try:
        return ",".join(f"{a.lower()}={v.lower()}" for a, v, _ in parse_dn(dn, strip=True))
    except LDAPException:
        return dn.strip().lower()


def _under(dn: str, base: str) -> bool:
    return dn == base or dn.endswith("," + base)


def _server(cfg: LDAPConfig) -> Server:
    u = urlsplit(cfg.url)
    host = u.hostname or ""
    tls = None
    if u.scheme == "ldaps" or cfg.start_tls:
        try:
            ipaddress.ip_address(host)
            sni = None
        except ValueError:
            sni = host
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=cfg.ca_file, sni=sni)
    return Server(host, port=u.port, use_ssl=u.scheme == "ldaps", tls=tls, get_info=NONE,
                  connect_timeout=cfg.connect_timeout)


def _bind(cfg: LDAPConfig, server: Server, dn: str | None, password: str | None) -> Connection:
    """An open (and, with start_tls, encrypted) connection after one bind attempt; check ``.bound``."""
    conn = Connection(server, user=dn, password=password, read_only=True, raise_exceptions=False,
                      receive_timeout=max(1, math.ceil(cfg.timeout)))  # ldap3 packs it as whole seconds
    try:
        conn.open()
        if cfg.start_tls and not conn.start_tls():  # never fall back to sending the password in the clear
            raise LDAPStartTLSError(f"StartTLS refused: {(conn.result or {}).get('description', 'no answer')}")
        conn.bind()
    except LDAPException:
        _close(conn)
        raise
    return conn


def _close(conn: Connection) -> None:
    with suppress(LDAPException, OSError):  # the socket may be dead already
        conn.unbind()


def _search(conn: Connection, base: str, flt: str, attrs: list[str], what: str, limit: int = 0) -> list[dict]:
    conn.search(base, flt, SUBTREE, attributes=attrs, size_limit=limit)
    if conn.result["result"] not in (0, 4):  # success, sizeLimitExceeded
        raise AuthError("hoopd: the LDAP directory refused a search (details in the gateway log)", "28000",
                        "ldap_error", f"{what} search under {base!r}: {conn.result['description']} "
                        f"{conn.result.get('message') or ''}".strip())
    return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]


def _values(entry: dict, attr: str) -> list[str]:
    v = entry.get("attributes", {}).get(attr)
    return [v] if isinstance(v, str) else [x for x in (v or []) if isinstance(x, str)]


def _groups(cfg: LDAPConfig, conn: Connection, username: str, dn: str, member_of: list[str]) -> frozenset[str]:
    names: set[str] = set()
    seen: set[str] = set()
    if cfg.group_base:
        flt = cfg.group_filter.format(dn=escape_filter_chars(dn), username=escape_filter_chars(username))
        for e in _search(conn, cfg.group_base, flt, [cfg.group_name_attribute], "group"):
            seen.add(norm_dn(e["dn"]))
            names.update(_values(e, cfg.group_name_attribute))
    base = norm_dn(cfg.group_base) if cfg.group_base else None
    for g in member_of:
        n = norm_dn(g)
        if n in seen or (base is not None and not _under(n, base)):
            continue
        attr, value, _ = parse_dn(g, strip=True)[0]
        if attr.lower() == cfg.group_name_attribute.lower():
            names.add(value)
    return frozenset(names)


def check_password(cfg: LDAPConfig, username: str, password: str) -> Identity:
    """The blocking check (runs on the LDAP pool). Raises AuthError."""
    server = _server(cfg)
    try:
        svc = _bind(cfg, server, cfg.bind_dn, cfg.bind_password.value if cfg.bind_password else None)
    except LDAPException as e:
        raise _unavailable(cfg, e) from None
    try:
        if not svc.bound:
            raise AuthError("hoopd: LDAP is misconfigured: the service account cannot bind (details in the "
                            "gateway log)", "28000", "ldap_error",
                            f"{cfg.url}: bind as {cfg.bind_dn!r}: {svc.result.get('description')}")
        flt = cfg.user_filter.format(username=escape_filter_chars(username))
        entries = _search(svc, cfg.user_base, flt, ["memberOf", cfg.name_attribute], "user", limit=2)
        if not entries:
            raise bad_password(username, "unknown_user")
        if len(entries) > 1:
            raise AuthError(f'password authentication failed for user "{username}"', "28P01", "ldap_ambiguous",
                            f"{flt} matches more than one entry under {cfg.user_base!r}")
        dn = entries[0]["dn"]
        user = _bind(cfg, server, dn, password)
        try:
            if not user.bound:
                if user.result.get("result") == INVALID_CREDENTIALS:
                    raise bad_password(username, "bad_password")
                raise AuthError(f'password authentication failed for user "{username}"', "28P01", "ldap_error",
                                f"bind as {dn!r}: {user.result.get('description')}")
        finally:
            _close(user)
        # the directory matched the typed name its own way (uid ignores case and surrounding
        # spaces); the identity is named as the entry spells it
        key = name_key(username)
        name = next((v for v in _values(entries[0], cfg.name_attribute) if name_key(v) == key), None)
        if name is None:
            raise AuthError(f'password authentication failed for user "{username}"', "28P01", "ldap_name",
                            f"entry {dn!r} has no {cfg.name_attribute} that is the name typed")
        return Identity(name, _groups(cfg, svc, name, dn, _values(entries[0], "memberOf")), "ldap",
                        typed=username if username != name else None)
    except LDAPException as e:  # the directory went away or timed out mid-login
        raise _unavailable(cfg, e) from None
    finally:
        _close(svc)


class LDAPAuthenticator(service.Service):
    """Checks passwords against the directory on its own thread pool (a Service: start it)."""

    source = "ldap"
    name = "ldap"

    def __init__(self, cfg: LDAPConfig, reactor: Any) -> None:
        self.cfg = cfg
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=cfg.pool_size, name="hoopd-ldap")
        self.pending = 0

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()  # waits for running checks, each bounded by the ldap3 timeouts

    def reconfigure(self, cfg: LDAPConfig) -> None:
        self.cfg = cfg
        self.pool.adjustPoolsize(maxthreads=cfg.pool_size)

    def authenticate(self, username: str, password: str, peer: str) -> Deferred[Identity]:
        cfg = self.cfg
        if not password:  # an empty password is an anonymous bind that "succeeds"
            return fail(AuthError(f'hoopd: empty password for user "{username}"', "28P01", "empty_password"))
        if not self.running:
            return fail(AuthError("hoopd: LDAP sign-in is not running", "28000", "ldap_unavailable"))
        if self.pending >= cfg.pool_size * (QUEUE_PER_THREAD + 1):
            return fail(AuthError("hoopd: the LDAP directory is busy; try again later", "28000", "ldap_busy",
                                  f"{self.pending} LDAP checks already running or queued"))
        self.pending += 1  # counts until the thread is done, even if the login gave up waiting
        d: Deferred[Identity] = Deferred()

        def finished(ok: bool, result: Any) -> None:  # in the reactor thread
            self.pending -= 1
            if d.called:  # cancelled by the login timeout
                return
            if ok:
                d.callback(result)
            else:
                d.errback(result)

        self.pool.callInThreadWithCallback(
            lambda ok, result: self.reactor.callFromThread(finished, ok, result),
            check_password, cfg, username, password)
        return d
