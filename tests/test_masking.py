"""Masking without a server: detectors (true and false positives), strategies, rules and
their config, and the stage's rewriting of DataRows (re-framed rows always parse)."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoopd.config import parse
from hoopd.confkit import ConfigError
from hoopd.identity.base import Identity
from hoopd.masking import detect
from hoopd.masking.jsontext import mask_json
from hoopd.masking.rules import MaskingConfig, MaskRule
from hoopd.masking.stage import MaskingSession, MaskingStage, _map_array, _map_record
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import Columns, Conversation, ServerMessage
from hoopd.pgwire.types import BE
from hoopd.session import EndSession, SessionInfo


def found(name: str, text: str) -> list[str]:
    return [text[a:b] for a, b in detect.DETECTORS[name](text)]


@pytest.mark.parametrize("name,text,expected", [
    ("email", "write to ada.l@example.co.uk today", ["ada.l@example.co.uk"]),
    ("email", "user@localhost is not a mail address, a@b neither", []),
    ("card", "visa 4111 1111 1111 1111 ok", ["4111 1111 1111 1111"]),
    ("card", "amex 378282246310005", ["378282246310005"]),
    ("card", "order 4111111111111112 fails Luhn", []),
    ("card", "0000000000000000", []),  # passes Luhn, one repeated digit
    ("iban", "pay DE89 3704 0044 0532 0130 00 now", ["DE89 3704 0044 0532 0130 00"]),
    ("iban", "GB82WEST12345698765432", ["GB82WEST12345698765432"]),
    ("iban", "DE89370400440532013001", []),  # mod-97 fails
    ("ssn", "ssn 078-05-1120", ["078-05-1120"]),
    ("ssn", "id 123456789 and 666-12-3456 and 900-12-3456 and 123-00-4567", []),
    ("phone", "call +1 (415) 555-2671 or +442071838750", ["+1 (415) 555-2671", "+442071838750"]),
    ("phone", "version 1.2.3 and year 2024", []),
    ("ipv4", "from 10.0.0.7 to 192.168.1.255", ["10.0.0.7", "192.168.1.255"]),
    ("ipv4", "version 1.2.3.4.5 and 999.1.1.1", []),
    ("ipv6", "host 2001:db8::1 up", ["2001:db8::1"]),
    ("ipv6", "time 12:30:45", []),
    ("jwt", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk",
     ["eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"]),
    ("api_key", "aws AKIAIOSFODNN7EXAMPLE and ghp_" + "a" * 36, ["AKIAIOSFODNN7EXAMPLE", "ghp_" + "a" * 36]),
    ("api_key", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", ["sk_live_4eC39HqLyjWDarjtT1zdp7dc"]),
    ("secret", "token=Zx8Qw3Lp0Vb7Nm2Rt5Yk9Hs1Dg4Fj6Ac", ["Zx8Qw3Lp0Vb7Nm2Rt5Yk9Hs1Dg4Fj6Ac"]),
    ("secret", "path /usr/local/share/postgresql/extension/", []),
    ("secret", "00000000000000000000000000000000000000", []),
])
def test_detectors(name: str, text: str, expected: list[str]) -> None:
    assert found(name, text) == expected


def masker(**kw):
    rule = MaskRule("r", **({"detectors": ("email",)} | kw))
    return MaskingConfig((rule,), b"k" * 32).masker("read_only", "bob", (), "psql", "shop")


def test_strategies() -> None:
    text = "mail ada@example.com"
    assert masker().mask(text) == ("mail ****", False)
    assert masker(token="[email]").mask(text) == ("mail [email]", False)
    assert masker(strategy="partial", keep_first=1, keep_last=4).mask(text) == ("mail a**********.com", False)
    h1, _ = masker(strategy="hash").mask(text)
    h2, _ = masker(strategy="hash").mask("to ada@example.com")
    assert h1 and h1.startswith("mail #") and h1[5:] == h2[3:] and "ada" not in h1  # stable, keyed
    assert masker(strategy="null").mask(text)[1] is True
    assert masker().mask("nothing here") == (None, False)


def test_scope() -> None:
    cfg = MaskingConfig((MaskRule("r", ("email",), groups=("analysts",), applications=("cursor*",)),))
    assert cfg.masker("read_only", "bob", ("analysts",), "cursor-agent", "shop") is not None
    assert cfg.masker("read_only", "bob", ("dba",), "cursor-agent", "shop") is None
    assert cfg.masker("read_only", "bob", ("analysts",), "psql", "shop") is None
    assert cfg.masker("admin", "bob", ("analysts",), "cursor-agent", "shop") is None  # admin: clear by default
    by_user = MaskingConfig((MaskRule("r", ("email",), users=("Bob",), levels=frozenset({"admin"})),))
    assert by_user.masker("admin", "BOB", (), "", None) is not None


@pytest.mark.parametrize("rules,message", [
    ([{"name": "a", "detectors": ["emial"]}], 'masking.rules[0].detectors: unknown detector "emial"'),
    ([{"name": "a"}], "masking.rules[0].columns: a rule needs at least one column, detector or pattern"),
    ([{"name": "a", "patterns": ["("]}], "masking.rules[0].patterns: invalid regular expression"),
    ([{"name": "a", "detectors": "email", "strategy": "hash"}], "masking.hash_key_file: is required"),
    ([{"name": "a", "detectors": "email", "strategy": "blur"}], "masking.rules[0].strategy: expected one of"),
    ([{"name": "a", "detectors": "email", "levels": ["root"]}], 'masking.rules[0].levels: unknown access level'),
    ([{"name": "a", "detectors": "email"}, {"name": "a", "detectors": "card"}],
     'masking.rules[1].name: duplicate masking rule name "a"'),
    ([{"name": "a", "detectors": "email", "colour": "red"}], "masking.rules[0].colour: unknown key"),
])
def test_config_errors_name_the_key(rules: list, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"masking": {"rules": rules}})
    assert str(e.value).startswith(message)


def test_config_reads_the_hash_key(tmp_path) -> None:
    (tmp_path / "mask.key").write_text("a-mask-key-of-enough-length\n")
    cfg = parse({"masking": {"hash_key_file": "mask.key", "rules": [{"name": "a", "detectors": "email",
                                                                     "strategy": "hash"}]}}, tmp_path)
    assert cfg.masking is not None and cfg.masking.hash_key == b"a-mask-key-of-enough-length"
    assert "a-mask-key" not in repr(cfg.masking)
    assert parse({}).masking is None  # no rules: no masking stage


def test_json_documents_stay_json() -> None:
    mask = masker().mask
    one = lambda s: mask(s)[0]  # noqa: E731
    assert mask_json('{"a": "x@example.com", "n": 1}', one) == '{"a": "****", "n": 1}'
    assert mask_json('{"k":1,"k":"ada@example.com"}', one) == '{"k": 1, "k": "****"}'  # json keeps duplicates
    assert mask_json('[1, 2.50, null]', one) is None


def session(rule: MaskRule) -> MaskingSession:
    info = SessionInfo("s", "p", 0.0, identity=Identity("bob"), level="read_only")
    obj = MaskingStage(MaskingConfig((rule,))).open(info, Conversation())
    assert isinstance(obj, MaskingSession)
    return obj


def row(values, types, formats) -> ServerMessage:
    return ServerMessage(BE.DATA_ROW, m.encode_data_row(values), None, 0,
                         Columns(tuple(f"c{i}" for i in range(len(types))), tuple(types), tuple(formats)))


def binary_array(elem_oid: int, items: list[bytes | None]) -> bytes:
    head = struct.pack("!iiiii", 1, int(any(x is None for x in items)), elem_oid, len(items), 1)
    return head + b"".join(struct.pack("!i", -1) if x is None else struct.pack("!i", len(x)) + x for x in items)


def test_rows_in_text_and_binary() -> None:
    s = session(MaskRule("e", ("email",)))
    new = s.server(row([b"ada@example.com", b"42", None], (25, 23, 25), (0, 0, 0)))
    assert m.decode_data_row(new) == (b"****", b"42", None)
    arr = binary_array(25, [b"x", None, b"ada@example.com"])
    new = s.server(row([arr, b"\x01" + b'{"e": "ada@example.com"}'], (1009, 3802), (1, 1)))
    a, j = m.decode_data_row(new)
    assert a == binary_array(25, [b"x", None, b"****"]) and j == b'\x01{"e": "****"}'
    rec = struct.pack("!i", 2) + struct.pack("!ii", 23, 4) + struct.pack("!i", 7) + struct.pack("!ii", 25, 15) \
        + b"ada@example.com"
    (out,) = m.decode_data_row(s.server(row([rec], (16400,), (1,))))
    assert out == struct.pack("!i", 2) + struct.pack("!ii", 23, 4) + struct.pack("!i", 7) + struct.pack("!ii", 25, 4) \
        + b"****"
    assert s.server(row([b"ada@example.com"], (25,), (0,))) is not None
    assert s.server(row([b"nothing"], (25,), (0,))) is None  # unchanged rows are not rebuilt


def test_what_cannot_be_read_ends_the_session() -> None:
    s = session(MaskRule("e", ("email",)))
    with pytest.raises(EndSession, match="binary format, which masking cannot read"):
        s.server(row([b"\x07\x01garbage"], (16500,), (1,)))  # an unknown type's binary value
    with pytest.raises(EndSession, match="binary COPY"):
        s.server(ServerMessage(BE.COPY_OUT, b"\x01\x00\x00", None, 0, None))


def test_errors_and_notifications() -> None:
    s = session(MaskRule("e", ("email",)))
    err = m.error_response("23505", "duplicate key", detail="Key (email)=(ada@example.com) already exists.")[5:]
    fields = m.decode_fields(s.server(ServerMessage(BE.ERROR, err, None, 0, None)))
    assert fields["D"] == "Key (email)=(****) already exists." and fields["C"] == "23505"
    note = struct.pack("!i", 7) + b"ch\0to ada@example.com\0"
    assert m.decode_notification(s.server(ServerMessage(BE.NOTIFICATION, note, None, 0, None))) == (7, "ch", "to ****")


def test_sessions_no_rule_applies_to_are_left_alone() -> None:
    info = SessionInfo("s", "p", 0.0, identity=Identity("dev"), level="admin")
    assert MaskingStage(MaskingConfig((MaskRule("e", ("email",)),))).open(info, Conversation()) is None


_values = st.lists(st.one_of(st.none(), st.text(max_size=30).map(str.encode),
                             st.sampled_from([b"ada@example.com", b"4111 1111 1111 1111"])), max_size=8)


@given(_values)
def test_rewritten_rows_and_arrays_always_parse(values: list[bytes | None]) -> None:
    s = session(MaskRule("e", ("email", "card")))
    new = s.server(row(values, (25,) * len(values), (0,) * len(values)))
    out = m.decode_data_row(new) if new is not None else tuple(values)
    assert len(out) == len(values) and all((a is None) == (b is None) for a, b in zip(out, values))
    assert not any(v and (b"ada@" in v or b"4111 1111" in v) for v in out)
    arr = binary_array(25, values)
    walked = _map_array(arr, lambda raw, oid: s._value(raw, oid, 1, "utf-8", 0))
    assert _map_array(walked or arr, lambda raw, oid: (None, False)) is None  # still a well-formed array
    assert _map_record(struct.pack("!i", 0), lambda raw, oid: (None, False)) is None


def test_explain_shows_rules_and_result(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hoopd import cli
    conf = tmp_path / "hoopd.toml"
    conf.write_text('[[masking.rules]]\nname = "contact"\ndetectors = ["email"]\ngroups = ["ai-agents"]\n'
                    '[connections.shop]\nhost = "127.0.0.1"\n[connections.shop.credentials.default]\nuser = "u"\n'
                    'password = "p"\n[connections.shop.access]\nai-agents = "read_only"\ndba = "admin"\n')
    base = ["masking", "explain", "--config", str(conf), "--connection", "shop"]
    assert cli.main([*base, "--groups", "ai-agents", "mail ada@example.com \x1b[2J"]) == 0
    out = capsys.readouterr().out
    assert "contact (redact): 'ada@example.com'" in out and "-> 'mail **** " in out and "\x1b" not in out
    assert cli.main([*base, "--groups", "dba", "mail ada@example.com"]) == 1
    assert "no masking rule applies" in capsys.readouterr().out
    assert cli.main([*base, "--groups", "ai-agents", "--json", "ada@example.com"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "****"
    assert cli.main([*base[:4], "--connection", "nope", "x"]) == 2
    assert 'no connection "nope"' in capsys.readouterr().err


def test_a_null_rule_where_there_is_no_null_redacts_the_spans() -> None:
    s = session(MaskRule("e", ("email",), strategy="null", token="[gone]"))
    err = m.error_response("23505", "duplicate key", detail="Key (email)=(ada@example.com) already exists.")[5:]
    fields = m.decode_fields(s.server(ServerMessage(BE.ERROR, err, None, 0, None)))
    assert fields["D"] == "Key (email)=([gone]) already exists."
    assert m.decode_data_row(s.server(row([b"ada@example.com", b"x"], (25, 25), (0, 0)))) == (None, b"x")


_VALUE = st.one_of(st.none(), st.sampled_from([b"ada@example.com", b"4111 1111 1111 1111", b"1234567890123",
                                               b"call 555", b"  ", b"-", b"plain"]),
                   st.binary(max_size=12))


@given(st.lists(st.lists(_VALUE, min_size=2, max_size=2), min_size=1, max_size=30))
def test_a_run_of_rows_is_masked_exactly_as_row_by_row(rows):
    from hoopd.pgwire.conversation import RowRun

    s = session(MaskRule("e", ("email", "card")))
    cols = Columns(("a", "b"), (25, 25), (0, 0))
    first = ServerMessage(BE.DATA_ROW, m.encode_data_row(rows[0]), None, 0, cols)
    framed = [m.frame(b"D", m.encode_data_row(r)) for r in rows]
    one_by_one = []
    for r, f in zip(rows, framed):
        new = s.server(ServerMessage(BE.DATA_ROW, m.encode_data_row(r), None, 0, cols))
        one_by_one.append(f if new is None else m.frame(b"D", new))
    whole = s.server_rows(RowRun(b"".join(framed), len(rows), first))
    assert (b"".join(framed) if whole is None else whole) == b"".join(one_by_one)


_PIECES = st.sampled_from(["ada@example.com", "4111 1111 1111 1111", "4111-1111-1111-1111", "078-05-1120",
                           "+1 (555) 010-9999", "10.0.0.1", "fe80::1", "DE89370400440532013000",
                           "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl",
                           "AKIAABCDEFGHIJKLMNOP", "ghp_" + "a1" * 18, "x" * 40, " ", "-", ".", "7", "\x00\x00\x01"])


@given(st.lists(_PIECES, max_size=8))
def test_every_detector_match_overlaps_a_prefilter_span(pieces):
    text = "".join(pieces)
    pf = detect.prefilter(detect.DETECTORS)
    spans = pf.spans(text.encode())
    found = [s for d in detect.DETECTORS.values() for s in d(text)]
    assert bool(found) <= pf.search(text.encode())
    for a, b in found:  # (ASCII text: character and byte offsets agree)
        assert any(x < b and a < y for x, y in spans), (text, (a, b), spans)  # overlaps: the same row
