"""Several gateway nodes, one gateway: state shared through a PostgreSQL database
(``[state]``, a connection like any other) so that each node's control plane shows
the live sessions of all nodes, kills and cancels reach the node that serves a
session, failed logins count on every node, and a statement held on node A is
approved on node B.

Two tables (created when missing) hold what a node that starts later must find:
``hoopd_sessions`` (each node's live sessions: summary and the digest of the cancel
key, never the key) and ``hoopd_reviews`` (requests and how they ended); everything
that happens goes out as a NOTIFY on channel ``hoopd`` (JSON: ``t`` the event,
``from`` the node). Each node keeps a mirror of the others' sessions (re-read every
RESYNC seconds, so a missed notification heals) and of their review requests.

Fail closed: while the state database is unreachable a statement a review rule holds
is refused at once (nobody on another node could approve it), kills and cancels of
other nodes' sessions cannot be passed on, and the rest keeps serving. The state
database is part of the gateway's trust boundary (it can end sessions and decide
reviews): give it a role and a database only the gateways use.
"""
from __future__ import annotations

import json
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import LoopingCall

from hoopd.config import ConnectionConfig
from hoopd.identity.chain import IdentityChain
from hoopd.log import get_logger
from hoopd.pgwire.conversation import ClientMessage
from hoopd.proxy.registry import CounterWatch, SessionRegistry
from hoopd.proxy.upstream import connect_upstream
from hoopd.review.grants import Grant, Grants
from hoopd.review.requests import Request, Reviewer, ReviewError, Reviews, check_reviewer
from hoopd.session import Deny, SessionInfo
from hoopd.state.client import StateConnection, StateError

log = get_logger("hoopd.state")
CHANNEL = "hoopd"
RESYNC = 10.0  # seconds between full reads of the other nodes' sessions
COUNTERS = 2.0  # seconds between updates of this node's session counters
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
KEEP_FOREIGN = 500  # other nodes' ended requests listed
SCHEMA = ("create table if not exists hoopd_sessions (id text primary key, node text not null, summary jsonb not null,"
          " key text, updated timestamptz not null default now())",
          "create table if not exists hoopd_reviews (id text primary key, node text not null, summary jsonb not null,"
          " updated timestamptz not null default now())",
          "create table if not exists hoopd_grants (id text primary key, summary jsonb not null,"
          " updated timestamptz not null default now())")
UNAVAILABLE = "the shared state database is unavailable, so no other node could decide it"


class SharedState(Service):
    name = "state"

    def __init__(self, conn: ConnectionConfig, node: str, reactor: Any, registry: SessionRegistry,
                 reviews: Reviews, identity: IdentityChain, grants: Grants | None = None) -> None:
        self.conn = conn
        self.node = node
        self.reactor = reactor
        self.registry = registry
        self.reviews = reviews
        self.identity = identity
        self.grants = grants
        self.db: StateConnection | None = None
        self.remote: dict[str, SessionInfo] = {}  # other nodes' live sessions (summary()["node"] says which)
        self.foreign: dict[str, dict[str, Any]] = {}  # other nodes' review requests (summaries)
        self._nodes: dict[str, str] = {}  # remote session id -> its node
        self._watch = CounterWatch()
        self._retry = RETRY_FIRST
        self._loops = [LoopingCall(self._resync), LoopingCall(self._counters)]
        for loop in self._loops:
            loop.clock = reactor
        self._stopping = False
        reviews.listeners.append(self._review_event)
        if grants is not None:
            grants.listeners.append(self._grant_event)

    @property
    def available(self) -> bool:
        return self.db is not None and not self.db.closed

    # --- connection ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> Any:
        self._stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        d: Deferred[Any] = succeed(None)
        if self.available:  # this node's sessions are gone with it
            d = self.db.run("delete from hoopd_sessions where node = $1", self.node)  # type: ignore[union-attr]
            d.addBoth(lambda _: self.db.close() if self.db else None)
        super().stopService()
        return d

    def _connect(self) -> None:
        cred = self.conn.credential_for("default")
        d = connect_upstream(self.reactor, self.conn, cred, {"application_name": f"hoopd-state:{self.node}"})
        d.addCallback(self._connected)
        d.addErrback(self._failed)

    @inlineCallbacks
    def _connected(self, up: Any) -> Any:
        db = StateConnection(up, self._notified, self._lost)
        try:
            yield self._setup(db)
        except Exception:
            if self.db is db:
                self.db = None  # (so its loss below schedules nothing: _failed retries)
            db.close()
            raise
        for loop, every in zip(self._loops, (RESYNC, COUNTERS)):
            if not loop.running:
                loop.start(every, now=False)
        log.info("state: connected to the shared state database as node {node}", node=self.node)

    @inlineCallbacks
    def _setup(self, db: StateConnection) -> Any:
        for sql in SCHEMA:
            yield db.run(sql)
        yield db.run(f"listen {CHANNEL}")
        yield db.run("delete from hoopd_sessions where node = $1", self.node)  # left by a crash of this node
        self.db = db
        self._retry = RETRY_FIRST
        for s in self.registry:  # sessions that began while the database was away
            self._insert(s.info)
        yield self._resync()
        rows = yield db.run("select summary from hoopd_reviews where node <> $1 and summary->>'status' = 'pending'",
                            self.node)
        for (summary,) in rows:
            self._foreign(json.loads(summary or "{}"))
        if self.grants is not None:  # the shared grants win over this node's file; this node's add to them
            rows = yield db.run("select summary from hoopd_grants")
            shared = {g.id for g in (Grant(**json.loads(s)) for (s,) in rows)}
            for (s,) in rows:
                self.grants.merge(Grant(**json.loads(s)))
            for g in self.grants.list():
                if g.id not in shared:
                    self._grant_event("known", g)

    def _failed(self, f: Any) -> None:
        if self._stopping:
            return
        log.warn("state: cannot use the shared state database ({err}); retrying in {s:g}s",
                 err=f.getErrorMessage(), s=self._retry)
        self.db = None
        self.reactor.callLater(self._retry, self._connect)
        self._retry = min(RETRY_MAX, self._retry * 2)

    def _lost(self, conn: StateConnection) -> None:
        if conn is not self.db:
            return
        self.db = None
        self.remote.clear()
        self._nodes.clear()
        if not self._stopping:
            log.warn("state: lost the shared state database; retrying")
            self.reactor.callLater(self._retry, self._connect)

    def _run(self, sql: str, *params: Any) -> "Deferred[Any]":
        """A statement whose failure is logged (the database going away is handled by _lost)."""
        if not self.available:
            return succeed([])
        d = self.db.run(sql, *params)  # type: ignore[union-attr]
        return d.addErrback(lambda f: log.warn("state: {err}", err=f.getErrorMessage()) if f.check(StateError)
                            else f)

    def publish(self, event: dict[str, Any]) -> None:
        self._run("select pg_notify($1, $2)", CHANNEL, json.dumps({**event, "from": self.node}, default=str))

    # --- what the other nodes say -------------------------------------------------------

    def _notified(self, channel: str, payload: str) -> None:
        try:
            ev = json.loads(payload)
        except ValueError:
            log.warn("state: a notification that is not JSON on {ch}", ch=channel)
            return
        if ev.get("from") == self.node:
            return
        handler = getattr(self, "_on_" + str(ev.get("t")).replace("-", "_"), None)
        if handler is None:
            return
        try:
            handler(ev)
        except Exception:
            log.failure("state: handling a {t} event from {node} failed", t=ev.get("t"), node=ev.get("from"))

    def _on_session(self, ev: dict[str, Any]) -> None:
        s = ev["summary"]
        self.remote[s["id"]] = SessionInfo.from_summary(s)
        self._nodes[s["id"]] = ev["from"]

    def _on_ended(self, ev: dict[str, Any]) -> None:
        self.remote.pop(ev["id"], None)
        self._nodes.pop(ev["id"], None)

    def _on_kill(self, ev: dict[str, Any]) -> None:
        if ev.get("node") == self.node:
            self.registry.kill(ev["id"], ev.get("reason") or "", ev.get("by") or f"node {ev['from']}")

    def _on_cancel(self, ev: dict[str, Any]) -> None:
        if ev.get("node") != self.node:
            return
        target = self.registry.by_digest(bytes.fromhex(ev["key"]))
        if target is not None:
            log.info("session {sid}: cancel request passed on from node {node}", sid=target.info.id, node=ev["from"])
            target.cancel_upstream()

    def _on_login(self, ev: dict[str, Any]) -> None:
        limiter = self.identity.limiter
        (limiter.succeeded if ev.get("ok") else limiter.failed)(ev["user"], ev["peer"])

    def _on_review(self, ev: dict[str, Any]) -> None:
        self._foreign({**ev["summary"], "node": ev["from"]})

    def _on_decide(self, ev: dict[str, Any]) -> None:
        if ev.get("node") != self.node:
            return
        w = ev["who"]
        who = Reviewer(w["name"], w.get("user"), frozenset(w.get("groups") or ()))
        try:
            if ev.get("approve"):
                self.reviews.approve(ev["id"], who, ev.get("text") or "")
            else:
                self.reviews.deny(ev["id"], who, ev.get("text") or "")
            log.info("reviewer {by} on node {node}: {what} request {rid}", by=who.name, node=ev["from"],
                     what="approve" if ev.get("approve") else "deny", rid=ev["id"])
        except ReviewError as e:
            log.warn("state: decision on request {rid} from node {node} refused: {err}", rid=ev["id"],
                     node=ev["from"], err=e.message)

    def _foreign(self, summary: dict[str, Any]) -> None:
        self.foreign[summary["id"]] = summary
        ended = [k for k, v in self.foreign.items() if v.get("status") != "pending"]
        for k in ended[:max(0, len(ended) - KEEP_FOREIGN)]:
            del self.foreign[k]

    @inlineCallbacks
    def _resync(self) -> Any:
        rows = yield self._run("select node, summary from hoopd_sessions where node <> $1", self.node)
        if not self.available:
            return
        self.remote = {}
        self._nodes = {}
        for node, summary in rows:
            s = json.loads(summary)
            self.remote[s["id"]] = SessionInfo.from_summary(s)
            self._nodes[s["id"]] = node

    # --- this node's sessions (a session Observer) --------------------------------------

    def session_started(self, info: SessionInfo) -> None:
        self._insert(info)
        self.publish({"t": "session", "summary": info.summary()})

    def _insert(self, info: SessionInfo) -> None:
        digest = self.registry.digest_of(info.id)
        self._run("insert into hoopd_sessions (id, node, summary, key) values ($1, $2, $3::jsonb, $4)"
                  " on conflict (id) do update set summary = excluded.summary, updated = now()",
                  info.id, self.node, json.dumps(info.summary()), digest.hex() if digest else None)

    def session_ended(self, info: SessionInfo, reason: str) -> None:
        self._watch.forget(info.id)
        self._run("delete from hoopd_sessions where id = $1", info.id)
        self.publish({"t": "ended", "id": info.id})

    def message_denied(self, session: SessionInfo, msg: ClientMessage, deny: Deny) -> None:
        pass

    def _counters(self) -> None:
        for info in self._watch.moved(self.registry):
            self._run("update hoopd_sessions set summary = $2::jsonb, updated = now() where id = $1",
                      info.id, json.dumps(info.summary()))

    def login_outcome(self, user: str, peer: str, ok: bool) -> None:
        self.publish({"t": "login", "user": user, "peer": peer, "ok": ok})

    # --- what the control plane asks ----------------------------------------------------

    def sessions(self) -> list[dict[str, Any]]:
        return [self._summary(info) for info in self.remote.values()]

    def session(self, sid: str) -> dict[str, Any] | None:
        info = self.remote.get(sid)
        return self._summary(info) if info is not None else None

    def _summary(self, info: SessionInfo) -> dict[str, Any]:
        """Another node's live session as the control plane lists it (``node`` names it)."""
        return {**info.summary(), "node": self._nodes.get(info.id), "active": True}

    def kill(self, sid: str, reason: str, by: str) -> bool:
        node = self._nodes.get(sid)
        if node is None or not self.available:
            return False
        self.publish({"t": "kill", "node": node, "id": sid, "reason": reason, "by": by})
        return True

    @inlineCallbacks
    def cancel(self, pid: int, secret: bytes) -> Any:
        """Pass a CancelRequest on to the node that serves its session; whether one does."""
        digest = self.registry.digest(pid, secret).hex()
        rows = yield self._run("select node from hoopd_sessions where key = $1 and node <> $2", digest, self.node)
        if not rows:
            return False
        self.publish({"t": "cancel", "node": rows[0][0], "key": digest})
        return True

    def decide(self, rid: str, who: Reviewer, approve: bool, text: str) -> dict[str, Any]:
        """A reviewer here decides another node's request: checked here, applied (and checked
        again) by the node that holds the statement."""
        req = self.foreign.get(rid)
        if req is None:
            raise ReviewError(404, f"no request {rid}")
        if req.get("status") != "pending":
            raise ReviewError(409, f"request {rid} is already {req.get('status')}")
        if not self.available:
            raise ReviewError(503, "the shared state database is unavailable; decide on the node that holds it")
        check_reviewer(who, tuple(req["reviewers"]), f"reviewer groups of rule {req['rule']}", req.get("user"),
                       None if req.get("allow_self_approval")
                       else f"rule {req['rule']} does not allow approving one's own statements")
        self.publish({"t": "decide", "node": req["node"], "id": rid, "approve": approve, "text": text,
                      "who": {"name": who.name, "user": who.user, "groups": sorted(who.groups)}})
        return {**req, "forwarded_to": req["node"]}

    def _on_grant(self, ev: dict[str, Any]) -> None:
        if self.grants is not None:
            self.grants.merge(Grant(**ev["grant"]))

    def _grant_event(self, event: str, g: Grant) -> None:
        summary = g.summary()
        self._run("insert into hoopd_grants (id, summary) values ($1, $2::jsonb) on conflict (id)"
                  " do update set summary = excluded.summary, updated = now()", g.id, json.dumps(summary))
        self.publish({"t": "grant", "grant": summary})

    def grant_level(self, user: str, connection: str) -> tuple[str, str] | None:
        """Grants.level, or None while the state database is away (fail closed: another node
        may have revoked it)."""
        if self.grants is None or not self.available:
            return None
        return self.grants.level(user, connection)

    # --- this node's review requests (a Reviews listener) -------------------------------

    def _review_event(self, event: str, req: Request) -> None:
        if event == "requested" and not self.available:
            self.reactor.callLater(0, self.reviews.refuse, req.id, UNAVAILABLE)
            return
        summary = req.summary()
        self._run("insert into hoopd_reviews (id, node, summary) values ($1, $2, $3::jsonb) on conflict (id)"
                  " do update set summary = excluded.summary, updated = now()", req.id, self.node, json.dumps(summary))
        self.publish({"t": "review", "summary": summary})
