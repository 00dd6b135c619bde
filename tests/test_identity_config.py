"""The [identity] config section: defaults, order, OIDC and LDAP keys, clear errors with key paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from hoopd.config import parse
from hoopd.confkit import ConfigError
from tests.certs import make_ca, pem_cert

OIDC = {"issuer": "https://idp.example.com/realms/main", "audience": "hoopd"}
LDAP = {"url": "ldaps://ldap.example.com", "user_base": "ou=people,dc=example,dc=com"}


def identity(section: dict, base: Path = Path(".")):
    return parse({"identity": section}, base).identity


def error(section: dict, base: Path = Path(".")) -> str:
    with pytest.raises(ConfigError) as e:
        identity(section, base)
    return str(e.value)


def test_defaults_local_only():
    cfg = parse({}).identity
    assert cfg.order == ("local",) and cfg.oidc is None and cfg.ldap is None
    assert (cfg.login_timeout, cfg.max_failed_logins_per_user, cfg.max_failed_logins_per_address,
            cfg.failed_login_window) == (20.0, 5, 20, 300.0)


def test_configured_sources_join_the_default_order():
    cfg = identity({"oidc": OIDC, "ldap": LDAP, "login_timeout": "5s", "failed_login_window": "15m"})
    assert cfg.order == ("local", "oidc", "ldap")
    assert (cfg.login_timeout, cfg.failed_login_window) == (5.0, 900.0)
    o = cfg.oidc
    assert (o.audience, o.algorithms, o.leeway, o.groups_claim, o.username_claim) == (
        ("hoopd",), ("RS256", "ES256"), 60.0, "groups", None)
    lc = cfg.ldap
    assert (lc.user_filter, lc.group_filter, lc.group_name_attribute, lc.pool_size, lc.start_tls) == (
        "(uid={username})", "(&(objectClass=groupOfNames)(member={dn}))", "cn", 4, False)


def test_explicit_order():
    assert identity({"ldap": LDAP, "oidc": OIDC, "order": ["ldap"]}).order == ("ldap",)
    assert identity({"ldap": LDAP, "order": ["local", "ldap"]}).order == ("local", "ldap")


@pytest.mark.parametrize("section,message", [
    ({"order": ["ldap"]}, "identity.order: 'ldap' is listed but [identity.ldap] is not configured"),
    ({"ldap": LDAP, "order": ["ldap", "local"]}, 'identity.order: "local" must come first'),
    ({"order": ["local", "local"]}, "identity.order: 'local' is listed twice"),
    ({"order": ["kerberos"]}, "identity.order: expected local, oidc or ldap, got 'kerberos'"),
    ({"order": []}, "identity.order: needs at least one source"),
    ({"max_failed_logins_per_user": -1}, "identity.max_failed_logins_per_user: expected an integer >= 0"),
    ({"lockout": 3}, "identity.lockout: unknown key"),
    ({"oidc": {**OIDC, "algorithms": ["RS256", "HS256"]}}, "identity.oidc.algorithms: 'HS256' is not accepted"),
    ({"oidc": {**OIDC, "algorithms": "none"}}, "none and HS* are refused"),
    ({"oidc": {**OIDC, "issuer": "http://idp.example.com"}}, "identity.oidc.issuer: expected an https:// URL"),
    ({"oidc": {**OIDC, "jwks_uri": "ftp://x"}}, "identity.oidc.jwks_uri: expected an https:// URL"),
    ({"oidc": {"issuer": OIDC["issuer"]}}, "identity.oidc.audience: is required"),
    ({"oidc": {**OIDC, "groups_claim": "a..b"}}, "identity.oidc.groups_claim: expected a dotted claim path"),
    ({"oidc": {**OIDC, "ca_file": "/nonexistent/ca.pem"}}, "identity.oidc.ca_file: cannot read"),
    ({"oidc": {**OIDC, "scopes": "openid"}}, "identity.oidc.scopes: unknown key"),
    ({"ldap": {**LDAP, "url": "http://ldap"}}, "identity.ldap.url: expected ldap://HOST[:PORT] or ldaps://"),
    ({"ldap": {**LDAP, "start_tls": True}}, "identity.ldap.start_tls: ldaps:// is already TLS"),
    ({"ldap": {**LDAP, "bind_dn": "cn=svc"}}, "identity.ldap.bind_password_file: is required with bind_dn"),
    ({"ldap": {**LDAP, "user_filter": "(uid={user})"}}, "identity.ldap.user_filter: bad placeholder 'user'"),
    ({"ldap": {**LDAP, "user_filter": "uid={username}"}}, "expected an LDAP filter in parentheses"),
    ({"ldap": {**LDAP, "group_filter": "(member={uid})"}}, "(use {dn} or {username})"),
    ({"ldap": {**LDAP, "pool_size": 0}}, "identity.ldap.pool_size: expected an integer 1-64"),
    ({"ldap": {"url": LDAP["url"]}}, "identity.ldap.user_base: is required"),
])
def test_errors_name_the_key(section, message):
    assert message in error(section)


def test_http_issuer_allowed_on_loopback_only():
    assert identity({"oidc": {**OIDC, "issuer": "http://127.0.0.1:8080"}}).oidc.issuer == "http://127.0.0.1:8080"
    assert identity({"oidc": {**OIDC, "issuer": "http://localhost:8080"}}).oidc is not None


def test_files_are_relative_to_the_config_and_the_bind_password_is_a_secret(tmp_path):
    (tmp_path / "ca.pem").write_bytes(pem_cert(make_ca()[0]))
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "bind.pw").write_text("hunter2-bind\n")
    cfg = identity({"ldap": {**LDAP, "bind_dn": "cn=svc,dc=example,dc=com", "bind_password_file": "bind.pw",
                             "ca_file": "ca.pem", "timeout": "3s"},
                    "oidc": {**OIDC, "ca_file": "ca.pem", "audience": ["a", "b"]}}, tmp_path)
    assert cfg.ldap.ca_file == cfg.oidc.ca_file == str(tmp_path / "ca.pem")
    assert cfg.ldap.bind_password.value == "hunter2-bind" and cfg.ldap.timeout == 3.0
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.ldap.bind_password)
    assert cfg.oidc.audience == ("a", "b")
    assert "identity.oidc.ca_file: no PEM certificate in" in error({"oidc": {**OIDC, "ca_file": "key.pem"}}, tmp_path)
    assert "identity.ldap.bind_password_file: cannot read" in error(
        {"ldap": {**LDAP, "bind_dn": "cn=svc", "bind_password_file": "missing"}}, tmp_path)
