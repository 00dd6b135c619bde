"""``[identity].order`` over the password sources, with failed-login limits and counters.

Local accounts are checked by the gateway core with SCRAM before any password is seen, so
the chain covers the cleartext-password sources: OIDC (when the password looks like a JWT)
and LDAP. A source that does not know the user (reason ``unknown_user``) or does not handle
the password (returns None) passes to the next one. Every refusal is counted by reason in
``failures`` (for the metrics); credential failures feed the per-user and per-address
limiter. The secret never reaches a log line or an error.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.application import service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.python.failure import Failure

from hoopd.identity.base import AuthError, Identity, PasswordAuthenticator
from hoopd.identity.config import IdentityConfig
from hoopd.identity.ldap import LDAPAuthenticator, bad_password
from hoopd.identity.limiter import FailedLoginLimiter
from hoopd.identity.oidc import OIDCAuthenticator
from hoopd.log import get_logger

log = get_logger("hoopd.identity")

# refusals that say nothing about the credential: they do not count towards the limits
NOT_COUNTED = frozenset({"rate_limited", "timeout", "error", "idp_unavailable", "idp_bad_key",
                         "ldap_unavailable", "ldap_busy", "ldap_error"})


class IdentityChain(service.MultiService):
    """The gateway's PasswordAuthenticator. Start it with the service tree (it owns the
    LDAP thread pool). ``clock`` (default: reactor) times limits, key caches and timeouts."""

    source = "chain"
    name = "identity"

    def __init__(self, cfg: IdentityConfig, reactor: Any, clock: Any = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.clock = clock or reactor
        self.failures: Counter[str] = Counter()  # refusal reason -> count
        self.logins: Counter[str] = Counter()  # identity source -> successful logins
        self.outcome_hooks: list[Callable[[str, str, bool], None]] = []  # (user, peer, ok) of counted logins
        self.limiter = FailedLoginLimiter(cfg.max_failed_logins_per_user, cfg.max_failed_logins_per_address,
                                          cfg.failed_login_window, self.clock, cfg.max_failed_logins_per_user_total)
        self.oidc: OIDCAuthenticator | None = None
        self.ldap: LDAPAuthenticator | None = None
        self.sources: list[PasswordAuthenticator] = []
        self.reconfigure(cfg)

    def reconfigure(self, cfg: IdentityConfig) -> None:
        """Apply a reloaded config; unchanged sources keep their caches and pool."""
        self.cfg = cfg
        self.limiter.reconfigure(cfg.max_failed_logins_per_user, cfg.max_failed_logins_per_address,
                                 cfg.failed_login_window, cfg.max_failed_logins_per_user_total)
        if cfg.oidc is None:
            self.oidc = None
        elif self.oidc is None or self.oidc.cfg != cfg.oidc:
            self.oidc = OIDCAuthenticator(cfg.oidc, self.reactor, self.clock)
        if cfg.ldap is None:
            if self.ldap is not None:
                self.ldap.disownServiceParent()
            self.ldap = None
        elif self.ldap is None:
            self.ldap = LDAPAuthenticator(cfg.ldap, self.reactor)
            self.ldap.setServiceParent(self)
        else:
            self.ldap.reconfigure(cfg.ldap)
        by_name: dict[str, Any] = {"oidc": self.oidc, "ldap": self.ldap}
        self.sources = [by_name[s] for s in cfg.order if s != "local"]

    @property
    def local_accounts(self) -> bool:
        """Whether ``[[users]]`` may sign in (with SCRAM) at all."""
        return "local" in self.cfg.order

    # --- the limiter and counters, also for the gateway's own SCRAM logins ---------------------

    def check_rate(self, username: str, peer: str) -> AuthError | None:
        """An AuthError to refuse with when user or address is over its failure limit, else None."""
        wait = self.limiter.retry_after(username, peer)
        if wait is None:
            return None
        err = AuthError(f"hoopd: too many failed logins, retry in {wait} s", "53300", "rate_limited")
        self.failed(username, peer, err)
        return err

    def failed(self, username: str, peer: str, err: AuthError) -> None:
        """Count (and log) one refused login."""
        self.failures[err.reason] += 1
        if err.reason not in NOT_COUNTED:
            self.limiter.failed(username, peer)
            self._outcome(username, peer, False)
        emit = log.warn if err.reason in NOT_COUNTED - {"rate_limited"} else log.info
        emit("login refused for {user!r} from {peer}: {reason}{detail}", user=username, peer=peer,
             reason=err.reason, detail=f" ({err.detail})" if err.detail else "")

    def succeeded(self, identity: Identity, peer: str) -> None:
        self.logins[identity.source] += 1
        self.limiter.succeeded(identity.name, peer)
        self._outcome(identity.name, peer, True)
        log.debug("login of {user!r} ({source}) from {peer}", user=identity.name, source=identity.source, peer=peer)

    # --- PasswordAuthenticator -------------------------------------------------------------

    def _outcome(self, username: str, peer: str, ok: bool) -> None:
        for hook in self.outcome_hooks:
            hook(username, peer, ok)

    def authenticate(self, username: str, password: str, peer: str) -> Deferred[Identity]:
        """Fires with the Identity of the first source that accepts the password; fails with
        AuthError (also for a limit, a timeout or an unexpected error)."""
        err = self.check_rate(username, peer)
        if err is not None:
            return fail(err)
        timeout = self.cfg.login_timeout
        d = Deferred.fromCoroutine(self._try_sources(username, password, peer))
        d.addTimeout(timeout, self.clock)

        def ok(identity: Identity) -> Identity:
            self.succeeded(identity, peer)
            return identity

        def refused(f: Failure) -> Failure:
            if f.check(CancelledError):  # the caller gave up (client gone): nothing to count
                return f
            if f.check(AuthError):
                e = f.value
            elif f.check(TimeoutError):
                e = AuthError(f"hoopd: sign-in did not finish within {timeout:g} s (identity provider or directory "
                              "too slow); try again later", "28000", "timeout")
            else:
                log.failure("identity check for {user!r} failed unexpectedly", failure=f, user=username)
                e = AuthError("hoopd: authentication unavailable (details in the gateway log)", "28000", "error")
            self.failed(username, peer, e)
            return Failure(e)

        return d.addCallbacks(ok, refused)

    def verify(self, token: str, audience: tuple[str, ...] | None = None) -> Deferred[Identity]:
        """An OIDC token on its own (the control API's bearer tokens, checked against ``audience``
        when given instead of the login audience); AuthError when OIDC is off."""
        if self.oidc is None:
            return fail(AuthError("hoopd: OIDC is not configured", "28000", "oidc_off"))
        return self.oidc.verify(token, audience)

    async def _try_sources(self, username: str, password: str, peer: str) -> Identity:
        last = bad_password(username, "no_source")
        for src in self.sources:
            d = src.authenticate(username, password, peer)
            if d is None:
                continue
            try:
                return await d
            except AuthError as e:
                if e.reason != "unknown_user":
                    raise
                last = e
        raise last
