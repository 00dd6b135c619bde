"""JSON documents over HTTPS with treq, for OIDC discovery and JWKS (never blocking the reactor)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from hoopd.identity.config import PEM_CERT

MAX_BODY = 1 << 20  # discovery documents and key sets are a few KiB
_MAX_AGE = re.compile(r"(?:^|,)\s*(no-store|no-cache|max-age\s*=\s*\"?(\d+)\"?)", re.I)


class FetchError(Exception):
    """A document could not be fetched; the message names the URL and why (no secrets)."""


@implementer(IPolicyForHTTPS)
class CAFilePolicy:
    """Trust only the CA certificates in a PEM file (a private IdP); hostnames are verified."""

    def __init__(self, ca_file: str) -> None:
        blocks = PEM_CERT.findall(Path(ca_file).read_bytes())
        if not blocks:
            raise ValueError(f"no PEM certificate in {ca_file}")
        self._trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self._trust)


def make_client(reactor: Any, ca_file: str | None) -> HTTPClient:
    """A treq client without persistent connections (fetches are rare)."""
    policy = CAFilePolicy(ca_file) if ca_file else BrowserLikePolicyForHTTPS()
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False)))


def max_age(cache_control: str | None) -> float | None:
    """Seconds a response may be cached per its Cache-Control header (0 for no-store/no-cache)."""
    if not cache_control:
        return None
    for m in _MAX_AGE.finditer(cache_control):
        return float(m.group(2)) if m.group(2) is not None else 0.0
    return None


def _why(e: BaseException) -> str:
    reasons = getattr(e, "reasons", None)  # ResponseFailed & co. wrap the real failures
    if reasons:
        return reasons[0].getErrorMessage()
    return str(e) or type(e).__name__


async def _get(client: HTTPClient, url: str, form: dict[str, str] | None = None) -> tuple[dict, float | None]:
    try:
        if form is None:
            resp = await client.get(url, headers={"Accept": "application/json"})
        else:
            resp = await client.post(url, data=form, headers={"Accept": "application/json"})
    except CancelledError:
        raise
    except Exception as e:
        raise FetchError(f"cannot fetch {url}: {_why(e)}") from None
    body = bytearray()

    def collect(data: bytes) -> None:
        body.extend(data)
        if len(body) > MAX_BODY:
            raise FetchError(f"{url} sent more than {MAX_BODY} bytes")

    try:
        await treq.collect(resp, collect)
    except (FetchError, CancelledError):
        raise
    except Exception as e:
        raise FetchError(f"cannot read {url}: {_why(e)}") from None
    if resp.code != 200:
        raise FetchError(f"{url} answered HTTP {resp.code}")
    try:
        doc = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        raise FetchError(f"{url} did not send JSON") from None
    if not isinstance(doc, dict):
        raise FetchError(f"{url} did not send a JSON object")
    cc = resp.headers.getRawHeaders(b"cache-control")
    return doc, max_age(b", ".join(cc).decode("latin-1") if cc else None)


def get_json(client: HTTPClient, url: str, timeout: float, reactor: Any,
             form: dict[str, str] | None = None) -> Deferred[tuple[dict, float | None]]:
    """GET a JSON object (POST ``form`` when given); fires with (document, Cache-Control max-age
    or None) or fails with FetchError (also when the exchange takes longer than ``timeout``)."""
    d = Deferred.fromCoroutine(_get(client, url, form))
    # whatever the cancelled request failed with, a timeout is reported as one
    return d.addTimeout(timeout, reactor, onTimeoutCancel=lambda result, t: Failure(
        FetchError(f"no answer from {url} within {t:g} s")))
