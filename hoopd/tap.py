"""twistd plugin entry: ``twistd -n hoopd --config FILE`` builds the service tree."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.python import usage

from hoopd.config import Config, load, warnings
from hoopd.confkit import ConfigError
from hoopd.control.activity import Activity
from hoopd.control.http import ControlSite
from hoopd.control.metrics import Metrics
from hoopd.control.plane import ControlPlane
from hoopd.control.ssh import make_factory as make_ssh_factory
from hoopd.control.tracker import SessionTracker
from hoopd.identity.chain import IdentityChain
from hoopd.journal.stage import JournalStage
from hoopd.journal.view import LiveJournal
from hoopd.journal.anchor import AnchorSink, anchor_file
from hoopd.journal.writer import JournalWriter
from hoopd.listener import AdoptedListener, Listener
from hoopd.log import configure, get_logger
from hoopd.policy.classify import default_classifier
from hoopd.policy.decide import Policy
from hoopd.policy.functions import CATALOG_QUERY, FunctionCatalogs
from hoopd.masking.rules import MaskingConfig
from hoopd.masking.relations import RELATIONS_QUERY, RelationCatalogs
from hoopd.alerts import Alerts, BurstSettings
from hoopd.review.grants import Grant, Grants, GrantStore, GrantsView
from hoopd.review.requests import Reviews, review_hint
from hoopd.review.stage import ReviewStage
from hoopd.masking.stage import MaskingStage
from hoopd.mcp.server import McpEndpoint
from hoopd.mcp.tickets import Tickets
from hoopd.policy.stage import PolicyStage
from hoopd.proxy.pipeline import Pipeline
from hoopd.proxy.catalog import catalog_loader
from hoopd.proxy.client import GatewayFactory
from hoopd.proxy.registry import SessionRegistry
from hoopd.sdnotify import Notifier, watchdog_service
from hoopd.session import SessionInfo, Stage
from hoopd.state.shared import SharedState
from hoopd.workers.child import RemoteReviews, RemoteTickets, WorkerRole, worker_node
from hoopd.workers.supervisor import Refuse, WorkerPool

log = get_logger("hoopd.tap")


class Options(usage.Options):
    synopsis = "--config FILE"
    longdesc = "Run the hoopd gateway (PostgreSQL listener, control port, SSH console)."
    optParameters = [["config", "c", "/etc/hoopd/hoopd.toml", "path to the hoopd TOML config"]]

    def postOptions(self) -> None:
        try:
            self["loaded"] = load(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


class GatewayService(service.MultiService):
    """The root of the tree: owns the registry, the postgres factory and the control plane.

    Listeners are named services (postgres, http, ssh). READY=1 goes to systemd once all
    are bound; ``reload`` re-reads the config (SIGHUP, console, API); stopping first
    closes the postgres listener, gives live sessions ``[control].shutdown_grace``, ends
    the rest with 57P01, then stops every child (journal last to first).

    Three shapes: one process (the default); with ``[gateway] workers`` > 1 the supervisor
    (the control plane, reviews, grants, the sockets; no data path: hoopd.workers) and, in
    each worker process, the data path without the control plane (``worker``).
    """

    def __init__(self, config: Config, reactor: Any, notifier: Notifier | None = None,
                 worker: WorkerRole | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.notifier = notifier or Notifier(None)
        self.stopping = False
        self.worker = worker  # this process is one of [gateway] workers (hoopd.workers.child)
        supervising = worker is None and config.gateway.workers > 1
        node = worker_node(config.gateway.node, worker.index) if worker else config.gateway.node
        self.registry = SessionRegistry()
        self.identity = IdentityChain(config.identity, reactor)
        self.identity.setServiceParent(self)  # before the listeners: it owns the LDAP pool
        tracker = SessionTracker(reactor)
        self.metrics = metrics = Metrics(self.registry, tracker, identity_failures=lambda: self.identity.failures,
                                         policy_cache_stats=default_classifier.stats)
        self.activity = metrics.activity = Activity(reactor, lambda: len(self.registry))
        self.journal: JournalStage | None = None
        self.writer: JournalWriter | None = None
        view = None
        if config.journal.dir:  # the writer starts before the listeners and stops after them
            sink = AnchorSink(anchor_file(config.gateway.state_dir, node), config.journal.anchor_syslog)
            self.writer = writer = JournalWriter(config.journal, node, reactor, anchor=sink)
            writer.anchored_hooks.append(metrics.journal_anchored)
            writer.written_hooks.append(lambda rec, nbytes, seconds: metrics.journal_written(seconds, nbytes))
            writer.failed_hooks.append(lambda err: metrics.journal_failed())
            writer.setServiceParent(self)
            if not supervising:  # (the supervisor's own stream has only its admin records)
                self.journal = JournalStage(writer, config.journal)
            view = LiveJournal(writer, reactor)
        self.pool: WorkerPool | None = None
        self.mcp: McpEndpoint | None = None
        self.shared: SharedState | None = None
        if worker is not None:
            worker.link.reviews.where = review_hint(config)
            self.reviews: Reviews | RemoteReviews = worker.link.reviews
        else:
            self.reviews = Reviews(reactor, self._session_record, where=review_hint(config), redact=self._redact)
            self.reviews.listeners.append(metrics.review)
        self.alerts = Alerts(config.alerts, reactor, config.gateway.node, bursts=config.bursts or BurstSettings())
        self.grants = self._grants(config, reactor)
        self._listeners: dict[str, Listener] = {}
        if supervising:
            self.pool = WorkerPool(reactor, config.gateway.workers, config.source,
                                   lambda: self._listeners["postgres"].port, self.registry, self.reviews, [tracker],
                                   lambda: self.config.control.shutdown_grace, self._workers_ready)
            self.pool.setServiceParent(self)
            self._listen("postgres", config.listen.postgres, Refuse(), accept=False)
            if config.mcp.enabled:  # calls log in to the workers' ticket listener (fd 4), tickets redeemed here
                self.pool.tickets = Tickets(reactor)
                self._listen("mcp", "tcp:0:interface=127.0.0.1", Refuse(), accept=False)
                self.pool.mcp_listening = lambda: self._listeners["mcp"].port
                self._mcp_endpoint(reactor, self.pool.tickets)
        else:
            self._data_path(config, reactor, metrics, tracker, worker)
        if worker is not None:
            return
        if self.shared is not None:
            self.shared.setServiceParent(self)
        if isinstance(self.reviews, Reviews):
            self.reviews.listeners.append(lambda event, req: self.alerts.event(f"review.{event}", req.summary()))
        if isinstance(self.grants, Grants):
            self.grants.listeners.append(lambda event, g: self.alerts.event(f"grant.{event}", g.summary()))
        self.control = ControlPlane(self, reactor, journal=view, token_verifier=self.identity,
                                    tracker=tracker, metrics=metrics,
                                    worker_metrics=self.pool.metrics if self.pool is not None else None,
                                    mcp=self.mcp, shared=self.shared, activity=self.activity)
        if self.pool is not None and view is not None:
            self.pool.on_event = view.publish
            view.following_hooks.append(self.pool.follow)
        if isinstance(self.grants, Grants):
            self.grants.listeners.append(self.control.grant_changed)
        if config.listen.http:
            self._listen("http", config.listen.http, ControlSite(self.control))
        if config.listen.ssh:
            self._listen("ssh", config.listen.ssh, make_ssh_factory(self.control))

    def _data_path(self, config: Config, reactor: Any, metrics: Metrics, tracker: SessionTracker,
                   worker: WorkerRole | None) -> None:
        """Policy, masking, review and journal stages, and the postgres listener."""
        record = self.journal.record if self.journal else None  # policy decisions and tripwire ends, in sequence
        functions = FunctionCatalogs(catalog_loader(reactor, lambda: self.config, CATALOG_QUERY, "function catalog"),
                                     reactor, max_age=config.functions.catalog_max_age)
        self.policy = PolicyStage(Policy.from_config(config), default_classifier, record=record,
                                  count=metrics.statement, max_statement_bytes=config.max_statement_bytes,
                                  functions=functions)
        if not config.policy_enabled:
            log.warn("[policy] enabled = false: statements are not checked against access levels or rules"
                     " (read_only sessions still run read-only upstream)")
        # masking only when rules exist at start: its stage makes the relay read every row
        self.masking = None
        if config.masking:
            relations = RelationCatalogs(catalog_loader(reactor, lambda: self.config, RELATIONS_QUERY,
                                                        "relation catalog"), reactor,
                                         max_age=config.masking.catalog_max_age)
            self.masking = MaskingStage(config.masking, record, metrics.masked, relations)
        self.policy.reviewing = True
        stages: list[Stage] = (([self.policy] if config.policy_enabled else []) + ([self.journal] if self.journal else [])
                               + ([self.masking] if self.masking else []) + [ReviewStage(self.reviews)])
        if config.state is not None and isinstance(self.reviews, Reviews):
            self.shared = SharedState(config.state, config.gateway.node, reactor, self.registry, self.reviews,
                                      self.identity, self.grants if isinstance(self.grants, Grants) else None)
            self.identity.outcome_hooks.append(self.shared.login_outcome)
        observers: list[Any] = ([tracker, self.alerts, self.activity] + ([worker.link] if worker else [])
                                + ([self.shared] if self.shared is not None else []))
        self.factory = GatewayFactory(config, self.registry, reactor, pipeline=Pipeline(stages, observers),
                                      identity=self.identity,
                                      metrics=metrics, record=record, grants=self.grants,
                                      alert=self.alerts.event, on_login_failed=self.alerts.login_failed)
        if self.shared is not None:
            self.factory.cancel_elsewhere = self.shared.cancel
            self.factory.grants = _SharedGrants(self.shared) if isinstance(self.grants, Grants) else None
        if worker is None:
            self._listen("postgres", config.listen.postgres, self.factory)
            if config.mcp.enabled:
                tickets = Tickets(reactor)
                self._listen("mcp", "tcp:0:interface=127.0.0.1",
                             self._ticket_factory(config, reactor, stages, observers, metrics, record, tickets))
                self._mcp_endpoint(reactor, tickets)
            return
        link = worker.link
        self.factory.worker = worker.index
        self.factory.live_sessions = lambda: len(self.registry) + link.others
        self.factory.cancel_elsewhere = link.cancel_elsewhere
        self.identity.outcome_hooks.append(link.login_outcome)
        if self.writer is not None:
            self.writer.written_hooks.append(link.journal_written)
        self._adopt("postgres", worker.fd, worker.family, self.factory)
        if worker.mcp_fd is not None:
            mcp = self._ticket_factory(config, reactor, stages, observers, metrics, record, RemoteTickets(link))
            mcp.worker, mcp.live_sessions = worker.index, self.factory.live_sessions
            self._adopt("mcp", worker.mcp_fd, socket.AF_INET, mcp)

    def _adopt(self, name: str, fd: int, family: int, factory: Any) -> None:
        svc = AdoptedListener(self.reactor, fd, family, factory)
        svc.setName(name)
        svc.setServiceParent(self)
        self._listeners[name] = svc

    def _ticket_factory(self, config: Config, reactor: Any, stages: list[Stage], observers: list[Any],
                        metrics: Metrics, record: Any, tickets: Any) -> GatewayFactory:
        """The MCP endpoint's loopback listener's factory: the same stages, logins by one-time
        ticket only."""
        factory = GatewayFactory(config, self.registry, reactor, pipeline=Pipeline(stages, observers),
                                 identity=self.identity, metrics=metrics, record=record, grants=self.grants,
                                 alert=self.alerts.event, on_login_failed=self.alerts.login_failed)
        factory.tickets = tickets
        self.mcp_factory = factory
        return factory

    def _mcp_endpoint(self, reactor: Any, tickets: Tickets) -> None:
        """/mcp, whose calls log in to the "mcp" listener with ``tickets``."""
        def port() -> int | None:
            p = self._listeners["mcp"].port
            return p.getHost().port if p is not None else None
        self.mcp = McpEndpoint(reactor, lambda: self.config, port, tickets, self.grants)

    def _session_record(self, info: SessionInfo, kind: str, fields: dict[str, Any]) -> None:
        """A record of another part (a review step) into a session's journal sequence:
        this process's journal, or the stream of the worker that serves the session."""
        if self.pool is not None:
            self.pool.record(info, kind, fields)
        elif self.journal is not None:
            self.journal.record(info, kind, fields)

    def _workers_ready(self) -> None:
        self.notifier.ready("serving " + ", ".join(f"{k} on {v}" for k, v in self.listeners().items())
                            + f" with {self.config.gateway.workers} workers")

    def _redact(self, info: SessionInfo, text: str) -> str:
        """A statement as reviewers see it: what the session's masking detectors find, redacted."""
        masking = self.config.masking
        ident = info.identity
        masker = masking.masker(info.level, ident.name if ident else None, ident.groups if ident else (),
                                info.application_name, info.connection) if masking else None
        return masker.redact(text) if masker is not None and masker.detecting else text

    def _grants(self, config: Config, reactor: Any) -> Grants | GrantsView | None:
        """The access grants, kept in [gateway] state_dir (None, logged, when it cannot be opened:
        then nobody gets a grant); a worker only reads them."""
        def settings(name: str) -> tuple[tuple[str, ...], float] | None:
            conn = self.config.connections.get(name)
            return (conn.grant_reviewers, conn.max_grant) if conn is not None else None

        def end_sessions(grant: Grant, why: str) -> None:
            for s in list(self.registry):
                if s.info.grant == grant.id:
                    self.registry.kill(s.info.id, why, "grants")

        path = Path(config.gateway.state_dir) / "grants.sqlite"
        try:
            if self.worker is not None:
                return GrantsView(GrantStore(path), reactor)
            return Grants(GrantStore(path), reactor, settings, end_sessions)
        except (OSError, sqlite3.Error) as e:
            log.error("access grants are off: cannot open {path}: {err}", path=str(path), err=e)
            return None

    def _listen(self, name: str, description: str, factory: Any, accept: bool = True) -> None:
        svc = Listener(self.reactor, description, factory, accept=accept)
        svc.setName(name)
        svc.setServiceParent(self)
        self._listeners[name] = svc

    def listeners(self) -> dict[str, str | None]:
        """Listener name -> "host:port" it is bound to, or None while it is not."""
        def show(port: Any) -> str | None:
            if port is None:
                return None
            a = port.getHost()
            return f"{a.host}:{a.port}" if hasattr(a, "port") else str(a)
        found = {name: show(svc.port) for name, svc in self._listeners.items()}
        if self.pool is not None and not self.pool.serving:  # postgres serves once every worker does
            found["postgres"] = None
        return found

    def startService(self) -> None:
        super().startService()
        if self.pool is not None:
            return  # ready once every worker serves (_workers_ready)
        bound = defer.gatherResults([svc.bound for svc in self._listeners.values()], consumeErrors=True)
        bound.addCallbacks(lambda _: self.notifier.ready(
            "serving " + ", ".join(f"{k} on {v}" for k, v in self.listeners().items())), lambda f: None)

    def reload(self, by: str = "SIGHUP") -> str | None:
        """Re-read the config file: None when applied to new sessions, else why it was rejected."""
        self.notifier.reloading()
        try:
            new = load(self.config.source)
        except ConfigError as e:
            log.error("reload ({by}) rejected, keeping the running config: {err}", by=by, err=str(e))
            self.notifier.ready("reload rejected; running the previous config")
            return str(e)
        moved = [f"listen.{k}" for k in ("postgres", "http", "ssh")
                 if getattr(new.listen, k) != getattr(self.config.listen, k)]
        if new.policy_enabled != self.config.policy_enabled:
            moved.append("policy.enabled")
        if new.gateway.workers != self.config.gateway.workers:
            moved.append("gateway.workers")
        if new.masking is not None and self.config.masking is None:
            moved.append("masking.rules (the first ones)")
        if moved:
            log.warn("reload: {keys} changed; that takes a restart", keys=", ".join(moved))
        try:
            self._apply(new)
        except Exception as e:  # a part refused what load() accepted: say so, keep serving
            log.failure("reload ({by}): applying the new config failed", by=by)
            self.notifier.ready("reload failed")
            return f"applying the new config failed: {e}"
        log.info("config reloaded ({by}) from {src}: {n} connections, {u} local users", by=by, src=new.source,
                 n=len(new.connections), u=len(new.users))
        if self.pool is not None:
            self.pool.reload(by)
        _warn(new)
        self.notifier.ready("config reloaded")
        return None

    def _apply(self, new: Config) -> None:
        """Hand a validated config to every part that keeps one (new sessions use it)."""
        configure(new.logging.level, new.logging.levels)
        self.config = new
        self.identity.reconfigure(new.identity)
        self.alerts.configure(new.alerts)
        if self.pool is not None:  # the supervisor: the workers apply the rest themselves
            if self.writer is not None:
                self.writer.reconfigure(new.journal)
            return
        self.factory.reconfigure(new)
        if self.mcp is not None:
            self.mcp_factory.reconfigure(new)
        self.policy.policy = Policy.from_config(new)
        self.policy.max_statement_bytes = new.max_statement_bytes
        if self.policy.functions is not None:
            self.policy.functions.max_age = new.functions.catalog_max_age
        if self.journal is not None:
            self.journal.reconfigure(new.journal)
        if self.masking is not None:
            self.masking.config = new.masking or MaskingConfig()
            if self.masking.relations is not None:
                self.masking.relations.max_age = self.masking.config.catalog_max_age

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.stopping = True
        self.notifier.stopping()
        if self.pool is not None:  # the workers drain their sessions themselves
            yield super().stopService()
            if self.grants is not None:
                self.grants.store.close()
            return
        yield self._listeners["postgres"].stopService()  # stop accepting clients
        yield self._drain(self.config.control.shutdown_grace)
        if len(self.registry):
            log.info("shutdown: ending {n} sessions still open after the grace period", n=len(self.registry))
            for s in self.registry:
                s.kill("the gateway is shutting down", "shutdown")
            yield self._drain(5.0)  # their 57P01 errors get written out
        yield super().stopService()
        if self.grants is not None:
            self.grants.store.close()

    @defer.inlineCallbacks
    def _drain(self, seconds: float) -> Any:
        """Wait until no session is live, for at most ``seconds``."""
        deadline = self.reactor.seconds() + seconds
        if len(self.registry):
            log.info("shutdown: waiting up to {s:g}s for {n} live sessions", s=seconds, n=len(self.registry))
        while len(self.registry) and self.reactor.seconds() < deadline:
            yield task.deferLater(self.reactor, min(0.1, max(deadline - self.reactor.seconds(), 0)), lambda: None)


@dataclass(frozen=True)
class _SharedGrants:
    """The grants a login may use on one of several nodes (hoopd.state)."""

    shared: SharedState

    def level(self, user: str, connection: str) -> tuple[str, str] | None:
        return self.shared.grant_level(user, connection)


def _warn(config: Config) -> None:
    """A shared upstream role for read_only, secret files others may read, a missing SSH
    keys file (hoopd.config.warnings)."""
    for w in warnings(config):
        log.warn("{warning}", warning=w)


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    config: Config = options["loaded"]
    configure(config.logging.level, config.logging.levels)
    config = replace(config, source=os.path.abspath(options["config"]))  # reload finds it after a chdir
    log.info("hoopd starting: node {node}, {n} connections, postgres on {ep}", node=config.gateway.node,
             n=len(config.connections), ep=config.listen.postgres)
    _warn(config)
    notifier = Notifier.from_environ()
    try:
        gw = GatewayService(config, reactor, notifier)
    except ConfigError as e:  # e.g. no SSH host key: a clear line, not a traceback
        raise SystemExit(f"hoopd: {e}") from None
    watchdog = watchdog_service(notifier, reactor)
    if watchdog is not None:
        watchdog.setServiceParent(gw)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(gw.reload, "SIGHUP"))
    return gw
