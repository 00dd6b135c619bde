"""The gateway as a client of PostgreSQL: connect, TLS, log in with the held credential.

``connect_upstream`` returns a Deferred that fires with a logged-in UpstreamProtocol
(``parameter_frames`` holds the server's ParameterStatus/Notice frames to relay, ``key``
its BackendKeyData) or fails with UpstreamError. Upstream error texts are kept for the
gateway log; the client only hears a generic message, so nothing about the held
credential leaks.

The gateway answers only the authentication methods ``connections.NAME.require_auth``
lists (like libpq's ``require_auth``; default SCRAM-SHA-256 only), and a login counts as
done only when that method finished: an AuthenticationOk before the SCRAM server
signature was checked, or without any request when "none" is not allowed, is refused.
Over TLS, SCRAM uses channel binding (``tls-server-end-point``) when the server offers
SCRAM-SHA-256-PLUS, per ``connections.NAME.channel_binding``.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Callable

from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from hoopd.config import ConnectionConfig, Credential
from hoopd.log import get_logger
from hoopd.pgwire import messages as m
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.scram import ScramClientExchange, ScramFailure
from hoopd.pgwire.types import BE
from hoopd.proxy.tls import peer_end_point, upstream_options

log = get_logger("hoopd.proxy.upstream")

_I32 = struct.Struct("!i")


class UpstreamError(Exception):
    """Logging in upstream failed; str() is for the gateway log only. ``sqlstate``: the
    server's, when it refused the login."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


_OTHER_METHODS = {2: "Kerberos V5", 6: "SCM credential", 7: "GSSAPI", 9: "SSPI"}


def _no_delay(transport) -> None:
    """TCP_NODELAY: two small writes in a row must not wait for the peer's delayed ACK."""
    if ITCPTransport.providedBy(transport):
        transport.setTcpNoDelay(True)


def _md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()


class UpstreamProtocol(Protocol):
    """Login state machine; after login, bytes go to ``on_data`` (the relay)."""

    def __init__(self, conn: ConnectionConfig, cred: Credential, params: dict[str, str]) -> None:
        self.conn = conn
        self.cred = cred
        self.params = params
        self.ready: defer.Deferred[UpstreamProtocol] = defer.Deferred()
        self.parameter_frames: list[bytes] = []
        self.key: tuple[int, bytes] | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[Failure], None] | None = None
        self._buf = bytearray()
        self._state = "tls"
        self._scram: ScramClientExchange | None = None
        self.auth_method: str | None = None  # what the server asked for: "md5", "SCRAM-SHA-256-PLUS", ...
        self._tls = upstream_options(conn)

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        if self._tls is not None:
            self.transport.write(m.ssl_request())
        else:
            self._send_startup()

    def _send_startup(self) -> None:
        self._state = "auth"
        params = {"user": self.cred.user, "database": self.conn.database, **self.params}
        self.transport.write(m.startup_message(params))

    def dataReceived(self, data: bytes) -> None:
        if self.on_data is not None:
            self.on_data(data)
            return
        self._buf += data
        try:
            self._advance()
        except UpstreamError as e:
            self._fail(e)
        except (ProtocolError, ScramFailure) as e:
            self._fail(UpstreamError(str(e)))

    def _advance(self) -> None:
        if self._state == "tls":
            if not self._buf:
                return
            answer = bytes(self._buf[:1])
            if answer != b"S":
                raise UpstreamError(f"server at {self.conn.host}:{self.conn.port} does not accept TLS"
                                    f" (tls = \"{self.conn.tls}\")")
            if len(self._buf) > 1:
                raise UpstreamError("server sent unencrypted bytes after accepting TLS")
            del self._buf[:]
            self.transport.startTLS(self._tls)
            self._send_startup()
            return
        while len(self._buf) >= 5 and self.on_data is None:
            mtype = self._buf[0]
            (n,) = _I32.unpack_from(self._buf, 1)
            if n < 4 or n > 1 << 20:
                raise UpstreamError(f"invalid message length {n} from server during login")
            if len(self._buf) < n + 1:
                return
            body = bytes(self._buf[5:n + 1])
            del self._buf[:n + 1]
            self._message(mtype, body)

    def _message(self, mtype: int, body: bytes) -> None:
        if mtype == BE.AUTHENTICATION:
            self._auth(body)
        elif mtype == BE.ERROR:
            f = m.decode_fields(body)
            raise UpstreamError(f"server refused login: {f.get('C', '?')} {f.get('M', '')}", f.get("C"))
        elif mtype == BE.PARAMETER_STATUS or mtype == BE.NOTICE:
            self.parameter_frames.append(m.frame(bytes([mtype]), body))
        elif mtype == BE.BACKEND_KEY:
            (pid,) = _I32.unpack_from(body, 0)
            self.key = (pid, body[4:])
        elif mtype == BE.NEGOTIATE_VERSION:
            pass  # NegotiateProtocolVersion: we ask for 3.0 with no options; nothing to adapt
        elif mtype == BE.READY:
            self._state = "ready"
            self.on_data = self._early_data
            rest, self._buf = bytes(self._buf), bytearray()
            self.ready.callback(self)
            if rest:
                self.on_data(rest)
        else:
            raise UpstreamError(f"unexpected message {chr(mtype)!r} from server during login")

    def _early_data(self, data: bytes) -> None:
        self._buf += data  # held until the relay takes over (see take_early_data)

    def take_early_data(self) -> bytes:
        rest, self._buf = bytes(self._buf), bytearray()
        return rest

    def _password(self) -> str:
        if self.cred.password is None:
            raise UpstreamError(f"server asks for a password but connections.{self.conn.name}"
                                " has none configured for this level")
        return self.cred.password.value

    def _allow(self, method: str, what: str) -> None:
        """Refuse an authentication request the connection does not allow (before any secret is used)."""
        conn, key = self.conn, f"connections.{self.conn.name}"
        if self.auth_method is not None:
            raise UpstreamError(f"{key}: the server asked for {what} authentication after {self.auth_method}")
        if method not in conn.require_auth:
            allowed = ", ".join(f'"{x}"' for x in conn.require_auth)
            raise UpstreamError(f"{key}: the server asks for {what} authentication, which {key}.require_auth "
                                f'does not allow (it allows {allowed}); add "{method}" to it if that is intended')
        if method in ("md5", "password") and self._tls is None and not conn.allow_plaintext_password:
            raise UpstreamError(f'{key}: the server asks for {what} authentication over a connection without TLS; '
                                f"use TLS, or set {key}.allow_plaintext_password = true")
        self.auth_method = method

    def _auth(self, body: bytes) -> None:
        (code,) = _I32.unpack_from(body, 0)
        if code == 0:
            self._check_done()
        elif code == 3:
            self._allow("password", "cleartext password")
            self.transport.write(m.password_message(m.cstr(self._password())))
        elif code == 5:
            self._allow("md5", "md5 password")
            self.transport.write(m.password_message(m.cstr(_md5_password(self.cred.user, self._password(), body[4:8]))))
        elif code == 10:
            self._allow("scram-sha-256", "SCRAM")
            mechs = [x.decode(errors="replace") for x in body[4:].split(b"\0") if x]
            bind = self._tls is not None and self.conn.channel_binding != "disable"
            binding = peer_end_point(self.transport) if bind else None
            self._scram = ScramClientExchange(self.cred.user, self._password(), mechs, binding,
                                              require_binding=self.conn.channel_binding == "require")
            self.auth_method = self._scram.mechanism
            self.transport.write(m.sasl_initial_response(self._scram.mechanism, self._scram.client_first()))
        elif code == 11 and self._scram:
            self.transport.write(m.password_message(self._scram.server_first(body[4:])))
        elif code == 12 and self._scram:
            self._scram.server_final(body[4:])
        else:
            what = _OTHER_METHODS.get(code, f"unknown ({code})")
            raise UpstreamError(f"connections.{self.conn.name}: the server asks for {what} authentication, "
                                "which the gateway does not support")

    def _check_done(self) -> None:
        """AuthenticationOk: only after the allowed method finished (or with "none" allowed)."""
        key = f"connections.{self.conn.name}"
        if self._scram is not None and not self._scram.finished:
            raise UpstreamError(f"{key}: the server accepted the login before the SCRAM exchange finished "
                                "(it did not prove it knows the password)")
        if self.auth_method is None and "none" not in self.conn.require_auth:
            raise UpstreamError(f"{key}: the server accepted the login without asking for a password (trust), "
                                f'which {key}.require_auth does not allow; add "none" to it if that is intended')
        log.debug("upstream login on {conn} as {user}: {method}", conn=self.conn.name, user=self.cred.user,
                  method=self.auth_method or "no authentication")

    def _fail(self, err: Exception) -> None:
        if not self.ready.called:
            self.ready.errback(err)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        if not self.ready.called:
            self.ready.errback(UpstreamError(f"connection closed during login: {reason.getErrorMessage()}"))
        elif self.on_lost is not None:
            self.on_lost(reason)


def _connect(reactor: IReactorTCP, conn: ConnectionConfig, proto: Protocol) -> defer.Deferred:
    """Like endpoints.connectProtocol, without a log line per connection."""
    factory = Factory.forProtocol(lambda: proto)
    factory.noisy = False
    return HostnameEndpoint(reactor, conn.host, conn.port, timeout=conn.connect_timeout).connect(factory)


def connect_upstream(reactor: IReactorTCP | IReactorTime, conn: ConnectionConfig, cred: Credential,
                     params: dict[str, str]) -> defer.Deferred[UpstreamProtocol]:
    """Connect and log in; fires with the protocol once the server said ReadyForQuery."""
    proto = UpstreamProtocol(conn, cred, params)

    def connected(p: UpstreamProtocol) -> defer.Deferred[UpstreamProtocol]:
        return p.ready

    def failed(f: Failure) -> Failure:
        if proto.transport is not None:
            proto.transport.abortConnection()
        if f.check(UpstreamError):
            return f
        return Failure(UpstreamError(f"cannot connect to {conn.host}:{conn.port}: {f.getErrorMessage()}"))

    d = _connect(reactor, conn, proto)
    d.addCallback(connected)
    d.addTimeout(conn.connect_timeout + 5, reactor)  # login must finish too, not only TCP
    d.addErrback(failed)
    return d


class _Cancel(Protocol):
    """Sends one CancelRequest: inside TLS (SSLRequest, handshake, then the request, as
    libpq 17 does) unless the connection's ``tls`` is "disable". ``done`` fires when the
    server has closed the connection after the request, which it does once it has
    signalled the backend (libpq's PQcancel waits for that too: a client that sends its
    next statement sooner may have that one cancelled instead), or fails with UpstreamError."""

    def __init__(self, conn: ConnectionConfig, pid: int, secret: bytes) -> None:
        self.conn = conn
        self.request = m.cancel_request(pid, secret)
        self.done: defer.Deferred[None] = defer.Deferred()
        self._tls = upstream_options(conn)
        self._error: str | None = None
        self._sent = False

    def connectionMade(self) -> None:
        _no_delay(self.transport)
        if self._tls is None:
            self._send()
        else:
            self.transport.write(m.ssl_request())

    def _send(self) -> None:
        self._sent = True
        self.transport.write(self.request)  # then wait for the server to close (send_cancel has a timeout)

    def dataReceived(self, data: bytes) -> None:
        if self._sent:
            return
        if data != b"S":
            self._error = (f"server at {self.conn.host}:{self.conn.port} does not accept TLS for the cancel request"
                           f' (tls = "{self.conn.tls}"); not sent')
            self.transport.loseConnection()
            return
        self.transport.startTLS(self._tls)
        self._send()  # TLS writes wait for the handshake; a failed handshake loses the connection

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._error is None and not (self._sent and reason.check(error.ConnectionDone)):
            self._error = f"cancel request to {self.conn.host}:{self.conn.port} failed: {reason.getErrorMessage()}"
        if self.done.called:  # timed out
            return
        if self._error is not None:
            self.done.errback(UpstreamError(self._error))
        else:
            self.done.callback(None)


def send_cancel(reactor: IReactorTCP | IReactorTime, conn: ConnectionConfig, pid: int,
                secret: bytes) -> defer.Deferred[None]:
    """Send a CancelRequest for the upstream backend (pid, secret); fires when the server
    has processed it (closed the connection)."""
    proto = _Cancel(conn, pid, secret)
    d = _connect(reactor, conn, proto)
    d.addCallback(lambda _: proto.done)
    d.addTimeout(conn.connect_timeout + 5, reactor)

    def failed(f: Failure) -> Failure:
        if proto.transport is not None:
            proto.transport.abortConnection()
        return f

    return d.addErrback(failed)
