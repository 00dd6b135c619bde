"""The identity chain: source order, failed-login limits (with a Clock), timeouts, counters,
and one run against a real slapd and a real IdP."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from hoopd.config import Secret
from hoopd.identity.base import AuthError, Identity
from hoopd.identity.chain import IdentityChain
from hoopd.identity.config import IdentityConfig, LDAPConfig, OIDCConfig
from hoopd.identity.limiter import FailedLoginLimiter, address_key
from tests.ldap_server import PASSWORDS, SERVICE_DN, SERVICE_PW, SUFFIX
from tests.oidc_server import AUDIENCE

SECRET = "s3cret-Pa55word"


class Source:
    """A password source that answers from a table: user -> Identity | AuthError | None | Deferred."""

    def __init__(self, name: str, answers: dict[str, Any]) -> None:
        self.source = name
        self.answers = answers
        self.calls: list[str] = []

    def authenticate(self, username: str, password: str, peer: str) -> Deferred | None:
        self.calls.append(username)
        a = self.answers.get(username, AuthError("bad", reason="unknown_user"))
        if a is None or isinstance(a, Deferred):
            return a
        return fail(a) if isinstance(a, Exception) else succeed(a)


def chain_with(*sources: Source, **cfg: Any) -> tuple[IdentityChain, Clock]:
    clock = Clock()
    chain = IdentityChain(IdentityConfig(**cfg), reactor, clock)
    chain.sources = list(sources)
    return chain, clock


def outcome(d: Deferred) -> Any:
    """The (already fired) result or failure value of d."""
    out: list[Any] = []
    d.addBoth(lambda r: out.append(getattr(r, "value", r)))
    assert out, "the Deferred has not fired"
    return out[0]


@pytest.fixture
def logged():
    events: list[str] = []

    def observer(e: dict) -> None:
        events.append(formatEvent(e) + repr(e.get("log_failure", "")))

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# --- order ---------------------------------------------------------------------------------

def test_sources_in_order_unknown_user_passes_on_other_refusals_stop():
    alice = Identity("alice", frozenset({"dev"}), "ldap")
    first = Source("oidc", {"bob": AuthError("expired", reason="token_expired"), "carol": None})
    second = Source("ldap", {"alice": alice, "bob": alice, "carol": alice})
    chain, _ = chain_with(first, second)
    assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")) is alice  # unknown to the first
    assert outcome(chain.authenticate("carol", SECRET, "10.0.0.1")) is alice  # not handled by the first
    err = outcome(chain.authenticate("bob", SECRET, "10.0.0.1"))
    assert err.reason == "token_expired" and second.calls == ["alice", "carol"]
    err = outcome(chain.authenticate("nobody", SECRET, "10.0.0.1"))
    assert (err.reason, err.message) == ("unknown_user", "bad")
    assert dict(chain.logins) == {"ldap": 2}
    assert dict(chain.failures) == {"token_expired": 1, "unknown_user": 1}


def test_no_source_answers_with_a_plain_password_failure():
    chain, _ = chain_with()
    err = outcome(chain.authenticate("alice", SECRET, "10.0.0.1"))
    assert (err.reason, err.sqlstate, err.message) == ("no_source", "28P01",
                                                        'password authentication failed for user "alice"')


def test_order_builds_the_sources_from_config():
    oidc = OIDCConfig("https://idp.example", ("hoopd",))
    ldap = LDAPConfig("ldap://127.0.0.1:1", "dc=x")
    chain = IdentityChain(IdentityConfig(order=("local", "ldap", "oidc"), oidc=oidc, ldap=ldap), reactor, Clock())
    assert [s.source for s in chain.sources] == ["ldap", "oidc"] and chain.local_accounts
    kept = chain.ldap
    chain.reconfigure(IdentityConfig(order=("oidc", "ldap"), oidc=oidc, ldap=replace(ldap, pool_size=8)))
    assert [s.source for s in chain.sources] == ["oidc", "ldap"] and not chain.local_accounts
    assert chain.ldap is kept and chain.ldap.pool.max == 8
    chain.reconfigure(IdentityConfig())
    assert chain.sources == [] and chain.ldap is None and not list(chain)


# --- limits --------------------------------------------------------------------------------

def test_per_user_limit_with_retry_time_and_expiry():
    chain, clock = chain_with(Source("ldap", {"alice": AuthError("bad")}), max_failed_logins_per_user=3,
                              failed_login_window=300)
    for i in range(3):
        assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")).reason == "bad_password"
        clock.advance(10)
    err = outcome(chain.authenticate(" Alice", SECRET, "10.0.0.1"))  # the same name, however typed
    assert (err.reason, err.sqlstate, err.message) == ("rate_limited", "53300",
                                                        "hoopd: too many failed logins, retry in 270 s")
    clock.advance(265)
    assert outcome(chain.authenticate("ALICE", SECRET, "10.0.0.1")).message.endswith("retry in 5 s")
    clock.advance(5)
    assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")).reason == "bad_password"  # one aged out
    assert chain.failures["rate_limited"] == 2 and chain.failures["bad_password"] == 4


def test_a_stranger_cannot_lock_a_user_out_from_another_address():
    answers: dict[str, Any] = {"bob": AuthError("bad")}
    chain, _ = chain_with(Source("ldap", answers), max_failed_logins_per_user=3, max_failed_logins_per_user_total=5,
                          max_failed_logins_per_address=0)
    for _ in range(4):
        outcome(chain.authenticate("bob", SECRET, "203.0.113.9"))  # the attacker's address
    assert outcome(chain.authenticate("bob", SECRET, "203.0.113.9")).reason == "rate_limited"
    good = answers["bob"] = Identity("bob", frozenset(), "ldap")
    assert outcome(chain.authenticate("bob", SECRET, "10.0.0.7")) is good  # bob, from his own address
    answers["bob"] = AuthError("bad")
    for i in range(5):  # failures from many addresses reach the per-user cap
        outcome(chain.authenticate("bob", SECRET, f"198.51.100.{i}"))
    assert outcome(chain.authenticate("bob", SECRET, "10.0.0.7")).reason == "rate_limited"


def test_the_lock_does_not_tell_whether_the_account_exists():
    chain, _ = chain_with(Source("ldap", {"alice": AuthError("bad")}), max_failed_logins_per_user=2)
    for name in ("alice", "nosuchuser"):
        for _ in range(2):
            outcome(chain.authenticate(name, SECRET, "10.0.0.1"))
    a = outcome(chain.authenticate("alice", SECRET, "10.0.0.1"))
    b = outcome(chain.authenticate("nosuchuser", SECRET, "10.0.0.1"))
    assert (a.sqlstate, a.message) == (b.sqlstate, b.message) == ("53300", "hoopd: too many failed logins, retry in 300 s")


def test_per_address_limit_and_ipv6_prefixes():
    chain, clock = chain_with(Source("ldap", {}), max_failed_logins_per_user=0, max_failed_logins_per_address=4)
    for i in range(4):
        outcome(chain.authenticate(f"user{i}", SECRET, "2001:db8::1"))
    assert outcome(chain.authenticate("fresh", SECRET, "2001:db8::ffff")).reason == "rate_limited"  # same /64
    assert outcome(chain.authenticate("fresh", SECRET, "2001:db8:0:1::1")).reason == "unknown_user"
    assert outcome(chain.authenticate("fresh", SECRET, "10.0.0.1")).reason == "unknown_user"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"


def test_success_clears_the_user_budget_not_the_address_budget():
    good = Identity("alice", frozenset(), "ldap")
    answers: dict[str, Any] = {"alice": AuthError("bad")}
    chain, _ = chain_with(Source("ldap", answers), max_failed_logins_per_user=2, max_failed_logins_per_address=4)
    outcome(chain.authenticate("alice", SECRET, "10.0.0.1"))
    answers["alice"] = good
    assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")) is good
    answers["alice"] = AuthError("bad")
    outcome(chain.authenticate("alice", SECRET, "10.0.0.1"))
    assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")).reason == "bad_password"  # user: 1 + 1
    assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")).reason == "rate_limited"
    assert outcome(chain.authenticate("bob", SECRET, "10.0.0.1")).reason == "unknown_user"  # address: 3 + 1
    assert outcome(chain.authenticate("carol", SECRET, "10.0.0.1")).reason == "rate_limited"


def test_outages_do_not_count_towards_the_limits():
    down = AuthError("down", "28000", "idp_unavailable")
    chain, _ = chain_with(Source("oidc", {"alice": down}), max_failed_logins_per_user=2)
    for _ in range(5):
        assert outcome(chain.authenticate("alice", SECRET, "10.0.0.1")).reason == "idp_unavailable"


def test_limiter_memory_is_bounded(monkeypatch):
    monkeypatch.setattr("hoopd.identity.limiter.MAX_KEYS", 10)
    clock = Clock()
    lim = FailedLoginLimiter(5, 0, 60, clock)
    for i in range(50):
        lim.failed(f"user{i}", "10.0.0.1")
    assert len(lim._failures) <= 10
    assert lim.retry_after("user49", "10.0.0.1") is None  # 1 failure of 5


# --- timeouts, errors, logs ----------------------------------------------------------------

def test_a_slow_source_times_out_with_a_clear_error():
    pending: Deferred = Deferred()
    chain, clock = chain_with(Source("ldap", {"alice": pending}), login_timeout=15)
    d = chain.authenticate("alice", SECRET, "10.0.0.1")
    assert not d.called
    clock.advance(15)
    err = outcome(d)
    assert (err.reason, err.sqlstate) == ("timeout", "28000") and "within 15 s" in err.message
    assert pending.called  # cancelled


def test_a_caller_that_gives_up_is_not_counted():
    chain, _ = chain_with(Source("ldap", {"alice": Deferred()}))
    d = chain.authenticate("alice", SECRET, "10.0.0.1")
    d.cancel()
    d.addErrback(lambda f: f.trap(CancelledError))
    assert not chain.failures


def test_unexpected_errors_become_authentication_unavailable(logged):
    chain, _ = chain_with(Source("ldap", {"alice": RuntimeError("boom")}))
    err = outcome(chain.authenticate("alice", SECRET, "10.0.0.1"))
    assert (err.reason, err.sqlstate) == ("error", "28000") and "unavailable" in err.message
    assert any("boom" in e for e in logged)


def test_refusals_are_logged_with_reason_but_never_the_secret(logged):
    chain, _ = chain_with(Source("ldap", {"alice": AuthError("bad", detail="ldap://x: refused")}))
    outcome(chain.authenticate("alice", SECRET, "10.0.0.1"))
    line = next(e for e in logged if "login refused" in e)
    assert "'alice'" in line and "10.0.0.1" in line and "bad_password" in line and "ldap://x: refused" in line
    assert not [e for e in logged if SECRET in e]


# --- the real thing ------------------------------------------------------------------------

@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_chain_with_real_idp_and_slapd(slapd, idp, logged):
    cfg = IdentityConfig(
        order=("local", "oidc", "ldap"), max_failed_logins_per_user=3,
        oidc=OIDCConfig(idp.issuer, (AUDIENCE,), ca_file=str(idp.ca_file)),
        ldap=LDAPConfig(slapd.url, f"ou=people,{SUFFIX}", SERVICE_DN, Secret(SERVICE_PW), start_tls=True,
                        ca_file=str(slapd.ca_file), group_base=f"ou=groups,{SUFFIX}"))
    clock = Clock()
    chain = IdentityChain(cfg, reactor, clock)
    chain.startService()
    try:
        token = idp.mint("alice", groups=["sso-dev"])
        assert await chain.authenticate("alice", token, "10.0.0.1") == Identity("alice", frozenset({"sso-dev"}), "oidc")
        ident = await chain.authenticate("alice", PASSWORDS["alice"], "10.0.0.1")
        assert ident == Identity("alice", frozenset({"dba", "analysts"}), "ldap")
        for _ in range(3):  # brute force
            with pytest.raises(AuthError) as e:
                await chain.authenticate("bob", "guess", "10.0.0.2")
            assert e.value.reason == "bad_password"
        with pytest.raises(AuthError) as e:
            await chain.authenticate("bob", PASSWORDS["bob"], "10.0.0.2")  # even the right password
        assert e.value.reason == "rate_limited"
        clock.advance(cfg.failed_login_window)
        assert (await chain.authenticate("bob", PASSWORDS["bob"], "10.0.0.2")).name == "bob"
        assert dict(chain.logins) == {"oidc": 1, "ldap": 2}
        assert dict(chain.failures) == {"bad_password": 3, "rate_limited": 1}
    finally:
        await chain.stopService()
    secrets = [token, *PASSWORDS.values(), SERVICE_PW]
    assert not [e for e in logged for s in secrets if s in e]
