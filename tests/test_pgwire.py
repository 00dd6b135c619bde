"""Unit tests for the sans-IO protocol layer: plain bytes in, plain bytes out."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopd.pgwire import messages as m
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.framing import Big, Framer, Msg, Raw, Rows, read_packet, split_rows
from hoopd.pgwire.scram import (ScramClientExchange, ScramFailure, ScramServerExchange, make_verifier,
                                parse_verifier)

Z, E, D = ord("Z"), ord("E"), ord("D")


def rebuild(events: list) -> bytes:
    return b"".join(e.data if isinstance(e, (Raw, Rows)) else m.frame(bytes([e.type]), e.body)
                    if isinstance(e, Msg) else b"" for e in events)


STREAM = (m.frame(b"T", b"x" * 10) + m.frame(b"D", b"y" * 3) + m.frame(b"Z", b"I") + m.frame(b"D", b"z" * 50)
          + m.frame(b"E", b"e") + m.frame(b"D", b"q" * 15))


@pytest.mark.parametrize("wanted", [{Z, E}, {D}, {ord("T"), D, E}, set()])
def test_framer_every_split_keeps_bytes_and_messages(wanted: set[int]) -> None:
    expect = [(t, b) for t, b in [(ord("T"), b"x" * 10), (D, b"y" * 3), (Z, b"I"), (E, b"e"), (D, b"q" * 15)]
              if t in wanted]
    for a in range(len(STREAM) + 1):
        for b in range(a, len(STREAM) + 1):
            f = Framer(wanted, whole_limit=20)
            ev = f.feed(STREAM[:a]) + f.feed(STREAM[a:b]) + f.feed(STREAM[b:])
            assert rebuild(ev) == STREAM
            assert [(e.type, e.body) for e in ev if isinstance(e, Msg)] == expect
            assert f.idle


def test_framer_runs_of_rows_every_split() -> None:
    stream = STREAM + m.frame(b"D", b"a") + m.frame(b"D", b"bb") + m.frame(b"C", b"SELECT 2\0")
    rows = [b"y" * 3, b"q" * 15, b"a", b"bb"]  # (the 50-byte row is over the whole limit: streamed)
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            f = Framer({D, E}, whole_limit=20, runs=D)
            ev = f.feed(stream[:a]) + f.feed(stream[a:b]) + f.feed(stream[b:])
            assert rebuild(ev) == stream
            got = [body for e in ev if isinstance(e, Rows) for body in split_rows(e.data)]
            assert got == rows and sum(e.count for e in ev if isinstance(e, Rows)) == len(rows)
            assert not [e for e in ev if isinstance(e, Msg) and e.type == D] and Big(D, 50) in ev
    f = Framer({D}, runs=D)
    (whole,) = f.feed(stream[stream.index(m.frame(b"D", b"a")):])[:1]
    assert whole == Rows(m.frame(b"D", b"a") + m.frame(b"D", b"bb"), 2)  # consecutive rows: one event


def test_framer_streams_oversize_wanted_message() -> None:
    f = Framer({D}, whole_limit=20)
    ev = f.feed(STREAM)
    assert Big(D, 50) in ev
    assert Msg(D, b"z" * 50) not in ev  # never buffered whole
    assert rebuild(ev) == STREAM


def test_framer_coalesces_unwanted_runs() -> None:
    f = Framer({Z})
    ev = f.feed(m.frame(b"D", b"a") * 100 + m.frame(b"Z", b"I"))
    assert len(ev) == 2 and isinstance(ev[0], Raw) and ev[1] == Msg(Z, b"I")


@pytest.mark.parametrize("length", [0, 3, 10_001])
def test_framer_rejects_bad_lengths(length: int) -> None:
    f = Framer(set(), limits={ord("S"): 10_000})
    with pytest.raises(ProtocolError, match="invalid message length"):
        f.feed(b"S" + struct.pack("!i", length) + b"\0" * 8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(b"TDZECS"), st.binary(max_size=40)), max_size=20),
       st.lists(st.integers(min_value=0, max_value=400), max_size=6), st.sets(st.sampled_from(b"TDZECS")))
def test_framer_property_any_chunking(msgs, cuts, wanted) -> None:
    stream = b"".join(m.frame(bytes([t]), body) for t, body in msgs)
    f = Framer(set(wanted), whole_limit=16)
    pos, ev = 0, []
    for c in sorted(cuts) + [len(stream)]:
        ev += f.feed(stream[pos:max(pos, c)])
        pos = max(pos, c)
    assert rebuild(ev) == stream
    assert [(e.type, e.body) for e in ev if isinstance(e, Msg)] == [
        (t, body) for t, body in msgs if t in wanted and len(body) <= 16]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_framer_fuzz_random_bytes_never_escape(data: bytes) -> None:
    f = Framer({Z, E}, limits={t: 10_000 for t in range(256)})
    try:
        f.feed(data)
    except ProtocolError:
        pass


def test_read_packet_limits() -> None:
    assert read_packet(b"\0\0\0") is None
    with pytest.raises(ProtocolError, match="too large"):
        read_packet(struct.pack("!i", 10_001) + b"\0" * 8)
    with pytest.raises(ProtocolError, match="invalid startup packet length"):
        read_packet(struct.pack("!i", 4))
    pkt = m.startup_message({"user": "u"})
    assert read_packet(pkt) == (len(pkt), pkt[4:])


def test_startup_decoding() -> None:
    pkt = m.startup_message({"user": "alice", "database": "shop", "_pq_.foo": "1"}, m.PROTOCOL_3_2)
    st_ = m.decode_startup(pkt[4:])
    assert st_.version == m.PROTOCOL_3_2 and st_.params == {"user": "alice", "database": "shop"}
    assert st_.unknown_options == ("_pq_.foo",)
    with pytest.raises(ProtocolError, match="no PostgreSQL user name"):
        m.decode_startup(m.startup_message({"database": "x"})[4:])
    with pytest.raises(ProtocolError):
        m.decode_startup(struct.pack("!i", m.PROTOCOL_3_0) + b"user\0alice")  # missing terminators


def test_bind_decoding_with_formats_and_null() -> None:
    body = (m.cstr("p1") + m.cstr("s1") + struct.pack("!hh", 1, 1) + struct.pack("!h", 2)
            + struct.pack("!i", 3) + b"abc" + struct.pack("!i", -1) + struct.pack("!hh", 1, 0))
    b = m.decode_bind(body)
    assert (b.portal, b.statement, b.params, b.result_formats) == ("p1", "s1", (b"abc", None), (0,))
    assert m.param_format(b, 1) == 1
    with pytest.raises(ProtocolError, match="truncated"):
        m.decode_bind(body[:-3])


def test_error_fields_tolerate_missing_sqlstate() -> None:
    assert m.decode_fields(b"Mboom\0\0") == {"M": "boom"}
    err = m.error_response("42501", "no", detail="why")
    assert m.decode_fields(err[5:]) == {"S": "ERROR", "V": "ERROR", "C": "42501", "M": "no", "D": "why"}


def test_scram_round_trip_and_wrong_password() -> None:
    v = parse_verifier(make_verifier("s3cret"))
    for pw, ok in (("s3cret", True), ("wrong", False)):
        server = ScramServerExchange(v)
        client = ScramClientExchange("ignored", pw, ["SCRAM-SHA-256"])
        first = server.client_first(client.client_first())
        final = client.server_first(first)
        if ok:
            client.server_final(server.client_final(final))
        else:
            with pytest.raises(ScramFailure):
                server.client_final(final)


@pytest.mark.parametrize("gs2", [b"n,,", b"y,,"])
def test_scram_accepts_empty_username_and_y_header(gs2: bytes) -> None:
    """libpq sends ``n=,`` (empty name); npgsql sends ``y,,``."""
    import base64
    import hashlib
    import hmac

    v = parse_verifier(make_verifier("pw", salt=b"0123456789abcdef"))
    server = ScramServerExchange(v)
    bare = "n=,r=clientnonce"
    first = server.client_first(gs2 + bare.encode()).decode()
    nonce = dict(x.split("=", 1) for x in first.split(","))["r"]
    without = f"c={base64.b64encode(gs2).decode()},r={nonce}"
    salted = hashlib.pbkdf2_hmac("sha256", b"pw", b"0123456789abcdef", 4096)
    ck = hmac.digest(salted, b"Client Key", "sha256")
    sig = hmac.digest(hashlib.sha256(ck).digest(), f"{bare},{first},{without}".encode(), "sha256")
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(ck, sig))).decode()
    assert server.client_final(f"{without},p={proof}".encode()).startswith(b"v=")


def test_scram_rejects_channel_binding_request() -> None:
    with pytest.raises(ScramFailure):
        ScramServerExchange(parse_verifier(make_verifier("pw"))).client_first(b"p=tls-server-end-point,,n=,r=x")
