"""OIDC: an ID/access token (a JWT) sent as the PostgreSQL password, verified against the IdP's JWKS.

Discovery and JWKS are fetched with treq (never blocking the reactor). Keys are cached for
the Cache-Control max-age; concurrent logins share one in-flight fetch; a token signed with
an unknown ``kid`` triggers at most one refetch per minute (key rotation without restart).
The token's algorithm is checked against the configured list before any key is looked up,
and each key is used only with an algorithm its type fits, so ``none``, HS* and
algorithm-confusion tokens fail. If the IdP cannot be reached and no cached key fits, the
login fails (closed) with a message that says so.
"""
from __future__ import annotations

import math
import re
from typing import Any, Awaitable, Callable

import jwt
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hoopd.identity.base import AuthError, Identity
from hoopd.names import name_key
from hoopd.identity.config import OIDCConfig
from hoopd.identity.http import FetchError, get_json, make_client
from hoopd.log import get_logger

log = get_logger("hoopd.identity.oidc")

DEFAULT_TTL = 300.0  # when the JWKS response has no Cache-Control max-age
MIN_TTL, MAX_TTL = 60.0, 86_400.0
MIN_REFETCH = 60.0  # an unknown kid refetches at most this often
USERNAME_CLAIMS = ("preferred_username", "email", "sub")
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
# which JWK a JWS algorithm may be verified with: (kty, crv or None for any)
_KEY_TYPE = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


def looks_like_jwt(password: str) -> bool:
    """Three base64url parts, the first a JSON object: compact JWS (the signature may be empty,
    so an unsigned token is refused here with a clear message rather than tried as a password)."""
    return _JWT.match(password) is not None


def _fits(jwk: dict, alg: str) -> bool:
    kty, crv = _KEY_TYPE[alg]
    return (jwk.get("kty") == kty and (crv is None or jwk.get("crv") == crv)
            and jwk.get("use", "sig") == "sig" and jwk.get("alg", alg) == alg)


def _claim_path(claims: dict, path: str) -> Any:
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class _Refused(AuthError):
    """A token refused for a reason the user can act on."""

    def __init__(self, why: str, reason: str, sqlstate: str = "28P01") -> None:
        super().__init__(f"hoopd: OIDC token refused: {why}", sqlstate, reason)


class KeyCache:
    """The IdP's signing keys (JWK dicts) with a TTL and one shared in-flight fetch.

    ``fetch()`` fires with (keys, ttl seconds) or fails with FetchError. ``clock`` has
    ``seconds()``."""

    def __init__(self, fetch: Callable[[], Deferred[tuple[list[dict], float]]], clock: Any) -> None:
        self._fetch = fetch
        self.clock = clock
        self.keys: list[dict] = []
        self.expires = -math.inf
        self.last_fetch = -math.inf  # when the last fetch started
        self._waiters: list[Deferred[None]] | None = None

    async def key_for(self, kid: str | None, alg: str) -> dict:
        """The JWK to verify an ``alg`` token with key id ``kid``; raises AuthError."""
        now = self.clock.seconds()
        if now < self.expires:
            found = self._find(kid, alg)
            if found is not None:
                return found
            if now - self.last_fetch < MIN_REFETCH:
                raise _Refused(f"it is signed with an unknown key (kid {kid!r})", "unknown_key")
        try:
            await self._refresh()
        except FetchError as e:
            if self.clock.seconds() < self.expires and self._find(kid, alg) is None:
                why = f"unknown key (kid {kid!r}), and the identity provider's keys cannot be refreshed: {e}"
            else:
                why = f"the identity provider cannot be reached and no cached key fits: {e}"
            raise AuthError(f"hoopd: cannot verify the OIDC token: {why}", "28000", "idp_unavailable") from None
        found = self._find(kid, alg)
        if found is None:
            raise _Refused(f"it is signed with an unknown key (kid {kid!r})", "unknown_key")
        return found

    def _find(self, kid: str | None, alg: str) -> dict | None:
        fit = [k for k in self.keys if _fits(k, alg) and (kid is None or k.get("kid") == kid)]
        if kid is None and len(fit) > 1:
            raise _Refused("it has no key id (kid) and the identity provider publishes several keys", "unknown_key")
        return fit[0] if fit else None

    def _refresh(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._waiters is not None:  # a fetch is in flight: wait for it
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        self.last_fetch = self.clock.seconds()
        self._fetch().addBoth(self._fetched)  # may fire at once
        return waiter

    def _fetched(self, result: tuple[list[dict], float] | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        if not isinstance(result, Failure):
            self.keys, ttl = result
            self.expires = self.clock.seconds() + ttl
        for w in waiters:
            if w.called:  # cancelled by the login timeout
                continue
            if isinstance(result, Failure):
                w.errback(result)
            else:
                w.callback(None)


class OIDCAuthenticator:
    """Verifies a JWT password against the configured issuer; ``clock`` (default: reactor)
    times the key cache, the reactor does the HTTP."""

    source = "oidc"

    def __init__(self, cfg: OIDCConfig, reactor: Any, clock: Any = None) -> None:
        self.cfg = cfg
        self.reactor = reactor
        self.client = make_client(reactor, cfg.ca_file)
        self.cache = KeyCache(lambda: Deferred.fromCoroutine(self._fetch_keys()), clock or reactor)
        self._jwks_uri: str | None = cfg.jwks_uri

    def authenticate(self, username: str, password: str, peer: str) -> Deferred[Identity] | None:
        if not looks_like_jwt(password):
            return None
        return Deferred.fromCoroutine(self._verify(username, password))

    def verify(self, token: str, audience: tuple[str, ...] | None = None) -> Deferred[Identity]:
        """Check a token with no user name to match (the control API's bearer tokens); ``audience``,
        when given, replaces the configured one (``[control].oidc_audience``)."""
        return Deferred.fromCoroutine(self._verify(None, token, audience))

    # --- keys ----------------------------------------------------------------------------

    def _get(self, url: str) -> Awaitable[tuple[dict, float | None]]:
        return get_json(self.client, url, self.cfg.timeout, self.reactor)

    async def discovery(self) -> dict:
        """The provider's discovery document (its issuer checked)."""
        url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc, _ = await self._get(url)
        if doc.get("issuer") != self.cfg.issuer:
            raise FetchError(f"{url} names issuer {doc.get('issuer')!r}, expected {self.cfg.issuer!r}")
        return doc

    def post_form(self, url: str, form: dict[str, str]) -> Deferred[tuple[dict, float | None]]:
        """POST a form to the provider (the token endpoint); its JSON answer."""
        return get_json(self.client, url, self.cfg.timeout, self.reactor, form)

    async def _discover(self) -> str:
        url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self.discovery()
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise FetchError(f"{url} has no usable jwks_uri")
        return uri

    async def _fetch_keys(self) -> tuple[list[dict], float]:
        uri = self._jwks_uri or await self._discover()
        try:
            doc, age = await self._get(uri)
            keys = doc.get("keys")
            if not isinstance(keys, list):
                raise FetchError(f"{uri} is not a JWK set (no \"keys\" list)")
        except FetchError:
            self._jwks_uri = self.cfg.jwks_uri  # discover again next time
            raise
        self._jwks_uri = uri
        keys = [k for k in keys if isinstance(k, dict)]
        ttl = DEFAULT_TTL if age is None else min(max(age, MIN_TTL), MAX_TTL)
        log.info("OIDC keys fetched from {uri}: {n} keys, cached for {ttl:.0f} s", uri=uri, n=len(keys), ttl=ttl)
        return keys, ttl

    # --- tokens --------------------------------------------------------------------------

    async def _verify(self, username: str | None, token: str, audience: tuple[str, ...] | None = None) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _Refused("its header cannot be decoded", "token_invalid") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.cfg.algorithms:  # pinned before any key is looked up
            raise _Refused(f"algorithm {alg!r} is not accepted (accepted: {', '.join(self.cfg.algorithms)})",
                           "token_algorithm")
        if kid is not None and not isinstance(kid, str):
            raise _Refused("its key id (kid) is not a string", "token_invalid")
        jwk = await self.cache.key_for(kid, alg)
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
        except jwt.PyJWTError:
            raise AuthError(f"hoopd: cannot verify the OIDC token: the identity provider's key {kid!r} is unusable",
                            "28000", "idp_bad_key") from None
        claims = self._decode(token, key, alg, audience or self.cfg.audience)
        name = self._username(claims)
        if username is not None and name_key(name) != name_key(username):
            raise _Refused(f'it is for user "{name}", not "{username}"; connect with user={name}', "user_mismatch",
                           "28000")
        return Identity(name, self._groups(claims), self.source,
                        typed=username if username is not None and username != name else None)

    def _decode(self, token: str, key: jwt.PyJWK, alg: str, audience: tuple[str, ...]) -> dict:
        cfg = self.cfg
        try:
            return jwt.decode(token, key, algorithms=[alg], audience=list(audience), issuer=cfg.issuer,
                              leeway=cfg.leeway, options={"require": REQUIRED_CLAIMS})
        except jwt.ExpiredSignatureError:
            raise _Refused("it has expired", "token_expired") from None
        except jwt.ImmatureSignatureError:
            raise _Refused("it is not valid yet (nbf/iat in the future)", "token_not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise _Refused(f"its audience is not {' or '.join(audience)}", "token_audience") from None
        except jwt.InvalidIssuerError:
            raise _Refused(f"it was not issued by {cfg.issuer}", "token_issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise _Refused(f"it lacks the {e.claim!r} claim", "token_invalid") from None
        except jwt.InvalidSignatureError:
            raise _Refused("its signature is invalid", "token_signature") from None
        except jwt.PyJWTError as e:
            raise _Refused(f"it is invalid ({type(e).__name__}: {str(e)[:120]})", "token_invalid") from None

    def _username(self, claims: dict) -> str:
        names = (self.cfg.username_claim,) if self.cfg.username_claim else USERNAME_CLAIMS
        for c in names:
            v = claims.get(c)
            if isinstance(v, str) and v:
                return v
        raise _Refused(f"it has no {' or '.join(names)} claim to name the user", "token_invalid")

    def _groups(self, claims: dict) -> frozenset[str]:
        v = _claim_path(claims, self.cfg.groups_claim)
        if isinstance(v, str):
            return frozenset((v,))
        if isinstance(v, list):
            return frozenset(g for g in v if isinstance(g, str))
        if v is None:
            log.debug("OIDC token without a {claim} claim: no groups", claim=self.cfg.groups_claim)
        return frozenset()
