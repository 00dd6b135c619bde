"""One worker process's side of the supervisor channel: the gateway's data path on a listening socket it inherited from
the supervisor, talking to the supervisor over AMP on its stdin/stdout.

(started as ``python -m hoopd.workers.run``, by hoopd.workers.supervisor). The worker runs identity, the
stages and its own journal stream (node ``<node>-w<N>``); the supervisor keeps what
must be one for the whole gateway: the control plane, review requests, grants. The
worker reports its sessions (start, counters each second, end), passes on every
failed or good login (so each worker's failed-login limiter counts all of them), asks
the others about a CancelRequest whose key it does not know, and holds statements for
reviews whose requests live in the supervisor. When the supervisor goes away (its end
of stdin closes) the worker stops as on SIGTERM: sessions get the shutdown grace.
"""
from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.protocols import amp
from twisted.python.failure import Failure

from hoopd.identity.base import Identity
from hoopd.journal.view import live_event
from hoopd.log import get_logger
from hoopd.pgwire.conversation import ClientMessage
from hoopd.policy.rules import ReviewSettings
from hoopd.proxy.registry import CounterWatch
from hoopd.review.requests import notice
from hoopd.session import Deny, Hold, SessionInfo
from hoopd.workers import protocol as p
from hoopd.workers.protocol import send

log = get_logger("hoopd.workers")
FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
COUNTERS_EVERY = 1.0  # seconds between session counter reports
_PER_REPORT = 100  # summaries per SessionCounters message (AMP caps a value at 64 KiB)


def worker_node(node: str, index: int) -> str:
    """The journal stream (and anchor) name of worker ``index`` of ``node``."""
    return f"{node}-w{index}"


class WorkerLink(amp.AMP):
    """The worker's end of the supervisor channel. ``gateway`` (the worker's
    GatewayService) is set before the channel starts."""

    def __init__(self, index: int, reactor: Any) -> None:
        super().__init__()
        self.index = index
        self.reactor = reactor
        self.gateway: Any = None
        self.reviews = RemoteReviews(self)
        self.others = 0  # live sessions of the other workers
        self.following = False
        self._watch = CounterWatch()
        self._counters = LoopingCall(self._report_counters)
        self._counters.clock = reactor
        self._metrics: tuple[float, bytes] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._counters.start(COUNTERS_EVERY, now=False)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        if self._counters.running:
            self._counters.stop()
        if self.reactor.running:
            log.warn("worker {i}: the supervisor is gone; stopping", i=self.index)
            self.reactor.stop()

    def send(self, command: type[amp.Command], **kw: Any) -> None:
        """callRemote whose failure (the supervisor gone) is logged, not raised."""
        send(self, f"worker {self.index}", command, kw)

    # --- what the worker tells ----------------------------------------------------------

    def session_started(self, session: SessionInfo) -> None:
        self.send(p.SessionStarted, summary=session.summary())

    def session_ended(self, session: SessionInfo, reason: str) -> None:
        self._watch.forget(session.id)
        self.send(p.SessionEnded, summary=session.summary(), reason=reason)

    def message_denied(self, session: SessionInfo, msg: ClientMessage, deny: Deny) -> None:
        pass

    def login_outcome(self, user: str, peer: str, ok: bool) -> None:
        self.send(p.LoginOutcome, user=user, peer=peer, ok=ok)

    def cancel_elsewhere(self, pid: int, secret: bytes) -> Deferred[bool]:
        d = self.callRemote(p.CancelElsewhere, pid=pid, secret=secret)
        return d.addCallbacks(lambda r: r["found"], lambda f: False)

    def journal_written(self, rec: dict[str, Any], nbytes: int, seconds: float) -> None:
        if not self.following or rec.get("session") is None:
            return
        event = live_event(rec)
        if len(str(event)) > p.MAX_EVENT:
            event.pop("rows", None)
            event["rows_left_out"] = True
        self.send(p.JournalEvent, event=event)

    def _report_counters(self) -> None:
        moved = [info.summary() for info in self._watch.moved(self.gateway.registry)]
        for i in range(0, len(moved), _PER_REPORT):
            self.send(p.SessionCounters, summaries=moved[i:i + _PER_REPORT])

    # --- what the supervisor asks -------------------------------------------------------

    @p.Kill.responder
    def kill(self, session: str, reason: str, by: str) -> dict[str, Any]:
        return {"found": self.gateway.registry.kill(session, reason, by)}

    @p.Cancel.responder
    def cancel(self, pid: int, secret: bytes) -> Any:
        target = self.gateway.registry.by_cancel_key(pid, secret)
        if target is None:
            return {"found": False}
        log.info("session {sid}: cancel request passed on by another worker", sid=target.info.id)
        return target.cancel_upstream().addCallback(lambda _: {"found": True})

    @p.Reload.responder
    def reload(self, by: str) -> dict[str, Any]:
        return {"error": self.gateway.reload(by)}

    @p.Metrics.responder
    def metrics(self, offset: int) -> dict[str, Any]:
        now = self.reactor.seconds()
        if offset == 0 or self._metrics is None or now - self._metrics[0] > 10:
            self._metrics = (now, self.gateway.metrics.render())
        text = self._metrics[1]
        return {"text": text[offset:offset + p.MAX_EVENT], "total": len(text)}

    @p.OthersSessions.responder
    def others_sessions(self, count: int) -> dict[str, Any]:
        self.others = count
        return {}

    @p.LoginOutcome.responder
    def login_elsewhere(self, user: str, peer: str, ok: bool) -> dict[str, Any]:
        limiter = self.gateway.identity.limiter
        (limiter.succeeded if ok else limiter.failed)(user, peer)
        return {}

    @p.ReviewDecided.responder
    def review_decided(self, rid: str, sqlstate: str | None, message: str | None) -> dict[str, Any]:
        self.reviews.decided(rid, Deny(message or "", sqlstate) if sqlstate else None)
        return {}

    @p.Record.responder
    def record(self, session: str, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        live = self.gateway.registry.get(session)
        journal = self.gateway.journal
        if live is not None and journal is not None:
            try:
                journal.record(live.info, kind, fields)
            except Exception:
                log.failure("worker {i}: a {kind} record for session {sid} was not written", i=self.index,
                            kind=kind, sid=session)
        return {}

    @p.Follow.responder
    def follow(self, on: bool) -> dict[str, Any]:
        self.following = on
        return {}


@dataclass
class RemoteReviews:
    """Reviews (hoopd.review.requests) as the review stage of a worker sees them: the
    request lives in the supervisor; the Hold lives here, released by ReviewDecided and
    withdrawn (WithdrawReview) when cancelled."""

    link: WorkerLink
    where: str = ""  # how reviewers decide (the notice's hint)
    waiting: dict[str, Hold] = field(default_factory=dict)

    def open(self, info: SessionInfo, statement: str, rule: str, message: str,
             settings: ReviewSettings) -> tuple[None, Hold]:
        rid = os.urandom(4).hex()
        hold = Hold(notice(rid, rule, settings, self.where), lambda _: self._withdraw(rid))
        self.waiting[rid] = hold
        self._send(rid, info, statement, rule, message, settings, False).addErrback(
            lambda f: self.decided(rid, Deny("hoopd: the review request could not be filed; refused", "58000")))
        return None, hold

    def break_glass(self, info: SessionInfo, statement: str, rule: str, message: str,
                    settings: ReviewSettings) -> None:
        self._send(os.urandom(4).hex(), info, statement, rule, message, settings, True)

    def _send(self, rid: str, info: SessionInfo, statement: str, rule: str, message: str,
              settings: ReviewSettings, break_glass: bool) -> Deferred[Any]:
        return self.link.callRemote(p.OpenReview, rid=rid, session=info.summary(), statement=statement, rule=rule,
                                    message=message, settings=asdict(settings), break_glass=break_glass)

    def _withdraw(self, rid: str) -> None:
        if self.waiting.pop(rid, None) is not None:
            self.link.send(p.WithdrawReview, rid=rid)

    def decided(self, rid: str, verdict: Deny | None) -> None:
        hold = self.waiting.pop(rid, None)
        if hold is not None and not hold.called:
            hold.callback(verdict)


@dataclass(frozen=True)
class WorkerRole:
    """What makes a GatewayService a worker (hoopd.tap)."""

    index: int
    fd: int
    family: int
    link: WorkerLink
    mcp_fd: int | None = None  # the supervisor's MCP ticket listener, when [mcp] is on


@dataclass(frozen=True)
class RemoteTickets:
    """MCP tickets (hoopd.mcp.tickets) as a worker redeems them: in the supervisor, which
    minted them."""

    link: WorkerLink

    def redeem(self, user: str, secret: str) -> "Deferred[Identity | None]":
        d = self.link.callRemote(p.RedeemTicket, user=user, secret=secret)

        def identity(got: dict[str, Any]) -> Identity | None:
            i = got["identity"]
            return Identity(i["name"], frozenset(i["groups"]), i["source"]) if i else None
        return d.addCallbacks(identity, lambda f: None)
