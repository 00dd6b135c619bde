"""The control plane: what the HTTP API and the SSH console can see and do, in one place.

Both front ends call these methods with ``by`` naming who acts (``api:<token>``,
``oidc:<user>``, ``ssh:<name>``), so every admin action is logged, counted and, when a
journal is wired, journaled the same way whichever door it came through.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol as TxProtocol

from hoopd.config import Config
from hoopd.control.auth import Principal
from hoopd.control.metrics import Metrics, merge_metrics
from hoopd.control.providers import JournalView, TokenVerifier
from hoopd.control.summary import config_summary
from hoopd.control.tracker import SessionTracker
from hoopd.identity.base import Identity
from hoopd.log import get_logger
from hoopd.names import name_key
from hoopd.review.grants import Grants
from hoopd.review.requests import Reviewer, ReviewError, Reviews
from hoopd.proxy.registry import SessionRegistry

log = get_logger("hoopd.control")


class Gateway(Protocol):
    """What the control plane reads from the gateway service (hoopd.tap.GatewayService)."""

    config: Config
    registry: SessionRegistry
    stopping: bool
    reviews: Reviews
    grants: Grants | None

    def reload(self, by: str) -> str | None:
        """Re-read the config file; None when applied, else why it was rejected."""
        ...

    def listeners(self) -> dict[str, str | None]:
        """Listener name -> the address it is bound to, or None while it is not."""
        ...


class _Probe(TxProtocol):
    def connectionMade(self) -> None:
        self.transport.loseConnection()


def _who(by: str) -> str:
    return by.split(":", 1)[0]


class ControlPlane:
    def __init__(self, gateway: Gateway, reactor: Any, journal: JournalView | None = None,
                 token_verifier: TokenVerifier | None = None, tracker: SessionTracker | None = None,
                 metrics: Metrics | None = None,
                 worker_metrics: Callable[[], Deferred[list[tuple[int, bytes]]]] | None = None,
                 mcp: Any = None, shared: Any = None, activity: Any = None) -> None:
        self.gateway = gateway
        self.activity = activity  # per-minute counts for the console's overview (hoopd.control.activity)
        self.shared = shared  # several nodes: the other nodes' sessions and requests (hoopd.state.shared)
        self.mcp = mcp  # the MCP endpoint (hoopd.mcp.server), None when off
        self.worker_metrics = worker_metrics  # [gateway] workers: each worker's /metrics text
        self.reactor = reactor
        self.journal = journal
        self.token_verifier = token_verifier
        self.tracker = tracker or SessionTracker(reactor)
        self.metrics = metrics or Metrics(gateway.registry, self.tracker)
        self.started = reactor.seconds()

    @property
    def config(self) -> Config:
        return self.gateway.config

    # --- reading ----------------------------------------------------------------------

    def sessions(self, *, user: str | None = None, connection: str | None = None,
                 active: bool | None = True) -> list[dict[str, Any]]:
        """Live sessions (active=True), recently ended ones (False) or both (None), oldest first."""
        found: list[dict[str, Any]] = []
        if active is not False:
            found += sorted([*({**s.info.summary(), "active": True} for s in self.gateway.registry),
                             *(self.shared.sessions() if self.shared is not None else ())],
                            key=lambda s: s["started"])
        if active is not True:
            found = list(self.tracker.recent) + found
        return [s for s in found if (user is None or name_key(s["user"] or "") == name_key(user))
                and (connection is None or s["connection"] == connection)]

    def session(self, session_id: str) -> dict[str, Any] | None:
        live = self.gateway.registry.get(session_id)
        if live is not None:
            return {**live.info.summary(), "active": True}
        remote = self.shared.session(session_id) if self.shared is not None else None
        return remote or self.tracker.ended(session_id)

    def stats(self) -> dict[str, Any]:
        live = list(self.gateway.registry)
        return {
            "node": self.config.gateway.node,
            "uptime": round(self.reactor.seconds() - self.started, 3),
            "sessions_active": len(live),
            "sessions_total": self.gateway.registry.total,
            "statements": sum(s.info.statements for s in live) + sum(self.tracker.ended_statements.values()),
            "bytes_in": sum(s.info.bytes_in for s in live) + sum(self.tracker.ended_bytes_in.values()),
            "bytes_out": sum(s.info.bytes_out for s in live) + sum(self.tracker.ended_bytes_out.values()),
            "login_failures": self.metrics.login_failures(),
            "connections": sorted(self.config.connections),
        }

    def metrics_text(self) -> Deferred[bytes]:
        """The /metrics exposition: this process's, and its workers' (labelled by worker)."""
        own = self.metrics.render()
        if self.worker_metrics is None:
            return defer.succeed(own)
        return self.worker_metrics().addCallback(lambda got: merge_metrics(own, got))

    def config_summary(self) -> dict[str, Any]:
        return config_summary(self.config)

    # --- acting -----------------------------------------------------------------------

    def kill(self, session_id: str, reason: str, by: str) -> bool:
        """End a live session with 57P01; False when there is no such live session."""
        if self.gateway.registry.get(session_id) is None:
            if self.shared is None or not self.shared.kill(session_id, reason, by):
                return False
            log.info("admin {by}: kill session {sid} of another node ({reason})", by=by, sid=session_id,
                     reason=reason or "no reason")
            self._record("kill", by, session=session_id, reason=reason)
            return True
        log.info("admin {by}: kill session {sid} ({reason})", by=by, sid=session_id, reason=reason or "no reason")
        self._record("kill", by, session=session_id, reason=reason)
        self.gateway.registry.kill(session_id, reason, by)
        return True

    # --- reviews ------------------------------------------------------------------------

    def identity_of(self, who: Principal) -> Identity:
        """The identity behind a caller with a user: its OIDC groups, or its ``[[users]]`` groups."""
        assert who.user is not None
        groups = who.groups
        if not groups:
            local = self.config.users.get(name_key(who.user))
            groups = local.groups if local is not None else frozenset()
        return Identity(who.user, groups, "oidc" if who.name.startswith("oidc:") else "token")

    def reviewer(self, name: str, user: str | None, groups: frozenset[str] = frozenset()) -> Reviewer:
        """Who decides a review: ``groups`` (OIDC) or else the ``[[users]]`` groups of ``user``."""
        if not groups and user is not None:
            local = self.config.users.get(name_key(user))
            groups = local.groups if local is not None else frozenset()
        return Reviewer(name, user, groups)

    @property
    def review_listeners(self) -> list[Any]:
        """Who hears of review events as they happen (hoopd.review.requests.Listener)."""
        return self.gateway.reviews.listeners

    def reviews(self, status: str | None = None) -> list[dict[str, Any]]:
        foreign = list(self.shared.foreign.values()) if self.shared is not None else []
        return [r.summary() for r in self.gateway.reviews.list(status)] + [
            dict(r) for r in foreign if status is None or r.get("status") == status]  # (copies: callers edit them)

    def review(self, rid: str) -> dict[str, Any] | None:
        r = self.gateway.reviews.get(rid)
        if r is None and self.shared is not None:
            found = self.shared.foreign.get(rid)
            return dict(found) if found is not None else None  # (a copy: show-review rewrites its approvals)
        return r.summary() if r is not None else None

    def decide(self, rid: str, who: Reviewer, approve: bool, text: str) -> dict[str, Any]:
        """Approve (``text``: a comment) or deny (``text``: the reason); ReviewError says why not."""
        reviews = self.gateway.reviews
        if reviews.get(rid) is None and self.shared is not None and rid in self.shared.foreign:
            log.info("reviewer {by}: {what} request {rid} of another node", by=who.name,
                     what="approve" if approve else "deny", rid=rid)
            return self.shared.decide(rid, who, approve, text)
        req = reviews.approve(rid, who, text) if approve else reviews.deny(rid, who, text)
        log.info("reviewer {by}: {what} request {rid}", by=who.name, what="approve" if approve else "deny", rid=rid)
        return req.summary()

    def grants(self, status: str | None = None) -> list[dict[str, Any]]:
        grants = self.gateway.grants
        return [g.summary() for g in grants.list(status)] if grants is not None else []

    def request_grant(self, user: str | None, connection: str, level: str, duration: float,
                      reason: str) -> dict[str, Any]:
        """A grant request by ``user`` (ReviewError says why not)."""
        grants = self._shared_grants()
        if user is None:
            raise ReviewError(403, "only an identity (an OIDC token, or a token with a user) can ask for a grant")
        return grants.request(user, connection, level, duration, reason).summary()

    def decide_grant(self, gid: str, who: Reviewer, action: str, text: str) -> dict[str, Any]:
        """``action``: approve (``text``: a comment), deny or revoke (``text``: why)."""
        grant = getattr(self._shared_grants(), action)(gid, who, text)
        log.info("reviewer {by}: {what} grant {gid}", by=who.name, what=action, gid=gid)
        return grant.summary()

    def _shared_grants(self) -> Grants:
        """The grants to change; with several nodes only while the state database is there
        (a change no other node hears of would be undone when it comes back)."""
        grants = self.gateway.grants
        if grants is None:
            raise ReviewError(503, "access grants are off on this gateway (see its log)")
        if self.shared is not None and not self.shared.available:
            raise ReviewError(503, "the shared state database is unavailable; grants cannot change now")
        return grants

    def grant_changed(self, event: str, grant: Any) -> None:
        """A Grants listener: every step of a grant is an ``admin`` journal record
        (``grant_requested``, ``grant_approved`` ...), by whoever took it."""
        detail = {k: v for k, v in grant.summary().items() if k != "id"}
        by = {"requested": f"user:{grant.user}", "expired": "gateway:expiry"}.get(event, grant.decided_by)
        self._record(f"grant_{event}", by or "gateway", grant=grant.id, **detail)

    def reload(self, by: str) -> str | None:
        log.info("admin {by}: reload", by=by)
        err = self.gateway.reload(by)
        self._record("reload", by, ok=err is None, error=err)
        return err

    def _record(self, action: str, by: str, **detail: Any) -> None:
        self.metrics.admin_action(action, _who(by))
        if self.journal is not None:
            try:
                self.journal.admin_action(action, by, **detail)
            except Exception:
                log.failure("could not journal admin action {action} by {by}", action=action, by=by)

    # --- readiness --------------------------------------------------------------------

    def _probe(self, host: str, port: int) -> defer.Deferred[dict[str, Any]]:
        t0 = self.reactor.seconds()
        ep = HostnameEndpoint(self.reactor, host, port, timeout=self.config.control.ready_timeout)
        d = ep.connect(Factory.forProtocol(_Probe))
        d.addCallbacks(lambda _: {"ok": True, "seconds": round(self.reactor.seconds() - t0, 6)},
                       lambda f: {"ok": False, "error": f.getErrorMessage()})
        return d

    @defer.inlineCallbacks
    def readiness(self) -> Any:
        """(ready, detail): listeners bound, journal writable, every upstream reachable over TCP."""
        listeners = self.gateway.listeners()
        checks: dict[str, Any] = {
            "listeners": {"ok": all(listeners.values()), "bound": listeners},
            "stopping": {"ok": not self.gateway.stopping},
        }
        if self.journal is not None:
            problem = self.journal.problem()
            checks["journal"] = {"ok": problem is None, **({"error": problem} if problem else {})}
        conns = list(self.config.connections.values())
        results = yield defer.gatherResults([self._probe(c.host, c.port) for c in conns])
        checks["upstreams"] = {"ok": all(r["ok"] for r in results),
                               "connections": {c.name: r for c, r in zip(conns, results)}}
        return all(c["ok"] for c in checks.values()), checks
