"""Webhooks (``[[alerts.webhooks]]``): JSON events about reviews, grants and tripwires,
sent off the data path.

Each event is one POST per webhook whose ``events`` (globs, default all) match it:

* ``format = "json"``: ``{"event": ..., "time": ..., "node": ..., "data": {...}}``,
  signed: ``X-Hoopd-Timestamp: <unix seconds>`` and ``X-Hoopd-Signature:
  sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under the secret_file's key>``; a
  receiver checks the signature and refuses timestamps older than a few minutes
  (replays);
* ``format = "slack"``: ``{"text": "..."}`` for a Slack-compatible incoming webhook (the
  URL is the secret there; no signature).

A delivery that fails (connection error, timeout, any status but 2xx) is retried with
exponential back-off (1 s, 2 s, 4 s ... at most ``max_attempts``); each webhook has a
bounded queue (QUEUE_LIMIT) that drops the oldest event when full, logged. Nothing here
blocks or fails what caused the event: a review or grant is decided whether or not its
webhook was heard.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from collections import deque
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from hoopd.confkit import ConfigError, Table, key_file
from hoopd.log import get_logger

log = get_logger("hoopd.alerts")
QUEUE_LIMIT = 1000
EVENTS = ("denials.burst", "logins.burst", "review.requested", "review.approval", "review.approved", "review.denied", "review.expired",
          "review.withdrawn", "review.break_glass", "grant.requested", "grant.approved", "grant.denied", "grant.expired",
          "grant.revoked", "tripwire")


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    secret: bytes | None = field(default=None, repr=False)  # HMAC key (format json)
    format: str = "json"  # json | slack
    events: tuple[str, ...] = ("*",)
    timeout: float = 10.0
    max_attempts: int = 6


@dataclass(frozen=True)
class BurstSettings:
    """``[alerts]``: how many refusals (per user and connection) or failed logins (per
    client address) within ``window`` seconds make a ``denials.burst`` / ``logins.burst``."""

    denials: int = 10
    logins: int = 5
    window: float = 60.0


def parse_alerts(root: Table, base: Path) -> tuple[tuple[Webhook, ...], BurstSettings]:
    """``[alerts]`` and ``[[alerts.webhooks]]`` from the root table (secret files relative to ``base``)."""
    at = root.table("alerts")
    bursts = BurstSettings(at.int("denial_burst", 10, lo=2), at.int("login_failure_burst", 5, lo=2),
                           at.duration("burst_window", 60.0))
    hooks: list[Webhook] = []
    for wt in at.tables("webhooks"):
        name = wt.str("name", required=True)
        if any(h.name == name for h in hooks):
            raise ConfigError(wt.key("name"), f'duplicate webhook name "{name}"')
        url = wt.str("url", required=True)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(wt.key("url"), f"expected an http:// or https:// URL, got {url!r}")
        fmt = wt.str("format", "json", choices=("json", "slack"))
        found = key_file(wt, "secret_file", base)
        if fmt == "json" and found is None:
            raise ConfigError(wt.key("secret_file"), "is required for format json (events are signed)")
        events = tuple(wt.str_list("events", ("*",)))
        for e in events:
            if not any(fnmatchcase(known, e) for known in EVENTS):
                raise ConfigError(wt.key("events"), f'"{e}" matches no event (events: {", ".join(EVENTS)})')
        hooks.append(Webhook(name, url, found[1] if found else None, fmt, events,
                             wt.duration("timeout", 10.0), wt.int("max_attempts", 6, lo=1, hi=20)))
        wt.done()
    at.done()
    return tuple(hooks), bursts


def signature(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


class Bursts:
    """``hit(key)`` is True once each time ``limit`` hits of ``key`` fall within ``window`` seconds."""

    def __init__(self, clock: Any, limit: int, window: float) -> None:
        self.clock, self.limit, self.window = clock, limit, window
        self._times: dict[Any, deque[float]] = {}

    def hit(self, key: Any) -> bool:
        now = self.clock.seconds()
        times = self._times.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        times.append(now)
        if len(times) < self.limit:
            return False
        del self._times[key]  # (the next burst counts afresh)
        if len(self._times) > 10_000:
            self._times.clear()
        return True


class Alerts:
    """Queues and delivers events to the webhooks (see the module docstring). Also an
    Observer of the sessions (hoopd.session): refusals in a burst make ``denials.burst``."""

    def __init__(self, hooks: tuple[Webhook, ...], reactor: Any, node: str, agent: Any = None,
                 bursts: BurstSettings = BurstSettings()) -> None:
        self._denials = Bursts(reactor, bursts.denials, bursts.window)
        self._logins = Bursts(reactor, bursts.logins, bursts.window)
        self.reactor = reactor
        self.node = node
        self.agent = agent or Agent(reactor)
        self._queues: dict[str, deque[tuple[bytes, int]]] = {}
        self._busy: set[str] = set()
        self.delivered = self.failed = 0  # (for tests and the log)
        self.configure(hooks)

    def configure(self, hooks: tuple[Webhook, ...]) -> None:
        """The webhooks from now on (reload); events queued for one that is gone are dropped."""
        self.hooks = hooks
        self._queues = {h.name: self._queues.get(h.name, deque()) for h in hooks}

    # --- bursts (hoopd.session.Observer, and failed logins) ------------------------------

    def session_started(self, session: Any) -> None:
        pass

    def session_ended(self, session: Any, reason: str) -> None:
        pass

    def message_denied(self, session: Any, msg: Any, deny: Any) -> None:
        user = session.identity.name if session.identity else None
        if self._denials.hit((user, session.connection)):
            self.event("denials.burst", {"user": user, "connection": session.connection, "level": session.level,
                                         "count": self._denials.limit, "window": self._denials.window,
                                         "last": deny.message})

    def login_failed(self, peer: str, user: str, why: str) -> None:
        host = peer.rsplit(":", 1)[0]
        if self._logins.hit(host):
            self.event("logins.burst", {"peer": host, "user": user, "count": self._logins.limit,
                                        "window": self._logins.window, "last": why})

    def event(self, name: str, data: dict[str, Any]) -> None:
        """Queue ``name`` for every webhook that wants it; never raises."""
        now = int(self.reactor.seconds())
        for hook in self.hooks:
            if not any(fnmatchcase(name, e) for e in hook.events):
                continue
            body = (json.dumps({"text": _text(name, data)}) if hook.format == "slack"
                    else json.dumps({"event": name, "time": now, "node": self.node, "data": data}, default=str))
            q = self._queues[hook.name]
            if len(q) >= QUEUE_LIMIT:
                q.popleft()
                log.warn("webhook {name}: queue full ({n}); the oldest event was dropped", name=hook.name, n=QUEUE_LIMIT)
            q.append((body.encode(), 1))
            self._next(hook)

    def _next(self, hook: Webhook) -> None:
        q = self._queues.get(hook.name)
        if hook.name in self._busy or not q:
            return
        self._busy.add(hook.name)
        body, attempt = q[0]
        self._post(hook, body).addBoth(self._sent, hook, body, attempt)

    def _post(self, hook: Webhook, body: bytes) -> Deferred:
        headers = {"Content-Type": ["application/json"], "User-Agent": ["hoopd"]}
        if hook.format == "json" and hook.secret is not None:
            ts = int(self.reactor.seconds())
            headers["X-Hoopd-Timestamp"] = [str(ts)]
            headers["X-Hoopd-Signature"] = [signature(hook.secret, ts, body)]
        d = self.agent.request(b"POST", hook.url.encode(), Headers(headers), FileBodyProducer(BytesIO(body)))
        d.addTimeout(hook.timeout, self.reactor)
        d.addCallback(lambda resp: readBody(resp).addCallback(lambda _: resp.code))
        return d

    def _sent(self, outcome: Any, hook: Webhook, body: bytes, attempt: int) -> None:
        self._busy.discard(hook.name)
        q = self._queues.get(hook.name, deque())
        ok = isinstance(outcome, int) and 200 <= outcome < 300
        if ok or attempt >= hook.max_attempts:
            if q and q[0][0] is body:
                q.popleft()
            if ok:
                self.delivered += 1
            else:
                self.failed += 1
                log.error("webhook {name}: an event was not delivered after {n} attempts ({why})", name=hook.name,
                          n=attempt, why=_why(outcome))
            self._next(hook)
            return
        if q and q[0][0] is body:
            q[0] = (body, attempt + 1)
        delay = min(60.0, 2.0 ** (attempt - 1))
        log.warn("webhook {name}: attempt {n} failed ({why}); again in {s:g}s", name=hook.name, n=attempt,
                 why=_why(outcome), s=delay)
        self._busy.add(hook.name)
        self.reactor.callLater(delay, self._retry, hook)

    def _retry(self, hook: Webhook) -> None:
        self._busy.discard(hook.name)
        self._next(hook)


def _why(outcome: Any) -> str:
    return f"HTTP {outcome}" if isinstance(outcome, int) else outcome.getErrorMessage()


def _text(name: str, data: dict[str, Any]) -> str:
    """A one-line message for chat (format slack)."""
    who = data.get("user") or "-"
    if name.startswith("review."):
        return (f"hoopd: review #{data.get('id')} {name[7:]}: {who} on {data.get('connection')}"
                f" ({data.get('rule')}): {' '.join(str(data.get('statement', '')).split())[:200]}")
    if name.startswith("grant."):
        return (f"hoopd: grant {data.get('id')} {name[6:]}: {who} {data.get('level')} on {data.get('connection')}"
                f" for {data.get('duration')}s ({data.get('reason')})")
    return f"hoopd: {name}: {json.dumps(data, default=str)[:300]}"
