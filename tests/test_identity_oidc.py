"""OIDC tokens against a real IdP (twisted.web over TLS in the test reactor): discovery, JWKS
caching and rotation, claim checks, algorithm confusion, outages."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import replace

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.task import Clock

from hoopd.identity.base import AuthError, Identity
from hoopd.identity.config import OIDCConfig
from hoopd.identity.http import FetchError, max_age
from hoopd.identity.oidc import DEFAULT_TTL, KeyCache, OIDCAuthenticator, looks_like_jwt
from tests.certs import make_ca, pem_cert
from tests.oidc_server import AUDIENCE, IdP, rsa_key


def authenticator(idp: IdP, clock: Clock | None = None, **over) -> OIDCAuthenticator:
    cfg = OIDCConfig(issuer=idp.issuer, audience=(AUDIENCE,), ca_file=str(idp.ca_file), timeout=5.0)
    return OIDCAuthenticator(replace(cfg, **over), reactor, clock or Clock())


async def login(auth: OIDCAuthenticator, user: str, token: str) -> Identity:
    d = auth.authenticate(user, token, "127.0.0.1")
    assert d is not None, "a JWT was not recognised as one"
    return await d


async def refused(auth: OIDCAuthenticator, user: str, token: str) -> AuthError:
    with pytest.raises(AuthError) as e:
        await login(auth, user, token)
    assert token not in e.value.message
    return e.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, sign=lambda signing_input: b"") -> str:
    """A token put together by hand (PyJWT refuses to make the malicious ones)."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(sign(head.encode()))


def claims_for(idp: IdP, sub: str = "alice") -> dict:
    now = int(time.time())
    return {"iss": idp.issuer, "aud": AUDIENCE, "sub": sub, "preferred_username": sub, "iat": now, "exp": now + 600}


# --- the good path -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_rsa_and_ec_tokens_give_an_identity(idp):
    auth = authenticator(idp)
    ident = await login(auth, "alice", idp.mint("alice", groups=["dev", "dba"]))
    assert ident == Identity("alice", frozenset({"dev", "dba"}), "oidc")
    assert (await login(auth, "bob", idp.mint("bob", kid="ec-1"))).groups == {"dev"}
    assert idp.requests == ["/.well-known/openid-configuration", "/jwks"]  # cached after the first login


@pytest_twisted.ensureDeferred
async def test_groups_from_a_dotted_claim_path_and_a_missing_claim(idp):
    auth = authenticator(idp, groups_claim="realm_access.roles")
    token = idp.mint("alice", realm_access={"roles": ["analyst", 7]})
    assert (await login(auth, "alice", token)).groups == {"analyst"}
    assert (await login(auth, "alice", idp.mint("alice"))).groups == frozenset()


@pytest_twisted.ensureDeferred
async def test_username_claim_order_and_override(idp):
    auth = authenticator(idp)
    token = idp.mint("svc-123", drop=("preferred_username",), email="agent@example.org")
    assert (await login(auth, "agent@example.org", token)).name == "agent@example.org"
    token = idp.mint("svc-123", drop=("preferred_username",))
    assert (await login(auth, "svc-123", token)).name == "svc-123"
    auth = authenticator(idp, username_claim="upn")
    assert (await login(auth, "a@corp", idp.mint("alice", upn="a@corp"))).name == "a@corp"
    err = await refused(auth, "alice", idp.mint("alice"))
    assert "no upn claim" in err.message


@pytest_twisted.ensureDeferred
async def test_username_mismatch_is_refused_and_says_so(idp):
    err = await refused(authenticator(idp), "alice", idp.mint("mallory"))
    assert err.reason == "user_mismatch"
    assert '"mallory", not "alice"' in err.message and "user=mallory" in err.message


@pytest_twisted.ensureDeferred
async def test_audience_list_and_a_60kb_token(idp):
    auth = authenticator(idp, audience=("other", AUDIENCE))
    groups = [f"group-{i:05d}-{'x' * 40}" for i in range(800)]
    token = idp.mint("alice", groups=groups)
    assert 55_000 < len(token) < 65_536
    assert len((await login(auth, "alice", token)).groups) == 800


def test_passwords_that_are_not_jwts_are_left_to_other_sources():
    assert not looks_like_jwt("correct horse battery staple")
    assert not looks_like_jwt("a.b.c")
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")  # unsigned: still ours, to refuse
    auth = OIDCAuthenticator(OIDCConfig("https://idp.invalid", ("x",)), reactor, Clock())
    assert auth.authenticate("alice", "hunter2", "127.0.0.1") is None


# --- claims --------------------------------------------------------------------------------

@pytest.mark.parametrize("claims,reason,text", [
    ({"exp": int(time.time()) - 3600}, "token_expired", "expired"),
    ({"nbf": int(time.time()) + 3600}, "token_not_yet_valid", "not valid yet"),
    ({"iat": int(time.time()) + 3600}, "token_not_yet_valid", "not valid yet"),
    ({"aud": "someone-else"}, "token_audience", "audience"),
    ({"iss": "https://evil.example"}, "token_issuer", "not issued by"),
])
@pytest_twisted.ensureDeferred
async def test_bad_claims_are_refused(idp, claims, reason, text):
    err = await refused(authenticator(idp), "alice", idp.mint("alice", **claims))
    assert (err.reason, err.sqlstate) == (reason, "28P01")
    assert text in err.message


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub"])
@pytest_twisted.ensureDeferred
async def test_required_claims(idp, claim):
    err = await refused(authenticator(idp), "alice", idp.mint("alice", drop=(claim,)))
    assert f"lacks the '{claim}' claim" in err.message


@pytest_twisted.ensureDeferred
async def test_leeway_accepts_slightly_expired_tokens(idp):
    token = idp.mint("alice", exp=int(time.time()) - 30)
    assert (await login(authenticator(idp, leeway=3600), "alice", token)).name == "alice"
    assert (await refused(authenticator(idp, leeway=0), "alice", token)).reason == "token_expired"


@pytest_twisted.ensureDeferred
async def test_tampered_signature_is_refused(idp):
    head, body, sig = idp.mint("alice").split(".")
    evil = json.loads(base64.urlsafe_b64decode(body + "=="))
    evil["groups"] = ["admin"]
    token = ".".join([head, b64(json.dumps(evil).encode()), sig])
    assert (await refused(authenticator(idp), "alice", token)).reason == "token_signature"


# --- algorithms ----------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_alg_none_is_refused_before_any_key_lookup(idp):
    token = forge({"alg": "none", "kid": "rsa-1"}, claims_for(idp))
    err = await refused(authenticator(idp), "alice", token)
    assert err.reason == "token_algorithm" and "'none' is not accepted" in err.message
    assert idp.requests == []


@pytest_twisted.ensureDeferred
async def test_hs256_signed_with_the_rsa_public_key_is_refused(idp):
    pub = idp.key("rsa-1").private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    idp.extra_jwks.append({"kty": "oct", "kid": "rsa-1", "k": b64(pub)})  # even if the IdP published it
    token = forge({"alg": "HS256", "kid": "rsa-1"}, claims_for(idp),
                  lambda si: hmac.new(pub, si, hashlib.sha256).digest())
    err = await refused(authenticator(idp), "alice", token)
    assert err.reason == "token_algorithm"
    assert idp.requests == []


@pytest_twisted.ensureDeferred
async def test_a_key_is_only_used_with_an_algorithm_its_type_fits(idp):
    # an ES256 token naming the RSA key's kid: no fitting key, whatever the signature
    token = idp.mint("alice", kid="rsa-1", key=idp.key("ec-1").private, alg="ES256")
    assert (await refused(authenticator(idp), "alice", token)).reason == "unknown_key"
    # a PS256 token (allowed here) for a key the IdP pinned to RS256
    token = idp.mint("alice", kid="rsa-1", alg="PS256", key=idp.key("rsa-1").private)
    auth = authenticator(idp, algorithms=("RS256", "PS256"))
    assert (await refused(auth, "alice", token)).reason == "unknown_key"


@pytest_twisted.ensureDeferred
async def test_an_algorithm_not_configured_is_refused(idp):
    err = await refused(authenticator(idp, algorithms=("RS256",)), "alice", idp.mint("alice", kid="ec-1"))
    assert err.reason == "token_algorithm" and "accepted: RS256" in err.message


# --- keys: cache, rotation, outages ---------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_unknown_kid_refetches_at_most_once_a_minute_and_rotation_works(idp):
    clock = Clock()
    auth = authenticator(idp, clock)
    await login(auth, "alice", idp.mint("alice"))
    assert idp.requests.count("/jwks") == 1
    clock.advance(61)
    assert (await refused(auth, "alice", idp.mint("alice", kid="rsa-new", key=rsa_key("x").private,
                                                  alg="RS256"))).reason == "unknown_key"
    assert idp.requests.count("/jwks") == 2  # one refetch for the unknown kid
    idp.keys.append(rsa_key("rsa-2"))  # the IdP rotates
    err = await refused(auth, "alice", idp.mint("alice", kid="rsa-2"))
    assert err.reason == "unknown_key" and "'rsa-2'" in err.message
    assert idp.requests.count("/jwks") == 2  # no second refetch within the minute
    clock.advance(60)
    assert (await login(auth, "alice", idp.mint("alice", kid="rsa-2"))).name == "alice"
    assert idp.requests.count("/jwks") == 3
    assert idp.requests.count("/.well-known/openid-configuration") == 1


@pytest.mark.parametrize("cache_control,ttl", [("public, max-age=900", 900), (None, DEFAULT_TTL)])
@pytest_twisted.ensureDeferred
async def test_keys_live_for_max_age_or_the_default_ttl(idp, cache_control, ttl):
    clock = Clock()
    idp.cache_control = cache_control
    auth = authenticator(idp, clock)
    await login(auth, "alice", idp.mint("alice"))
    clock.advance(ttl - 1)
    await login(auth, "alice", idp.mint("alice"))
    assert idp.requests.count("/jwks") == 1
    clock.advance(2)
    await login(auth, "alice", idp.mint("alice"))
    assert idp.requests.count("/jwks") == 2


@pytest_twisted.ensureDeferred
async def test_concurrent_logins_share_one_fetch(idp):
    auth = authenticator(idp)
    ds = [auth.authenticate(f"u{i}", idp.mint(f"u{i}", kid=("rsa-1", "ec-1")[i % 2]), "127.0.0.1") for i in range(6)]
    idents = await gatherResults(ds)
    assert [i.name for i in idents] == [f"u{i}" for i in range(6)]
    assert idp.requests == ["/.well-known/openid-configuration", "/jwks"]


@pytest_twisted.ensureDeferred
async def test_idp_down_without_cache_fails_closed(idp):
    auth = authenticator(idp)
    token = idp.mint("alice")
    await idp.stop()
    err = await refused(auth, "alice", token)
    assert (err.reason, err.sqlstate) == ("idp_unavailable", "28000")
    assert "cannot be reached and no cached key fits" in err.message and idp.issuer in err.message


@pytest_twisted.ensureDeferred
async def test_cached_keys_work_while_the_idp_is_down_until_they_expire(idp):
    clock = Clock()
    auth = authenticator(idp, clock)
    await login(auth, "alice", idp.mint("alice"))
    token = idp.mint("alice")
    await idp.stop()
    clock.advance(599)
    assert (await login(auth, "alice", token)).name == "alice"
    clock.advance(2)
    assert (await refused(auth, "alice", token)).reason == "idp_unavailable"
    # a new kid while the cache is fresh but the IdP is down: also a clear refusal
    idp.listen(reactor, int(idp.issuer.rsplit(":", 1)[1]))
    clock.advance(1000)
    await login(auth, "alice", token)
    await idp.stop()
    clock.advance(61)
    idp.keys.append(rsa_key("rsa-2"))
    err = await refused(auth, "alice", idp.mint("alice", kid="rsa-2"))
    assert err.reason == "idp_unavailable" and "unknown key" in err.message


@pytest_twisted.ensureDeferred
async def test_hanging_idp_times_out_with_a_clear_error(idp):
    idp.hang = True
    err = await refused(authenticator(idp, timeout=0.3), "alice", idp.mint("alice"))
    assert err.reason == "idp_unavailable" and "no answer from" in err.message


@pytest_twisted.ensureDeferred
async def test_idp_certificate_from_another_ca_is_refused(idp, tmp_path):
    other = tmp_path / "other-ca.crt"
    other.write_bytes(pem_cert(make_ca("someone else")[0]))
    err = await refused(authenticator(idp, ca_file=str(other)), "alice", idp.mint("alice"))
    assert err.reason == "idp_unavailable"
    assert idp.requests == []


@pytest_twisted.ensureDeferred
async def test_discovery_must_name_the_configured_issuer(idp):
    idp.discovery_issuer = "https://evil.example"
    err = await refused(authenticator(idp), "alice", idp.mint("alice"))
    assert err.reason == "idp_unavailable" and "names issuer 'https://evil.example'" in err.message


@pytest_twisted.ensureDeferred
async def test_jwks_uri_override_skips_discovery(idp):
    auth = authenticator(idp, jwks_uri=idp.issuer + "/jwks")
    await login(auth, "alice", idp.mint("alice"))
    assert idp.requests == ["/jwks"]


def test_max_age_parsing():
    assert max_age(None) is None
    assert max_age("public") is None
    assert max_age("public, max-age=300, must-revalidate") == 300
    assert max_age('max-age="60"') == 60
    assert max_age("no-store") == 0
    assert max_age("no-cache, max-age=300") == 0



def test_key_cache_shares_one_fetch_and_survives_a_fetch_that_fires_at_once():
    clock = Clock()
    key = {"kty": "EC", "crv": "P-256", "kid": "k1", "x": "", "y": ""}
    pending: Deferred = Deferred()
    fetches = [pending, succeed(([key], 300.0)), fail(FetchError("down"))]
    cache = KeyCache(lambda: fetches.pop(0), clock)
    a = Deferred.fromCoroutine(cache.key_for("k1", "ES256"))
    b = Deferred.fromCoroutine(cache.key_for("k1", "ES256"))
    b.cancel()  # one waiter gives up; the shared fetch goes on
    b.addErrback(lambda f: f.trap(CancelledError))
    assert len(fetches) == 2 and not a.called
    pending.callback(([], 300.0))
    assert isinstance(a.result.value, AuthError) and a.result.value.reason == "unknown_key"
    a.addErrback(lambda f: None)
    clock.advance(60)
    d = Deferred.fromCoroutine(cache.key_for("k1", "ES256"))  # the fetch fires at once
    assert d.called and d.result is key
    clock.advance(300)
    c = Deferred.fromCoroutine(cache.key_for("k1", "ES256"))
    assert c.called and c.result.value.reason == "idp_unavailable"
    c.addErrback(lambda f: None)
