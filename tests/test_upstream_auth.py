"""The gateway logging in upstream: which methods it answers (require_auth), SCRAM channel
binding over TLS, CancelRequest inside TLS, TCP_NODELAY. Unit tests on StringTransport,
then a real PostgreSQL 15 (directly, behind a TLS-terminating man in the middle, behind a
TLS-only front) and a real gateway."""
from __future__ import annotations

import datetime
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import warnings
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from scramp.core import CBindData
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from hoopd.config import ConnectionConfig, Credential, Secret, parse
from hoopd.confkit import ConfigError
from hoopd.pgwire import messages as m
from hoopd.pgwire.scram import PLUS, ScramClientExchange, ScramFailure
from hoopd.proxy.tls import end_point_hash
from hoopd.proxy.upstream import UpstreamError, UpstreamProtocol, connect_upstream
from tests.certs import write_self_signed
from tests.gateway import Gateway, connection_toml, users_toml
from tests.pgcluster import Cluster, quote_literal

PASSWORD = "held-Secret-9"
CRED = Credential("app", Secret(PASSWORD))
SSL_REQUEST = m.ssl_request()


def conn_cfg(**kw) -> ConnectionConfig:
    return ConnectionConfig("shop", "127.0.0.1", tls="disable", credentials={"default": CRED}, **kw)


def failure(d) -> Exception:
    out: list = []
    d.addErrback(lambda f: out.append(f.value))
    assert out, "the login did not fail"
    return out[0]


def auth_request(code: int, extra: bytes = b"") -> bytes:
    return m.frame(b"R", struct.pack("!i", code) + extra)


def logged_in_after(conn: ConnectionConfig, *server: bytes) -> tuple[UpstreamProtocol, bytes]:
    """Feed server messages after the startup packet; the protocol and what it sent after startup."""
    proto, t = UpstreamProtocol(conn, CRED, {}), StringTransport()
    proto.makeConnection(t)
    t.clear()
    for msg in server:
        proto.dataReceived(msg)
    return proto, t.value()


# --- require_auth, unit ------------------------------------------------------------------------

@pytest.mark.parametrize("request_,method", [(auth_request(5, b"salt"), "md5"), (auth_request(3), "password")])
def test_default_answers_no_password_method_but_scram(request_, method):
    proto, sent = logged_in_after(conn_cfg(), request_)
    err = failure(proto.ready)
    assert sent == b"" and isinstance(err, UpstreamError)  # nothing answered, no hash, no password
    assert f'connections.shop.require_auth does not allow (it allows "scram-sha-256"); add "{method}"' in str(err)


def test_trust_is_refused_unless_none_is_allowed():
    proto, _ = logged_in_after(conn_cfg(), m.auth_ok())
    assert 'add "none" to it' in str(failure(proto.ready))
    proto, _ = logged_in_after(conn_cfg(require_auth=("none",)), m.auth_ok(), m.ready_for_query(b"I"))
    assert proto.ready.called and proto.auth_method is None


def test_allowed_methods_answer():
    cfg = conn_cfg(require_auth=("md5", "password"), allow_plaintext_password=True)
    proto, sent = logged_in_after(cfg, auth_request(5, b"salt"), m.auth_ok(), m.ready_for_query(b"I"))
    assert proto.ready.called and proto.auth_method == "md5" and sent.startswith(b"p") and b"md5" in sent
    proto, sent = logged_in_after(cfg, auth_request(3), m.auth_ok(), m.ready_for_query(b"I"))
    assert proto.ready.called and PASSWORD.encode() in sent


def test_password_over_plaintext_needs_the_explicit_key():
    proto, sent = logged_in_after(conn_cfg(require_auth=("password",)), auth_request(3))
    assert sent == b"" and "set connections.shop.allow_plaintext_password = true" in str(failure(proto.ready))


def test_ok_before_scram_finished_is_refused():
    proto, sent = logged_in_after(conn_cfg(), m.auth_sasl(["SCRAM-SHA-256"]), m.auth_ok())
    assert sent.startswith(b"p") and b"SCRAM-SHA-256\0" in sent
    assert "before the SCRAM exchange finished" in str(failure(proto.ready))


def test_a_second_method_is_refused():
    cfg = conn_cfg(require_auth=("scram-sha-256", "md5"), allow_plaintext_password=True)
    proto, _ = logged_in_after(cfg, m.auth_sasl(["SCRAM-SHA-256"]), auth_request(5, b"salt"))
    assert "asked for md5 password authentication after SCRAM-SHA-256" in str(failure(proto.ready))


def test_unsupported_methods_name_themselves():
    proto, _ = logged_in_after(conn_cfg(), auth_request(7))
    assert "GSSAPI authentication, which the gateway does not support" in str(failure(proto.ready))


# --- SCRAM mechanism choice, unit --------------------------------------------------------------

@pytest.mark.parametrize("offered,binding,mech,gs2", [
    ([PLUS, "SCRAM-SHA-256"], b"h" * 32, PLUS, b"p=tls-server-end-point,,"),
    (["SCRAM-SHA-256"], b"h" * 32, "SCRAM-SHA-256", b"y,,"),  # TLS, but PLUS not offered: say we could
    ([PLUS, "SCRAM-SHA-256"], None, "SCRAM-SHA-256", b"n,,"),  # plaintext or channel_binding = "disable"
])
def test_scram_mechanism(offered, binding, mech, gs2):
    x = ScramClientExchange("u", PASSWORD, offered, binding)
    assert x.mechanism == mech and x.client_first().startswith(gs2)


def test_required_binding_without_plus_fails():
    with pytest.raises(ScramFailure, match="does not offer SCRAM-SHA-256-PLUS"):
        ScramClientExchange("u", PASSWORD, ["SCRAM-SHA-256"], b"h" * 32, require_binding=True)


def _cert(sign_hash, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, sign_hash))


def _legacy_cert(digest: str) -> x509.Certificate:
    """An RSA certificate signed with md5 or sha1 (cryptography refuses to make one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from OpenSSL import crypto

        key = crypto.PKey()
        key.generate_key(crypto.TYPE_RSA, 2048)
        c = crypto.X509()
        c.get_subject().CN = "x"
        c.set_issuer(c.get_subject())
        c.set_pubkey(key)
        c.gmtime_adj_notBefore(0)
        c.gmtime_adj_notAfter(3600)
        c.set_serial_number(1)
        c.sign(key, digest)
        return c.to_cryptography()


@pytest.mark.parametrize("make,expect", [
    (lambda: _legacy_cert("md5"), hashes.SHA256()), (lambda: _legacy_cert("sha1"), hashes.SHA256()),
    (lambda: _cert(hashes.SHA256()), hashes.SHA256()), (lambda: _cert(hashes.SHA384()), hashes.SHA384()),
    (lambda: _cert(hashes.SHA512()), hashes.SHA512())])
def test_end_point_hash_follows_rfc_5929(make, expect):
    cert = make()
    der = cert.public_bytes(Encoding.DER)
    assert end_point_hash(cert) == cert.fingerprint(expect) == bytes(CBindData.from_der(der))  # as scramp computes it


def test_end_point_hash_of_an_ed25519_cert_is_none():
    assert end_point_hash(_cert(None, ed25519.Ed25519PrivateKey.generate())) is None


# --- config ----------------------------------------------------------------------------------

CONN = {"host": "db", "credentials": {"default": {"user": "u", "password": "pw"}}}


@pytest.mark.parametrize("keys,message", [
    ({"require_auth": ["scram"]}, 'connections.shop.require_auth: expected scram-sha-256, md5, password, none, '
                                  "got 'scram'"),
    ({"require_auth": []}, "connections.shop.require_auth: needs at least one method"),
    ({"require_auth": ["md5", "md5"], "tls": "require"}, "connections.shop.require_auth: 'md5' is listed twice"),
    ({"require_auth": ["scram-sha-256", "md5"], "tls": "disable"},
     "connections.shop.require_auth: 'md5' sends the password (or its md5 hash) over an unencrypted connection "
     '(tls = "disable"): use TLS, or set connections.shop.allow_plaintext_password = true'),
    ({"channel_binding": "require", "tls": "disable"}, 'connections.shop.channel_binding: "require" needs TLS'),
    ({"channel_binding": "maybe"}, "connections.shop.channel_binding: expected one of disable | prefer | require"),
])
def test_config_errors(keys, message):
    with pytest.raises(ConfigError) as e:
        parse({"connections": {"shop": {**CONN, **keys}}})
    assert str(e.value).startswith(message)


def test_config_defaults_and_explicit_plaintext():
    c = parse({"connections": {"shop": CONN}}).connections["shop"]
    assert (c.require_auth, c.allow_plaintext_password, c.channel_binding) == (("scram-sha-256",), False, "prefer")
    c = parse({"connections": {"shop": {**CONN, "tls": "disable", "require_auth": "password",
                                        "allow_plaintext_password": True}}}).connections["shop"]
    assert c.require_auth == ("password",) and c.allow_plaintext_password


# --- against the real PostgreSQL 15 -----------------------------------------------------------

class Front:
    """A TCP front for a PostgreSQL server, in threads. ``mode``:

    - "tls-only": passes bytes through, but closes connections whose first packet is not an
      SSLRequest (an upstream that only accepts TLS); ``first`` records each first packet.
    - "mitm": terminates TLS with its own certificate (after answering the SSLRequest) and
      opens its own TLS connection to the server: a man in the middle the gateway's
      ``tls = "require"`` (no verification) cannot see.
    """

    def __init__(self, target_port: int, mode: str, folder: Path | None = None) -> None:
        self.target, self.mode = target_port, mode
        self.first: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if mode == "mitm":
            cert, key = write_self_signed(folder, "mitm")
            self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.server_ctx.load_cert_chain(cert, key)
            self.client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.client_ctx.check_hostname, self.client_ctx.verify_mode = False, ssl.CERT_NONE
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            first = _read_exact(c, 8)
            self.first.append(first)
            if first != SSL_REQUEST:
                c.close()
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            up.sendall(first)
            if self.mode == "mitm":
                assert _read_exact(up, 1) == b"S"
                c.sendall(b"S")
                c = self.server_ctx.wrap_socket(c, server_side=True)
                up = self.client_ctx.wrap_socket(up)
            threading.Thread(target=_pipe, args=(up, c), daemon=True).start()
            _pipe(c, up)
        except (OSError, AssertionError, ssl.SSLError):
            c.close()

    def close(self) -> None:
        self.sock.close()


def _read_exact(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except (OSError, ssl.SSLError):
        pass
    finally:
        for s in (src, dst):  # shutdown first: it also wakes the other direction's recv and sends the FIN
            for end in (lambda: s.shutdown(socket.SHUT_RDWR), s.close):
                try:
                    end()
                except OSError:
                    pass


def scram_cred(pg) -> Credential:
    return Credential(pg.app_scram.name, Secret(pg.app_scram.password))


def scram_conn(pg, **kw) -> ConnectionConfig:
    return ConnectionConfig("shop", "127.0.0.1", pg.port, "shop", credentials={"default": scram_cred(pg)}, **kw)


def query_one(up: UpstreamProtocol, sql: str):
    """Run one simple query on a logged-in upstream; fires with the first column of the first row."""
    d, buf = Deferred(), bytearray(up.take_early_data())
    value: list = []

    def data(chunk: bytes) -> None:
        buf.extend(chunk)
        while len(buf) >= 5:
            (n,) = struct.unpack_from("!i", buf, 1)
            if len(buf) < n + 1:
                return
            mtype, body = bytes(buf[:1]), bytes(buf[5:n + 1])
            del buf[:n + 1]
            if mtype == b"D" and not value:
                value.append(m.decode_data_row(body)[0])
            elif mtype == b"Z":
                up.transport.loseConnection()
                d.callback(value[0] if value else None)

    up.on_data = data
    up.transport.write(m.query(sql))
    return d


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_scram_plus_over_tls_and_plain_scram_without(pg):
    up = yield connect_upstream(reactor, scram_conn(pg, tls="verify-full", ca_file=str(pg.ca_file)), scram_cred(pg), {})
    assert up.auth_method == PLUS
    assert (yield query_one(up, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")) == b"t"
    up = yield connect_upstream(reactor, scram_conn(pg, tls="require", channel_binding="disable"), scram_cred(pg), {})
    assert up.auth_method == "SCRAM-SHA-256"
    up.transport.loseConnection()
    up = yield connect_upstream(reactor, scram_conn(pg, tls="disable"), scram_cred(pg), {})
    assert up.auth_method == "SCRAM-SHA-256"
    assert up.transport.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # the upstream socket
    up.transport.loseConnection()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_channel_binding_defeats_a_tls_man_in_the_middle(pg, tmp_path):
    """tls = "require" checks no certificate: a middle box with its own can read everything,
    but the server checks the SCRAM-PLUS binding against its own certificate and refuses."""
    mitm = Front(pg.port, "mitm", tmp_path)
    try:
        conn = replace(scram_conn(pg, tls="require"), port=mitm.port)
        with pytest.raises(UpstreamError, match="channel binding"):
            yield connect_upstream(reactor, conn, scram_cred(pg), {})
        up = yield connect_upstream(reactor, replace(conn, channel_binding="disable"), scram_cred(pg), {})
        assert up.auth_method == "SCRAM-SHA-256"  # what binding protects against: this login went through
        up.transport.loseConnection()
    finally:
        mitm.close()


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_default_refuses_an_md5_server_and_sends_nothing(pg):
    cred = Credential(pg.app_md5.name, Secret(pg.app_md5.password))
    conn = ConnectionConfig("legacy", "127.0.0.1", pg.port, "shop", tls="require", credentials={"default": cred})
    with pytest.raises(UpstreamError, match=r'connections.legacy.require_auth does not allow .* add "md5"'):
        yield connect_upstream(reactor, conn, cred, {})
    up = yield connect_upstream(reactor, replace(conn, require_auth=("md5",)), cred, {})  # over TLS: no extra key
    assert up.auth_method == "md5"
    up.transport.loseConnection()


# --- cancel inside TLS, through the gateway ----------------------------------------------------

@pytest.fixture(scope="module")
def tls_only_pg():
    """A PostgreSQL 15 whose pg_hba has only hostssl lines, behind a TLS-only front."""
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="hoopd-tls-only-")))  # the server user must reach it
    cert, key = write_self_signed(cluster.root, "server")
    cluster.init(["local all all trust", "hostssl all all 127.0.0.1/32 scram-sha-256"],
                 {"ssl": "on", "ssl_cert_file": quote_literal(str(cert)), "ssl_key_file": quote_literal(str(key))})
    cluster.start()
    cluster.psql(f"CREATE ROLE app LOGIN PASSWORD {quote_literal(PASSWORD)}")
    front = Front(cluster.port, "tls-only")
    try:
        yield cluster, front
    finally:
        front.close()
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.mark.integration
def test_cancel_reaches_a_tls_only_upstream_inside_tls(tls_only_pg, tmp_path):
    cluster, front = tls_only_pg
    body = users_toml() + connection_toml("sealed", "localhost", front.port, "postgres", "app", PASSWORD,
                                          tls="verify-full", ca_file=str(cluster.root / "ca.crt"))
    gw = Gateway(tmp_path, body).start()
    try:
        with psycopg.connect(gw.dsn("dev", "sealed"), autocommit=True) as c:
            # cancel_safe: it waits for the gateway's close without holding the GIL, which the
            # Front's threads in this process need to pass the cancel on
            timer = threading.Timer(1.0, c.cancel_safe)
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):  # (not cancelled: it runs 30 s, then fails here)
                c.execute("select pg_sleep(30)")
            timer.join()
            assert c.execute("select 1").fetchone() == (1,)
        assert front.first and all(p == SSL_REQUEST for p in front.first)  # session and cancel: both TLS
        assert len(front.first) >= 2
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()
