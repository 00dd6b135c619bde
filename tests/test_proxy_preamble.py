"""The client-facing protocol before any upstream exists, driven with StringTransport."""
from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock, StringTransport

from hoopd.config import parse
from hoopd.pgwire import messages as m
from hoopd.pgwire.scram import ScramClientExchange, make_verifier
from hoopd.proxy.client import GatewayFactory
from hoopd.proxy.registry import SessionRegistry

VERIFIER = make_verifier("right-password")


def make_config(**tls):
    return parse({
        "users": [{"name": "alice", "password_hash": VERIFIER, "groups": ["dev"]}],
        "connections": {"shop": {"host": "127.0.0.1", "port": 1, "tls": "disable",
                                 "credentials": {"default": {"user": "app", "password": "pw"}},
                                 "access": {"dba": "admin"}}},
        **({"tls": tls} if tls else {}),
    })


def connect(config=None):
    reactor = MemoryReactorClock()
    factory = GatewayFactory(config or make_config(), SessionRegistry(), reactor)
    proto = factory.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr, reactor


def error_fields(data: bytes) -> dict[str, str]:
    assert data[:1] == b"E", data
    (n,) = struct.unpack_from("!i", data, 1)
    return m.decode_fields(data[5:1 + n])


def test_gssenc_request_gets_n_and_session_continues() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(struct.pack("!ii", 8, m.GSSENC_REQUEST))
    assert tr.value() == b"N"
    proto.dataReceived(m.startup_message({"user": "alice", "database": "shop"}))
    assert tr.value()[1:2] == b"R"  # authentication request follows
    assert not tr.disconnecting


def test_ssl_request_with_tls_off_gets_n_not_fatal() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(m.ssl_request())
    assert tr.value() == b"N" and not tr.disconnecting


def test_unsupported_major_version_refused() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(m.startup_message({"user": "alice"}, version=4 << 16))
    f = error_fields(tr.value())
    assert f["C"] == "0A000" and "unsupported frontend protocol 4.0" in f["M"] and f["S"] == "FATAL"
    assert tr.disconnecting


def test_oversize_startup_packet_refused() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(struct.pack("!ii", 20_000, m.PROTOCOL_3_0) + b"x" * 100)
    f = error_fields(tr.value())
    assert f["C"] == "08P01" and "too large" in f["M"]
    assert tr.disconnecting


def test_negotiate_protocol_version_for_newer_minor_and_pq_options() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(m.startup_message({"user": "alice", "_pq_.test": "1"}, version=(3 << 16) | 9999))
    out = tr.value()
    assert out[:1] == b"v"
    (n,) = struct.unpack_from("!i", out, 1)
    minor, count = struct.unpack_from("!ii", out, 5)
    assert (minor, count) == (2, 1) and out[13:1 + n] == b"_pq_.test\0"
    assert proto.info.protocol == (3, 2)


def test_protocol_3_2_accepted_without_negotiation() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(m.startup_message({"user": "alice"}, version=m.PROTOCOL_3_2))
    assert tr.value()[:1] == b"R" and proto.info.protocol == (3, 2)


def _scram_login(proto, tr, password: str, database: str = "shop") -> bytes:
    proto.dataReceived(m.startup_message({"user": "alice", "database": database}))
    assert b"SCRAM-SHA-256" in tr.value()
    tr.clear()
    c = ScramClientExchange("alice", password, ["SCRAM-SHA-256"])
    proto.dataReceived(m.sasl_initial_response("SCRAM-SHA-256", c.client_first()))
    out = tr.value()
    tr.clear()
    assert out[:1] == b"R" and struct.unpack_from("!i", out, 5)[0] == 11
    proto.dataReceived(m.password_message(c.server_first(out[9:])))
    return tr.value()


def test_wrong_password_is_28p01() -> None:
    proto, tr, _ = connect()
    f = error_fields(_scram_login(proto, tr, "wrong"))
    assert f["C"] == "28P01" and f["M"] == 'password authentication failed for user "alice"'


def test_unknown_user_fails_like_a_wrong_password() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(m.startup_message({"user": "mallory", "database": "shop"}))
    tr.clear()
    c = ScramClientExchange("mallory", "x", ["SCRAM-SHA-256"])
    proto.dataReceived(m.sasl_initial_response("SCRAM-SHA-256", c.client_first()))
    out = tr.value()
    tr.clear()
    proto.dataReceived(m.password_message(c.server_first(out[9:])))
    assert error_fields(tr.value())["C"] == "28P01"


def test_no_access_is_28000_and_unknown_connection_3d000() -> None:
    proto, tr, _ = connect()
    f = error_fields(_strip_auth(_scram_login(proto, tr, "right-password")))
    assert f["C"] == "28000" and 'no access to connection "shop"' in f["M"]
    proto, tr, _ = connect()
    f = error_fields(_strip_auth(_scram_login(proto, tr, "right-password", database="nope")))
    assert f["C"] == "3D000" and 'no connection named "nope"' in f["M"]


def _strip_auth(out: bytes) -> bytes:
    """Skip the AuthenticationSASLFinal that precedes the error after a good proof."""
    assert out[:1] == b"R"
    (n,) = struct.unpack_from("!i", out, 1)
    return out[1 + n:]


def test_tls_required_refuses_plaintext(tmp_path) -> None:
    from tests.certs import write_self_signed

    cert, key = write_self_signed(tmp_path)
    proto, tr, _ = connect(make_config(mode="require", cert=str(cert), key=str(key)))
    proto.dataReceived(m.startup_message({"user": "alice", "database": "shop"}))
    f = error_fields(tr.value())
    assert f["C"] == "28000" and "TLS is required" in f["M"]


def test_plaintext_after_ssl_request_rejected(tmp_path) -> None:
    from tests.certs import write_self_signed

    cert, key = write_self_signed(tmp_path)
    proto, tr, _ = connect(make_config(mode="allow", cert=str(cert), key=str(key)))
    proto.dataReceived(m.ssl_request() + m.startup_message({"user": "alice"}))
    f = error_fields(tr.value())
    assert f["C"] == "08P01" and "unencrypted data after SSL request" in f["M"]


def test_login_timeout_closes_with_error() -> None:
    proto, tr, reactor = connect()
    proto.dataReceived(m.startup_message({"user": "alice", "database": "shop"}))
    reactor.advance(31)
    assert tr.disconnecting and b"login timed out" in tr.value()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda u: m.startup_message({"user": u}), st.text(min_size=1, max_size=8).filter(lambda s: "\0" not in s)),
    st.just(m.ssl_request()), st.just(struct.pack("!ii", 8, m.GSSENC_REQUEST)),
    st.builds(lambda b: m.frame(b"p", b), st.binary(max_size=80)),
    st.builds(lambda t, b: bytes([t]) + struct.pack("!i", len(b) + 4) + b, st.integers(0, 255), st.binary(max_size=40)),
), max_size=6))
def test_fuzz_preamble_never_raises(chunks: list[bytes]) -> None:
    """Random and mutated packets: no exception escapes, and the protocol answers or waits."""
    proto, tr, reactor = connect()
    for c in chunks:
        proto.dataReceived(c)
    reactor.advance(60)  # and never hangs past the login timeout
    assert tr.disconnecting or proto.state in ("closing",)


class _Target:
    """A registered session whose upstream cancel is still on its way."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred
        self.cancel = Deferred()
        self.asked = 0

    def cancel_upstream(self):
        self.asked += 1
        return self.cancel


def test_a_cancel_connection_closes_only_once_the_server_processed_the_cancel() -> None:
    """libpq and asyncpg wait for the close: closing earlier let a late cancel hit the
    client's next statement (asyncpg's test_copy_records_to_table_unprintable_error)."""
    proto, tr, _ = connect()
    target = _Target()
    target.info = type("Info", (), {"id": "s1"})()
    secret = proto.gw.registry.mint_key(target, 4242)
    proto.dataReceived(m.cancel_request(4242, secret))
    assert target.asked == 1 and not tr.disconnecting
    target.cancel.callback(None)
    assert tr.disconnecting and tr.value() == b""


def test_a_cancel_with_an_unknown_key_closes_at_once() -> None:
    proto, tr, _ = connect()
    proto.dataReceived(m.cancel_request(1, b"\0\0\0\0"))
    assert tr.disconnecting and tr.value() == b""


def test_the_upstream_cancel_waits_for_the_server_to_close() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from hoopd.proxy.upstream import _Cancel
    conn = make_config().connections["shop"]
    c = _Cancel(conn, 4242, b"abcd")
    fired: list = []
    c.done.addCallback(fired.append)
    tr = StringTransport()
    c.makeConnection(tr)
    assert tr.value() == m.cancel_request(4242, b"abcd") and not tr.disconnecting and not fired
    c.connectionLost(Failure(ConnectionDone()))
    assert fired == [None]
