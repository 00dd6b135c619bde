"""The client-facing protocol: preamble, TLS, authentication, authorization, then relay.

One ClientProtocol per client connection. States: ``preamble`` (untyped packets:
SSLRequest, GSSENCRequest, CancelRequest, StartupMessage; direct TLS), ``auth``
(SCRAM-SHA-256 for local accounts, cleartext password inside TLS for the password
sources), ``connecting`` (logging in upstream with the held credential), ``relay``.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import struct
import uuid
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure

from hoopd.config import WILDCARD, Config
from hoopd.identity.base import AuthError, Identity
from hoopd.names import name_key
from hoopd.identity.chain import IdentityChain
from hoopd.log import get_logger
from hoopd.pgwire import errors as pe
from hoopd.pgwire import messages as m
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.framing import read_packet
from hoopd.pgwire.scram import ScramFailure, ScramServerExchange, mock_verifier, parse_verifier
from hoopd.pgwire.types import FE
from hoopd.proxy.params import upstream_params
from hoopd.proxy.pipeline import Pipeline, SessionStages
from hoopd.proxy.registry import SessionRegistry
from hoopd.proxy.relay import BufferBudget, Relay
from hoopd.proxy.reported import login_problems, problem
from hoopd.proxy.tls import ALPN, negotiated_alpn, server_options, tls_version
from hoopd.proxy.upstream import UpstreamError, UpstreamProtocol, connect_upstream, send_cancel
from hoopd.review.grants import Grants, session_level
from hoopd.session import EndSession, SessionInfo

log = get_logger("hoopd.proxy")
_I32 = struct.Struct("!i")
MAX_AUTH_MESSAGE = 65_536
MAX_MINOR = 2  # we speak 3.0 and 3.2


class LoginMetrics(Protocol):
    """What the proxy reports about logins (the control plane's metrics implement it)."""

    def login_failed(self, reason: str) -> None: ...

    def upstream_connected(self, connection: str, seconds: float) -> None: ...

    def tripwire(self, setting: str) -> None: ...


class GatewayFactory(Factory):
    """Shared state for all client connections: config, registry, stages, authenticators."""

    def __init__(self, config: Config, registry: SessionRegistry, reactor: Any,
                 pipeline: Pipeline | None = None, identity: IdentityChain | None = None,
                 metrics: LoginMetrics | None = None,
                 record: Callable[[SessionInfo, str, dict[str, Any]], None] | None = None,
                 grants: Grants | None = None,
                 alert: Callable[[str, dict[str, Any]], None] | None = None,
                 on_login_failed: Callable[[str, str, str], None] | None = None) -> None:
        self.registry = registry
        self.alert = alert  # events for the webhooks (hoopd.alerts): the tripwire
        self.on_login_failed = on_login_failed  # (peer, user, why) of each failed authentication
        self.grants = grants  # time-boxed access grants that raise a user's level (None: none)
        self.reactor = reactor
        self.pipeline = pipeline or Pipeline()
        self.identity = identity or IdentityChain(config.identity, reactor)
        self.metrics = metrics
        self.record = record  # journals tripwire ends
        self.budget = BufferBudget(config.gateway.max_buffered_bytes)
        # as one of [gateway] workers (hoopd.workers.child): its index, the live sessions of all
        # workers, and who else may know a cancel key
        self.worker: int | None = None
        self.live_sessions: Callable[[], int] = lambda: len(registry)
        self.cancel_elsewhere: Callable[[int, bytes], Deferred[bool]] | None = None
        self.tickets: Any = None  # the MCP loopback listener: logins by one-time ticket (hoopd.mcp.tickets) only
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """New sessions use the new config; live ones keep theirs."""
        self.config = config
        self.tls_options = server_options(config.tls)
        self.budget.cap = config.gateway.max_buffered_bytes

    def buildProtocol(self, addr: Any) -> "ClientProtocol":
        p = ClientProtocol(self)
        p.factory = self
        return p


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientProtocol(TwistedProtocol):
    def __init__(self, factory: GatewayFactory) -> None:
        self.gw = factory
        self.config = factory.config
        self.buf = bytearray()
        self.state = "preamble"
        self.tls = False
        self.direct_tls = False
        self.relay: Relay | None = None
        self.stages: SessionStages | None = None  # opened with the session
        self.upstream: UpstreamProtocol | None = None
        self.info: SessionInfo | None = None
        self.startup: m.Startup | None = None
        self.identity: Identity | None = None
        self._scram: ScramServerExchange | None = None
        self._scram_started = False
        self._timeout: Any = None
        self._end_reason: str | None = None
        self._registered = False
        self._had_data = False
        self._connect_started = 0.0
        self._login_settings: dict[str, str] = {}

    # --- lifecycle --------------------------------------------------------------------

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):  # small replies must not wait for a delayed ACK
            self.transport.setTcpNoDelay(True)
        peer = self.transport.getPeer()
        self.peer_host = getattr(peer, "host", "?")
        self.info = SessionInfo(id=uuid.uuid4().hex[:16], peer=f"{self.peer_host}:{getattr(peer, 'port', '')}",
                                started=self.gw.reactor.seconds(), worker=self.gw.worker)
        self._timeout = self.gw.reactor.callLater(self.config.gateway.login_timeout, self._login_timeout)

    def _login_timeout(self) -> None:
        self._timeout = None
        log.info("session {sid} from {peer}: login timed out", sid=self.info.id, peer=self.info.peer)
        self._refuse_login("08006", "hoopd: login timed out", "login_timeout")

    def _cancel_timeout(self) -> None:
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timeout()
        self.state = "closing"
        try:
            up = self.upstream
            if self.relay is not None:
                if up is not None and up.connected:
                    self.relay.stop(client=False)
                if not self.relay.quiet and not self.relay.terminated:
                    self.cancel_upstream()  # the client left mid-query: stop the work it asked for
            if up is not None and up.connected:
                up.on_lost = None
                if self.relay is None or not self.relay.terminated:
                    up.transport.write(m.TERMINATE)
                up.transport.loseConnection()
        finally:
            self._end(self._end_reason or ("client terminate" if self.relay and self.relay.terminated
                                            else "client disconnect"))

    def _end(self, reason: str) -> None:
        if self._registered:
            self._registered = False
            self.gw.registry.remove(self)
            if self.stages is not None:
                self.stages.close(reason)
            log.info("session {sid} ended: {reason}", sid=self.info.id, reason=reason)
        elif self.state == "preamble" and not self._had_data:
            log.debug("connection from {peer} closed before a startup packet", peer=self.info.peer)

    def _refuse_login(self, sqlstate: str, message: str, reason: str) -> None:
        """End a login the identity chain did not refuse (it counts its own), counting why."""
        if self.gw.metrics is not None:
            self.gw.metrics.login_failed(reason)
        self._fatal(sqlstate, message, reason=reason.replace("_", " "))

    def _fatal(self, sqlstate: str, message: str, reason: str | None = None, detail: str | None = None) -> None:
        self._end_reason = reason or message
        if self.relay is not None:
            self.relay.stop()
        self.transport.write(m.error_response(sqlstate, message, severity="FATAL", detail=detail))
        self.transport.loseConnection()
        self.state = "closing"

    # --- session API used by the registry ---------------------------------------------

    def kill(self, reason: str, by: str) -> None:
        log.info("session {sid} killed by {by}: {reason}", sid=self.info.id, by=by, reason=reason)
        self._fatal(pe.ADMIN_SHUTDOWN, "terminating connection due to administrator command",
                    reason=f"killed by {by}: {reason}", detail=reason or None)

    def cancel_upstream(self) -> Deferred[None]:
        """Cancel what the upstream backend runs; fires (never fails) once the server has
        processed the request, or at once when there is no upstream to cancel."""
        relay = self.relay
        if relay is not None and relay.withdraw() and relay.quiet:
            return succeed(None)  # only the held statement was waiting: nothing runs upstream
        if self.upstream is None or self.upstream.key is None:
            return succeed(None)
        pid, secret = self.upstream.key
        d = send_cancel(self.gw.reactor, self.connection_config, pid, secret)
        d.addErrback(lambda f: log.warn("session {sid}: cancel upstream failed: {err}",
                                        sid=self.info.id, err=f.getErrorMessage()))
        return d

    # --- bytes in ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._had_data = True
        if self.state == "closing":
            return
        if self.relay is not None:
            try:
                self.relay.client_data(data)
            except ProtocolError as e:
                self._protocol_error(e)
            except EndSession as e:
                self._ended_by(e)
            except Exception:
                self._internal_error("client data")
            return
        self.buf += data
        try:
            if self.state == "preamble":
                self._preamble()
            elif self.state == "auth":
                self._auth_messages()
        except ProtocolError as e:
            self._protocol_error(e)

    def _server_data(self, data: bytes) -> None:
        if self.state == "closing":
            return
        try:
            self.relay.server_data(data)
        except EndSession as e:
            self._ended_by(e)
        except Exception:  # malformed server bytes or a stage's bug: end this session only
            self._internal_error("server data")

    def _ended_by(self, e: EndSession) -> None:
        self._fatal(e.sqlstate, e.message, reason=e.reason)  # _end logs and journals the reason

    def _internal_error(self, where: str) -> None:
        log.failure("session {sid}: internal error handling {where}; session ended", sid=self.info.id, where=where)
        self._fatal("XX000", "hoopd: internal error; the session was ended (details in the gateway log)",
                    reason=f"internal error ({where})")

    def _protocol_error(self, e: ProtocolError) -> None:
        log.info("session {sid} from {peer}: protocol error: {err}", sid=self.info.id, peer=self.info.peer, err=str(e))
        if self.relay is None and self.gw.metrics is not None:
            self.gw.metrics.login_failed("protocol_error")
        self._fatal(e.sqlstate, str(e), reason=f"protocol error: {e}")

    def _preamble(self) -> None:
        while self.state == "preamble" and self.buf:
            if self.buf[0] == 0x16 and not self.tls:
                self._start_direct_tls()
                return
            pkt = read_packet(self.buf)
            if pkt is None:
                return
            n, body = pkt
            del self.buf[:n]
            (code,) = _I32.unpack_from(body, 0)
            if code == m.SSL_REQUEST:
                self._ssl_request()
            elif code == m.GSSENC_REQUEST:
                self.transport.write(b"N")
            elif code == m.CANCEL_REQUEST:
                self._cancel_request(body[4:])
                return
            elif code >> 16 == 3:
                self._startup(m.decode_startup(body))
            else:
                raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}:"
                                    f" server supports 3.0 to 3.{MAX_MINOR}", pe.FEATURE_NOT_SUPPORTED)

    def _ssl_request(self) -> None:
        if self.tls:
            raise ProtocolError("duplicate SSLRequest")
        if self.buf:  # CVE-2021-23214: nothing may be pipelined before the handshake
            raise ProtocolError("received unencrypted data after SSL request")
        if self.gw.tls_options is None:
            self.transport.write(b"N")
            return
        self.transport.write(b"S")
        self.transport.startTLS(self.gw.tls_options)
        self.tls = True

    def _start_direct_tls(self) -> None:
        if self.gw.tls_options is None:
            log.info("session {sid} from {peer}: direct TLS attempted but TLS is off",
                     sid=self.info.id, peer=self.info.peer)
            self.transport.loseConnection()
            self.state = "closing"
            return
        hello, self.buf = bytes(self.buf), bytearray()
        self.transport.startTLS(self.gw.tls_options)
        self.tls = self.direct_tls = True
        self.transport.protocol.dataReceived(hello)  # the ClientHello we already read

    def _cancel_request(self, body: bytes) -> None:
        """Forward a CancelRequest; this connection closes once PostgreSQL has processed it
        (a client that waits for the close, as libpq and asyncpg do, may then rely on its
        next statement not being the one cancelled)."""
        self.state = "closing"
        self._cancel_timeout()
        target = None
        if 8 <= len(body) <= 260:
            (pid,) = _I32.unpack_from(body, 0)
            target = self.gw.registry.by_cancel_key(pid, body[4:])
            if target is None and self.gw.cancel_elsewhere is not None:  # another worker's session?
                d = self.gw.cancel_elsewhere(pid, body[4:])
                d.addCallback(lambda found: found or log.debug("cancel request with an unknown key from {peer}",
                                                               peer=self.info.peer))
                d.addBoth(lambda _: self.transport.loseConnection())
                return
        if target is None:
            log.debug("cancel request with an unknown key from {peer}", peer=self.info.peer)
            self.transport.loseConnection()
            return
        log.info("session {sid}: cancel request from {peer}", sid=target.info.id, peer=self.info.peer)
        target.cancel_upstream().addBoth(lambda _: self.transport.loseConnection())

    # --- startup and authentication -----------------------------------------------------

    def _startup(self, st: m.Startup) -> None:
        self.startup = st
        cfg = self.config
        if self.direct_tls and negotiated_alpn(self.transport) != ALPN:
            raise ProtocolError("direct TLS connection without ALPN \"postgresql\"")
        minor = st.version & 0xFFFF
        self.info.protocol = (3, min(minor, MAX_MINOR) if minor != 1 else 0)
        if minor > MAX_MINOR or st.unknown_options:
            self.transport.write(m.negotiate_protocol_version(min(minor, MAX_MINOR), st.unknown_options))
        if self.tls:
            self.info.tls = tls_version(self.transport)
        user = st.params["user"]
        self.info.application_name = st.params.get("application_name", "")
        if cfg.tls.mode == "require" and not self.tls and self.gw.tickets is None:  # (tickets: loopback only)
            raise ProtocolError("hoopd: TLS is required; connect with sslmode=require", pe.INVALID_AUTHORIZATION)
        if "replication" in st.params and st.params["replication"].lower() not in ("false", "off", "no", "0"):
            raise ProtocolError("hoopd: replication connections are not supported", pe.INVALID_AUTHORIZATION)
        self.state = "auth"
        chain = self.gw.identity
        limited = chain.check_rate(user, self.peer_host)
        if limited is not None:
            self._auth_failed(limited)
            return
        local = cfg.users.get(name_key(user)) if chain.local_accounts else None
        if self.gw.tickets is not None:
            self.transport.write(m.auth_cleartext())  # (a loopback listener of this process)
        elif local is not None or not chain.sources:
            verifier = parse_verifier(local.password_hash) if local else mock_verifier()
            self._scram = ScramServerExchange(verifier)
            self.transport.write(m.auth_sasl(["SCRAM-SHA-256"]))
        elif self.tls or (cfg.tls.allow_cleartext_loopback and _is_loopback(self.peer_host)):
            self.transport.write(m.auth_cleartext())
        else:
            raise ProtocolError(f"hoopd: password sign-in for \"{user}\" needs TLS; connect with sslmode=require",
                                pe.INVALID_AUTHORIZATION)
        if self.buf:
            self._auth_messages()

    def _auth_messages(self) -> None:
        while self.state == "auth" and len(self.buf) >= 5:
            (n,) = _I32.unpack_from(self.buf, 1)
            if self.buf[0] != FE.PASSWORD:
                raise ProtocolError(f"expected password response, got message type {chr(self.buf[0])!r}")
            if n < 4 or n > MAX_AUTH_MESSAGE:
                raise ProtocolError(f"invalid password packet length {n}")
            if len(self.buf) < n + 1:
                return
            body = bytes(self.buf[5:n + 1])
            del self.buf[:n + 1]
            log.trace("session {sid} client p (password message, {n} bytes, redacted)", sid=self.info.id, n=n)
            self._password_message(body)

    def _auth_failed(self, err: AuthError) -> None:
        """Refuse the login (the identity chain has already counted it, or counts it here for SCRAM)."""
        user = self.startup.params["user"]
        log.info("session {sid} from {peer}: authentication failed for {user}: {why}",
                 sid=self.info.id, peer=self.info.peer, user=user, why=err.reason)
        if self.gw.on_login_failed is not None:
            self.gw.on_login_failed(self.info.peer, user, err.reason)
        self._fatal(err.sqlstate, err.message, reason=f"auth failed: {err.reason}")

    def _password_message(self, body: bytes) -> None:
        user = self.startup.params["user"]
        bad = AuthError(f'password authentication failed for user "{user}"')
        if self._scram is not None:
            try:
                if not self._scram_started:
                    mech, data = m.decode_sasl_initial(body)
                    if mech != "SCRAM-SHA-256":
                        raise ProtocolError(f"client selected an invalid SASL authentication mechanism {mech!r}",
                                            pe.INVALID_AUTHORIZATION)
                    self._scram_started = True
                    self.transport.write(m.auth_sasl_continue(self._scram.client_first(data)))
                    return
                final = self._scram.client_final(body)
                u = self.config.users.get(name_key(user)) if self.gw.identity.local_accounts else None
                if u is None:
                    raise ScramFailure("no such local user")  # a mock exchange: same answer as a bad password
            except ScramFailure:
                self.gw.identity.failed(user, self.peer_host, bad)
                self._auth_failed(bad)
                return
            self.transport.write(m.auth_sasl_final(final))
            identity = Identity(u.name, u.groups, "local", typed=user if user != u.name else None)
            self.gw.identity.succeeded(identity, self.peer_host)
            self._authenticated(identity)
            return
        password = m.decode_password(body)
        if self.gw.tickets is not None:  # (redeemed here, or by the supervisor of workers)
            self.state = "checking"
            d = maybeDeferred(self.gw.tickets.redeem, user, password)
            d.addCallback(lambda ident: self._authenticated(ident) if ident is not None
                          else self._auth_failed(AuthError(f'hoopd: no valid ticket for "{user}"')))
            return
        self.state = "checking"
        d = self.gw.identity.authenticate(user, password, self.peer_host)
        d.addCallbacks(self._authenticated, lambda f: self._auth_failed(
            f.value if f.check(AuthError) else AuthError("hoopd: authentication unavailable", "28000", "error")))

    def _authenticated(self, identity: Identity) -> None:
        if self.state == "closing":
            return
        self.identity = identity
        self.info.identity = identity
        name = self.startup.params.get("database") or self.startup.params["user"]
        conn = self.config.connections.get(name)
        if conn is None and WILDCARD in self.config.connections:
            conn = dataclasses.replace(self.config.connections[WILDCARD], database=name)
        if conn is None:
            self._refuse_login(pe.INVALID_CATALOG, f'hoopd: no connection named "{name}"', "unknown_connection")
            return
        level, grant = session_level(conn, identity, self.gw.grants)
        if grant is not None:
            self.info.grant = grant
        if level is None:
            self._refuse_login(pe.INVALID_AUTHORIZATION,
                               f'hoopd: user "{identity.name}" has no access to connection "{conn.name}"', "no_access")
            return
        if self.gw.live_sessions() >= self.config.gateway.max_sessions:
            self._refuse_login(pe.TOO_MANY_CONNECTIONS, "hoopd: too many sessions", "too_many_sessions")
            return
        self.connection_config = conn
        self.info.connection, self.info.level, self.info.database = conn.name, level, conn.database
        self.transport.write(m.auth_ok())
        self.state = "connecting"
        params, dropped = upstream_params(self.startup.params, read_only=(level == "read_only"),
                                         admin=(level == "admin"))
        if dropped:
            log.info("session {sid}: startup parameters not forwarded: {names}", sid=self.info.id,
                     names=", ".join(dropped))
        self._connect_started = self.gw.reactor.seconds()
        d: Deferred = connect_upstream(self.gw.reactor, conn, conn.credential_for(level), params)
        d.addCallbacks(self._upstream_ready, self._upstream_failed)

    def _upstream_failed(self, f: Failure) -> None:
        err = f.value if f.check(UpstreamError) else f.getErrorMessage()
        log.warn("session {sid}: upstream for connection {conn} failed: {err}",
                 sid=self.info.id, conn=self.info.connection, err=str(err))
        if self.state == "closing":
            return
        if f.check(UpstreamError) and f.value.sqlstate == "3D000":  # not a secret: the client named it
            self._refuse_login("3D000", f'hoopd: database "{self.info.database}" does not exist', "no_database")
        else:
            self._refuse_login(pe.CANNOT_CONNECT, f'hoopd: cannot connect to connection "{self.info.connection}"'
                               " (details in the gateway log)", "upstream_failed")

    def _upstream_ready(self, up: UpstreamProtocol) -> None:
        if self.state == "closing":
            up.transport.write(m.TERMINATE)
            up.transport.loseConnection()
            return
        self._cancel_timeout()
        self.upstream = up
        if self.gw.metrics is not None:
            self.gw.metrics.upstream_connected(self.info.connection, self.gw.reactor.seconds() - self._connect_started)
        for frame in up.parameter_frames:  # ParameterStatus and notices, framed
            if frame[:1] == b"S":
                self.info.report(*m.decode_parameter_status(frame[5:]))
        self._login_settings = dict(self.info.settings)
        problems = login_problems(self.info)
        if problems:
            log.error("session {sid}: login of {user} on {conn} as {lvl} refused: {why}", sid=self.info.id,
                      user=self.identity.name, conn=self.info.connection, lvl=self.info.level, why="; ".join(problems))
            self._refuse_login(pe.INSUFFICIENT_PRIVILEGE, f"hoopd: {problems[0]}; {self.info.level} sessions"
                               " cannot be checked safely (details in the gateway log)", "unsafe_upstream_settings")
            return
        reg = self.gw.registry
        key_len = 32 if self.info.protocol >= (3, 2) else 4
        pid = up.key[0] if up.key else 0  # the real backend pid (0: the server sent no BackendKeyData)
        secret = reg.mint_key(self, pid, key_len)
        reg.add(self)
        self._registered = True
        self.stages = self.gw.pipeline.open(self.info)
        self.transport.write(b"".join(up.parameter_frames) + m.backend_key_data(pid, secret)
                             + m.ready_for_query(b"I"))
        self.relay = Relay(self.info, self.transport, up.transport, self.stages, log, self._client_terminated,
                           on_report=self._reported, budget=self.gw.budget,
                           max_message=self.config.gateway.max_message_bytes, clock=self.gw.reactor,
                           hold_timeout=self.config.gateway.hold_timeout,
                           rewrite_limit=self.config.gateway.max_rewrite_bytes)
        self.state = "relay"
        up.on_data = self._server_data
        up.on_lost = self._upstream_lost
        self.relay.start()
        log.info("session {sid}: {user} ({source}) on {conn} as {lvl} from {peer}", sid=self.info.id,
                 user=self.identity.name, source=self.identity.source, conn=self.info.connection,
                 lvl=self.info.level, peer=self.info.peer)
        early = up.take_early_data()
        if early:
            self._server_data(early)
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            self.dataReceived(data)

    def _client_terminated(self) -> None:
        self._end_reason = "client terminate"

    def _reported(self, name: str, value: str) -> None:
        """The tripwire (hoopd.proxy.reported): end the session when the server reports a
        setting the gateway's checks depend on changed under it."""
        why = problem(self.info, name, value, self._login_settings.get(name))
        if why is None:
            return
        log.error("session {sid}: ended by the tripwire: {why}", sid=self.info.id, why=why)
        if self.gw.metrics is not None:
            self.gw.metrics.tripwire(name)
        if self.gw.alert is not None:
            self.gw.alert("tripwire", {"session": self.info.id, "user": self.identity.name if self.identity else None,
                                       "connection": self.info.connection, "level": self.info.level,
                                       "setting": name, "value": value, "why": why})
        if self.gw.record is not None:
            try:
                self.gw.record(self.info, "policy", {"action": "end", "allowed": False, "reason": why,
                                                     "setting": name, "value": value})
            except Exception:
                log.failure("session {sid}: tripwire record not written", sid=self.info.id)
        raise EndSession(f"hoopd: session ended: {why}", pe.INSUFFICIENT_PRIVILEGE, reason=f"tripwire: {why}")

    def _upstream_lost(self, reason: Failure) -> None:
        if self._end_reason is None:
            self._end_reason = "upstream closed"
        self.relay.stop(upstream=False)
        self.transport.loseConnection()
