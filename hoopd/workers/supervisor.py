"""The supervisor of ``[gateway] workers = N`` (N > 1): it binds the postgres listener,
starts N worker processes (hoopd.workers.run, hoopd.workers.child) that accept on that one socket, and
keeps what must be one for the whole gateway, so the control plane shows one gateway.

- Sessions: each worker reports its sessions; the supervisor's registry holds a
  ``RemoteSession`` per live one (the console, the API, metrics and kill see them all;
  kill goes to the worker), and tells every worker how many the others have, so
  ``[gateway] max_sessions`` holds for the sum.
- Logins: a worker's failed or good login is passed on to every other worker's limiter.
- Cancels: a CancelRequest whose key the receiving worker does not know is tried on
  the others (keys stay as random as PostgreSQL's own; the cost is one message per
  worker per cancel that landed elsewhere).
- Reviews and grants live here; a worker holds the statement and the supervisor tells
  it the outcome. The journal records of a review go into the session's own stream.
- A worker that exits is restarted (after 1 s, doubling up to 30 s while it keeps
  failing); its sessions are gone with it, the other workers carry on. Reload reaches
  every worker. Stopping sends SIGTERM to each and waits for it (the workers give
  their sessions ``[control] shutdown_grace``), then SIGKILL.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.protocols import amp
from twisted.python.failure import Failure

from hoopd.log import get_logger
from hoopd.policy.rules import ReviewSettings
from hoopd.proxy.registry import SessionRegistry
from hoopd.review.requests import Reviews
from hoopd.session import Deny, Hold, SessionInfo
from hoopd.workers import protocol as p
from hoopd.workers.protocol import send

log = get_logger("hoopd.workers")
RESTART_FIRST, RESTART_MAX, HEALTHY_AFTER = 1.0, 30.0, 60.0  # seconds
KILL_AFTER = 10.0  # seconds after shutdown_grace before a worker that did not stop gets SIGKILL


class RemoteSession:
    """A live session of a worker, as the supervisor's registry holds it."""

    def __init__(self, info: SessionInfo, worker: "Worker") -> None:
        self.info = info
        self.worker = worker

    def kill(self, reason: str, by: str) -> None:
        self.worker.send(p.Kill, session=self.info.id, reason=reason, by=by)


class Refuse(Factory):
    """The supervisor's own factory on the postgres socket: it never accepts (the socket
    is only read by the workers), and would close anything at once."""

    def buildProtocol(self, addr: Any) -> None:
        return None


def family_of(port: Any) -> str:
    """The address family name (hoopd.workers.child.FAMILIES) of a listening port."""
    fam = port.socket.family
    return {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}[fam]


class _Stdin:
    """AMP's transport in the supervisor: writes go to the worker's stdin."""

    def __init__(self, process: Any) -> None:
        self.process = process

    def write(self, data: bytes) -> None:
        self.process.write(data)

    def writeSequence(self, seq: list[bytes]) -> None:
        self.process.write(b"".join(seq))

    def loseConnection(self) -> None:
        self.process.closeStdin()

    def getPeer(self) -> Any:
        return ("worker", self.process.pid)

    def getHost(self) -> Any:
        return ("supervisor", os.getpid())


class SupervisorLink(amp.AMP):
    """The supervisor's end of one worker's channel."""

    def __init__(self, worker: "Worker") -> None:
        super().__init__()
        self.worker = worker
        self.pool = worker.pool

    @p.Hello.responder
    def hello(self, index: int, pid: int) -> dict[str, Any]:
        self.pool.worker_ready(self.worker)
        return {}

    @p.RedeemTicket.responder
    def redeem(self, user: str, secret: str) -> dict[str, Any]:
        tickets = self.pool.tickets
        ident = tickets.redeem(user, secret) if tickets is not None else None
        return {"identity": {"name": ident.name, "groups": sorted(ident.groups), "source": ident.source}
                if ident is not None else None}

    @p.SessionStarted.responder
    def session_started(self, summary: dict[str, Any]) -> dict[str, Any]:
        self.pool.session_started(self.worker, SessionInfo.from_summary(summary))
        return {}

    @p.SessionEnded.responder
    def session_ended(self, summary: dict[str, Any], reason: str) -> dict[str, Any]:
        self.pool.session_ended(SessionInfo.from_summary(summary), reason)
        return {}

    @p.SessionCounters.responder
    def counters(self, summaries: list[dict[str, Any]]) -> dict[str, Any]:
        for s in summaries:
            live = self.pool.registry.get(s["id"])
            if live is not None:
                info = live.info
                info.statements, info.bytes_in, info.bytes_out = s["statements"], s["bytes_in"], s["bytes_out"]
                info.transaction_status = s["transaction_status"]
        return {}

    @p.LoginOutcome.responder
    def login_outcome(self, user: str, peer: str, ok: bool) -> dict[str, Any]:
        for w in self.pool.others(self.worker):
            w.send(p.LoginOutcome, user=user, peer=peer, ok=ok)
        return {}

    @p.CancelElsewhere.responder
    def cancel_elsewhere(self, pid: int, secret: bytes) -> Deferred[dict[str, Any]]:
        asked = [w.call(p.Cancel, pid=pid, secret=secret) for w in self.pool.others(self.worker)]
        d = defer.gatherResults([a.addErrback(lambda f: {"found": False}) for a in asked])
        return d.addCallback(lambda got: {"found": any(r["found"] for r in got)})

    @p.OpenReview.responder
    def open_review(self, rid: str, session: dict[str, Any], statement: str, rule: str, message: str,
                    settings: dict[str, Any], break_glass: bool) -> dict[str, Any]:
        self.pool.open_review(self.worker, rid, SessionInfo.from_summary(session), statement, rule, message,
                              _settings(settings), break_glass)
        return {}

    @p.WithdrawReview.responder
    def withdraw_review(self, rid: str) -> dict[str, Any]:
        self.pool.withdraw_review(rid)
        return {}

    @p.JournalEvent.responder
    def journal_event(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.pool.on_event is not None:
            self.pool.on_event(event)
        return {}


def _settings(d: dict[str, Any]) -> ReviewSettings:
    return ReviewSettings(**{**d, "reviewers": tuple(d["reviewers"]), "break_glass": tuple(d["break_glass"])})


class Worker(ProcessProtocol):
    """One worker process and its AMP channel."""

    def __init__(self, pool: "WorkerPool", index: int) -> None:
        self.pool = pool
        self.index = index
        self.link = SupervisorLink(self)
        self.ready = False
        self.started = 0.0
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.started = self.pool.reactor.seconds()
        self.link.makeConnection(_Stdin(self.transport))  # type: ignore[arg-type]

    def outReceived(self, data: bytes) -> None:
        self.link.dataReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self.link.connectionLost(reason)
        self.ready = False
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)

    def call(self, command: type[amp.Command], **kw: Any) -> Deferred[Any]:
        return self.link.callRemote(command, **kw)

    def send(self, command: type[amp.Command], **kw: Any) -> None:
        """callRemote whose failure (the worker gone) is logged, not raised."""
        send(self.link, f"worker {self.index}", command, kw)

    def signal(self, sig: int) -> None:
        try:
            self.transport.signalProcess(sig)  # type: ignore[union-attr]
        except Exception:  # (it is gone already)
            pass


class WorkerPool(service.Service):
    """Starts and restarts the workers; the supervisor's side of what they share."""

    name = "workers"

    def __init__(self, reactor: Any, count: int, config_path: str, listening: Callable[[], Any],
                 registry: SessionRegistry, reviews: Reviews, observers: list[Any],
                 grace: Callable[[], float], on_ready: Callable[[], None]) -> None:
        self.reactor = reactor
        self.count = count
        self.config_path = config_path
        self.listening = listening  # the bound postgres port (its socket is passed to each worker)
        self.registry = registry
        self.reviews = reviews
        self.observers = observers  # session Observers (the tracker): told of every worker's sessions
        self.grace = grace
        self.on_ready = on_ready
        self.on_event: Callable[[dict[str, Any]], None] | None = None  # live journal events of the workers
        self.tickets: Any = None  # MCP tickets (hoopd.mcp.tickets) the workers' ticket listeners redeem
        self.mcp_listening: Callable[[], Any] | None = None  # the bound MCP ticket port (passed as fd 4)
        self.workers: dict[int, Worker] = {}
        self._backoff: dict[int, float] = {}
        self._holds: dict[str, tuple[Hold, Worker]] = {}
        self._announced = False
        self.following = False  # the live journal has followers
        self.stopping = False

    # --- processes ----------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for i in range(1, self.count + 1):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        if self.stopping:
            return
        port = self.listening()
        fd = port.fileno()
        w = Worker(self, index)
        args = [sys.executable, "-m", "hoopd.workers.run", "--config", self.config_path, "--index", str(index),
                "--fd", "3", "--family", family_of(port)]
        fds: dict[int, Any] = {0: "w", 1: "r", 2: 2, 3: fd}
        mcp = self.mcp_listening() if self.mcp_listening is not None else None
        if mcp is not None:
            fds[4] = mcp.fileno()
            args += ["--mcp-fd", "4"]
        self.reactor.spawnProcess(w, sys.executable, args, env=os.environ.copy(), childFDs=fds)
        self.workers[index] = w

    def worker_ready(self, w: Worker) -> None:
        w.ready = True
        log.info("worker {i} serving (pid {pid})", i=w.index, pid=w.transport.pid)  # type: ignore[union-attr]
        if self.following:
            w.send(p.Follow, on=True)
        self._counts()
        if not self._announced and self.serving:
            self._announced = True
            self.on_ready()

    def worker_ended(self, w: Worker, reason: Failure) -> None:
        if self.workers.get(w.index) is w:
            del self.workers[w.index]
        for s in [s for s in self.registry if isinstance(s, RemoteSession) and s.worker is w]:
            self.session_ended(s.info, "worker exited")
        for rid, (hold, owner) in list(self._holds.items()):
            if owner is w:
                self.withdraw_review(rid)
        if self.stopping:
            return
        clean = reason.check(ProcessDone) is not None
        lived = self.reactor.seconds() - w.started
        delay = RESTART_FIRST if lived >= HEALTHY_AFTER else min(RESTART_MAX, self._backoff.get(w.index, 0) * 2
                                                                   or RESTART_FIRST)
        self._backoff[w.index] = delay
        log.error("worker {i} exited ({why}); its sessions ended; restarting it in {d:g}s", i=w.index,
                  why="cleanly" if clean else reason.getErrorMessage(), d=delay)
        self.reactor.callLater(delay, self._spawn, w.index)

    @property
    def serving(self) -> bool:
        """Every worker is up and serves."""
        return len(self.workers) == self.count and all(w.ready for w in self.workers.values())

    def others(self, w: Worker) -> list[Worker]:
        return [x for x in self.workers.values() if x is not w and x.ready]

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self.stopping = True
        waiting = [w.ended for w in self.workers.values()]
        for w in self.workers.values():
            w.signal(signal.SIGTERM)
        timer = self.reactor.callLater(self.grace() + KILL_AFTER, self._kill_left)
        d = defer.DeferredList(waiting)
        d.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return d

    def _kill_left(self) -> None:
        for w in self.workers.values():
            log.error("worker {i} did not stop in time; killing it", i=w.index)
            w.signal(signal.SIGKILL)

    # --- sessions -----------------------------------------------------------------------

    def session_started(self, w: Worker, info: SessionInfo) -> None:
        self.registry.add(RemoteSession(info, w))
        for o in self.observers:
            o.session_started(info)
        self._counts()

    def session_ended(self, info: SessionInfo, reason: str) -> None:
        live = self.registry.get(info.id)
        if live is None:
            return
        self.registry.remove(live)
        for o in self.observers:
            o.session_ended(info, reason)
        self._counts()

    def _counts(self) -> None:
        """Tell each worker how many live sessions the others have."""
        per: dict[Worker, int] = {}
        for s in self.registry:
            if isinstance(s, RemoteSession):
                per[s.worker] = per.get(s.worker, 0) + 1
        total = sum(per.values())
        for w in self.workers.values():
            if w.ready:
                w.send(p.OthersSessions, count=total - per.get(w, 0))

    def follow(self, on: bool) -> None:
        """Someone follows the live journal (or the last one stopped): workers send events."""
        self.following = on
        for w in self.workers.values():
            if w.ready:
                w.send(p.Follow, on=on)

    def reload(self, by: str) -> None:
        """Every worker re-reads the config file (a worker that rejects it logs why, and so does this)."""
        for w in self.workers.values():
            if w.ready:
                w.call(p.Reload, by=by).addCallbacks(
                    lambda got, w=w: got["error"] and log.error("worker {i}: reload rejected: {err}", i=w.index,
                                                                err=got["error"]),
                    lambda f, w=w: log.warn("worker {i}: reload failed: {err}", i=w.index, err=f.getErrorMessage()))

    # --- reviews ------------------------------------------------------------------------

    def open_review(self, w: Worker, rid: str, info: SessionInfo, statement: str, rule: str, message: str,
                    settings: ReviewSettings, break_glass: bool) -> None:
        if break_glass:
            self.reviews.break_glass(info, statement, rule, message, settings)
            return
        _, hold = self.reviews.open(info, statement, rule, message, settings, rid=rid)
        self._holds[rid] = (hold, w)

        def decided(verdict: Deny | None) -> None:
            if self._holds.pop(rid, None) is None:
                return
            if verdict is None:
                w.send(p.ReviewDecided, rid=rid, sqlstate=None, message=None)
            else:
                w.send(p.ReviewDecided, rid=rid, sqlstate=verdict.sqlstate, message=verdict.message)
        hold.addCallbacks(decided, lambda f: None)

    def withdraw_review(self, rid: str) -> None:
        held = self._holds.pop(rid, None)
        if held is not None:
            held[0].cancel()  # the request ends "withdrawn"

    def record(self, info: SessionInfo, kind: str, fields: dict[str, Any]) -> None:
        """A review's journal record, into its session's stream (in its worker)."""
        live = self.registry.get(info.id)
        if isinstance(live, RemoteSession):
            live.worker.send(p.Record, session=info.id, kind=kind, fields=fields)

    # --- metrics ------------------------------------------------------------------------

    @defer.inlineCallbacks
    def metrics(self) -> Any:
        """Every ready worker's /metrics text: [(index, text)]."""
        out = []
        for w in [w for w in self.workers.values() if w.ready]:
            parts, offset, total = [], 0, 1
            try:
                while offset < total:
                    got = yield w.call(p.Metrics, offset=offset)
                    parts.append(got["text"])
                    offset += len(got["text"])
                    total = got["total"]
                    if not got["text"]:
                        break
            except Exception as e:
                log.warn("worker {i}: metrics unavailable: {err}", i=w.index, err=e)
                continue
            out.append((w.index, b"".join(parts)))
        return out
