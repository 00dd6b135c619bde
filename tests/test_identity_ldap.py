"""LDAP passwords against a real slapd (StartTLS and LDAPS), on the authenticator's own thread pool."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from hoopd.config import Secret
from hoopd.identity.base import AuthError, Identity
from hoopd.identity.config import LDAPConfig
from hoopd.identity.ldap import LDAPAuthenticator, norm_dn
from tests.certs import make_ca, pem_cert
from tests.ldap_server import PASSWORDS, SERVICE_DN, SERVICE_PW, SUFFIX, Slapd, seed_people

pytestmark = pytest.mark.integration


def ldap_config(server: Slapd, **over) -> LDAPConfig:
    cfg = LDAPConfig(url=server.url, start_tls=True, ca_file=str(server.ca_file), bind_dn=SERVICE_DN,
                     bind_password=Secret(SERVICE_PW), user_base=f"ou=people,{SUFFIX}",
                     group_base=f"ou=groups,{SUFFIX}", connect_timeout=2.0, timeout=2.0, pool_size=2)
    return replace(cfg, **over)


@pytest.fixture
def make_auth():
    started: list[LDAPAuthenticator] = []

    def make(server: Slapd, **over) -> LDAPAuthenticator:
        auth = LDAPAuthenticator(ldap_config(server, **over), reactor)
        auth.startService()
        started.append(auth)
        return auth

    yield make
    for a in started:
        a.stopService()


@pytest.fixture
def lone_slapd(tmp_path: Path):
    """A slapd of its own, for tests that stop or freeze it."""
    s = Slapd(tmp_path).start()
    seed_people(s)
    yield s
    s.stop()


async def refused_deferred(d: Deferred) -> AuthError:
    with pytest.raises(AuthError) as e:
        await d
    return e.value


async def refused(auth: LDAPAuthenticator, user: str, password: str) -> AuthError:
    err = await refused_deferred(auth.authenticate(user, password, "127.0.0.1"))
    if password:
        assert password not in err.message and password not in (err.detail or "")
    return err


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


@pytest.mark.parametrize("tls", ["start_tls", "ldaps"])
@pytest_twisted.ensureDeferred
async def test_good_password_gives_identity_with_groups(slapd, make_auth, tls):
    over = {"url": slapd.ldaps_url, "start_tls": False} if tls == "ldaps" else {}
    auth = make_auth(slapd, **over)
    ident = await auth.authenticate("alice", PASSWORDS["alice"], "127.0.0.1")
    assert ident == Identity("alice", frozenset({"dba", "analysts"}), "ldap")
    assert (await auth.authenticate("bob", PASSWORDS["bob"], "127.0.0.1")).groups == {"analysts"}


@pytest_twisted.ensureDeferred
async def test_bad_password_and_unknown_user_get_the_same_answer(slapd, make_auth):
    auth = make_auth(slapd)
    bad = await refused(auth, "alice", PASSWORDS["bob"])
    unknown = await refused(auth, "nobody", "whatever-1")
    assert (bad.reason, unknown.reason) == ("bad_password", "unknown_user")
    assert bad.message == 'password authentication failed for user "alice"'
    assert unknown.message == 'password authentication failed for user "nobody"'
    assert bad.sqlstate == unknown.sqlstate == "28P01"


@pytest_twisted.ensureDeferred
async def test_empty_password_is_refused_without_asking_the_directory(slapd, make_auth):
    auth = make_auth(slapd)
    err = await refused(auth, "alice", "")
    assert err.reason == "empty_password" and "empty password" in err.message
    assert auth.pending == 0


@pytest.mark.parametrize("name", ["*", "alice)(uid=*", "al*", "alice\\", "\x00"])
@pytest_twisted.ensureDeferred
async def test_filter_values_are_escaped(slapd, make_auth, name):
    err = await refused(make_auth(slapd), name, PASSWORDS["alice"])
    assert err.reason == "unknown_user"


@pytest_twisted.ensureDeferred
async def test_groups_from_group_search_and_member_of(slapd, make_auth):
    # memberOf only (no group base): every group, wherever it lives
    auth = make_auth(slapd, group_base=None)
    assert (await auth.authenticate("carol", PASSWORDS["carol"], "::1")).groups == {"owners", "outsiders"}
    # group search by another attribute: "owners" (bob is its owner, not a member) comes from the search
    auth = make_auth(slapd, group_filter="(&(objectClass=groupOfNames)(owner={dn}))")
    assert (await auth.authenticate("bob", PASSWORDS["bob"], "::1")).groups == {"owners", "analysts"}
    # memberOf outside the group base is ignored; the base matches whatever its case
    auth = make_auth(slapd, group_base=f"OU=Groups,{SUFFIX.upper()}")
    assert (await auth.authenticate("carol", PASSWORDS["carol"], "::1")).groups == {"owners"}
    auth = make_auth(slapd, group_name_attribute="CN")
    assert (await auth.authenticate("alice", PASSWORDS["alice"], "::1")).groups == {"dba", "analysts"}


def test_dns_compare_case_insensitively():
    assert norm_dn("CN=DBA, OU=Groups,DC=Example,DC=org") == norm_dn("cn=dba,ou=groups,dc=example,dc=org")
    assert norm_dn("cn=a,dc=x") != norm_dn("cn=b,dc=x")


@pytest_twisted.ensureDeferred
async def test_user_filter_with_another_attribute(slapd, make_auth):
    auth = make_auth(slapd, user_filter="(&(objectClass=inetOrgPerson)(mail={username}))")
    ident = await auth.authenticate("bob@example.org", PASSWORDS["bob"], "127.0.0.1")
    assert ident.name == "bob@example.org" and ident.groups == {"analysts"}


@pytest_twisted.ensureDeferred
async def test_the_identity_is_named_as_the_directory_spells_it(slapd, make_auth):
    # uid matches ignoring case and surrounding spaces: " BOB " is bob, and is named bob,
    # so rules, limits and journals see one person whatever the client typed
    auth = make_auth(slapd)
    for typed in ("BOB", " bob ", "Bob"):
        ident = await auth.authenticate(typed, PASSWORDS["bob"], "127.0.0.1")
        assert (ident.name, ident.typed, ident.groups) == ("bob", typed, {"analysts"})
    assert (await auth.authenticate("bob", PASSWORDS["bob"], "127.0.0.1")).typed is None


@pytest_twisted.ensureDeferred
async def test_an_entry_without_the_name_attribute_is_refused(slapd, make_auth):
    # the filter matched on mail but the identity would be named by uid: the typed name is
    # not the entry's uid, so the gateway does not invent a name for it
    auth = make_auth(slapd, user_filter="(mail={username})", username_attribute="uid")
    err = await refused(auth, "bob@example.org", PASSWORDS["bob"])
    assert (err.reason, err.sqlstate) == ("ldap_name", "28P01")


@pytest_twisted.ensureDeferred
async def test_wrong_ca_fails_closed(slapd, make_auth, tmp_path):
    other = tmp_path / "other.crt"
    other.write_bytes(pem_cert(make_ca("someone else")[0]))
    for over in ({}, {"url": slapd.ldaps_url, "start_tls": False}):
        err = await refused(make_auth(slapd, ca_file=str(other), **over), "alice", PASSWORDS["alice"])
        assert (err.reason, err.sqlstate) == ("ldap_unavailable", "28000")
        assert "cannot be reached" in err.message and err.detail


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_host_is_refused(tmp_path, make_auth):
    other = Slapd(tmp_path, cert_hostnames=("ldap.example.org",), cert_ips=()).start()
    try:
        for over in ({}, {"url": other.ldaps_url, "start_tls": False}):
            err = await refused(make_auth(other, **over), "alice", PASSWORDS["alice"])
            assert err.reason == "ldap_unavailable" and "doesn't match" in err.detail
    finally:
        other.stop()


@pytest_twisted.ensureDeferred
async def test_refused_start_tls_never_falls_back_to_plaintext(tmp_path, make_auth):
    plain = Slapd(tmp_path, tls=False).start()
    try:
        seed_people(plain)
        assert (await make_auth(plain, start_tls=False).authenticate("bob", PASSWORDS["bob"], "::1")).name == "bob"
        err = await refused(make_auth(plain), "bob", PASSWORDS["bob"])
        assert err.reason == "ldap_unavailable" and "starttls" in err.detail.lower()
    finally:
        plain.stop()


@pytest_twisted.ensureDeferred
async def test_bad_service_account_is_a_config_error(slapd, make_auth):
    err = await refused(make_auth(slapd, bind_password=Secret("wrong")), "alice", PASSWORDS["alice"])
    assert err.reason == "ldap_error" and "service account cannot bind" in err.message
    assert "wrong" not in err.message + (err.detail or "")


@pytest_twisted.ensureDeferred
async def test_stopped_slapd_fails_closed(lone_slapd, make_auth):
    auth = make_auth(lone_slapd)
    assert (await auth.authenticate("alice", PASSWORDS["alice"], "127.0.0.1")).name == "alice"
    lone_slapd.stop()
    err = await refused(auth, "alice", PASSWORDS["alice"])
    assert (err.reason, err.sqlstate) == ("ldap_unavailable", "28000")
    assert "try again later" in err.message and "Connection refused" in err.detail


@pytest_twisted.ensureDeferred
async def test_frozen_slapd_times_out_and_extra_logins_are_refused_at_once(lone_slapd, make_auth):
    auth = make_auth(lone_slapd, timeout=1.0, pool_size=1)
    lone_slapd.pause()
    try:
        waiting = [auth.authenticate("alice", PASSWORDS["alice"], "127.0.0.1") for _ in range(5)]
        busy = await refused(auth, "bob", PASSWORDS["bob"])  # the bounded queue is full
        assert busy.reason == "ldap_busy"
        first = await refused_deferred(waiting[0])
        assert first.reason == "ldap_unavailable"
        for d in waiting[1:]:
            d.cancel()  # what the login timeout does; the threads finish on their own
    finally:
        lone_slapd.resume()
    while auth.pending:
        await sleep(0.05)
    assert (await auth.authenticate("alice", PASSWORDS["alice"], "127.0.0.1")).name == "alice"


@pytest_twisted.ensureDeferred
async def test_not_started_refuses(slapd):
    auth = LDAPAuthenticator(ldap_config(slapd), reactor)
    err = await refused(auth, "alice", PASSWORDS["alice"])
    assert err.reason == "ldap_unavailable"
