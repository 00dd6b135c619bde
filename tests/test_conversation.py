"""The Conversation (hoopd.pgwire.conversation) fed protocol bytes, with no relay around it."""
from __future__ import annotations

from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import Conversation
from hoopd.pgwire.types import BE, FE
from tests.test_journal_helpers import bind, copy_response, describe, error, execute, parse, row, row_description, tag

INT4, TEXT = 23, 25


def send(c: Conversation, t: int, body: bytes, denied: bool = False):
    msg = c.client(t, body)
    c.sent(msg, denied=denied)
    return msg


def test_each_response_answers_its_client_message_through_sync() -> None:
    c = Conversation()
    p = send(c, FE.PARSE, parse("s1", "select $1::int", [INT4]))
    b = send(c, FE.BIND, bind("p1", "s1", [b"7"], result_formats=[1]))
    d = send(c, FE.DESCRIBE, describe("P", "p1"))
    e = send(c, FE.EXECUTE, execute("p1"))
    s = send(c, FE.SYNC, b"")
    assert [x.msg for x in c.queue] == [p, b, d, e, s]
    assert c.server(BE.PARSE_COMPLETE, b"").answers.msg is p
    assert c.server(BE.BIND_COMPLETE, b"").answers.msg is b
    assert c.prepared["s1"].text == "select $1::int" and c.portals["p1"].text == "select $1::int"
    assert c.server(BE.ROW_DESCRIPTION, row_description(("x", INT4))).answers.msg is d
    assert c.portals["p1"].columns.names == ("x",)
    r = c.server(BE.DATA_ROW, row(b"\0\0\0\7"))
    assert r.answers.msg is e and r.columns.formats == (1,)  # the Bind's result format applies to the rows
    assert c.server(BE.COMMAND_COMPLETE, tag("SELECT 1")).answers.msg is e
    z = c.server(BE.READY, b"T")
    assert z.answers.msg is s and not c.queue and c.status == "T"


def test_an_error_undoes_what_the_failed_and_skipped_messages_did() -> None:
    c = Conversation()
    send(c, FE.PARSE, parse("keep", "select 1"))
    send(c, FE.SYNC, b"")
    c.server(BE.PARSE_COMPLETE, b"")
    c.server(BE.READY, b"I")
    send(c, FE.PARSE, parse("bad", "selec 1"))  # the server refuses it
    send(c, FE.BIND, bind("", "keep", []))  # skipped by the server
    send(c, FE.CLOSE, b"S" + m.cstr("keep"))  # skipped too: "keep" stays
    send(c, FE.SYNC, b"")
    assert "bad" in c.prepared and "keep" not in c.prepared and "" in c.portals  # in effect when sent
    err = c.server(BE.ERROR, error("42601", "syntax error"))
    assert err.answers.op == "parse" and [x.op for x in c.queue] == ["sync"]
    assert set(c.prepared) == {"keep"} and not c.portals
    c.server(BE.READY, b"I")
    assert not c.queue


def test_what_is_sent_after_an_error_and_before_the_sync_has_no_effect() -> None:
    c = Conversation()
    send(c, FE.PARSE, parse("bad", "selec 1"))
    send(c, FE.FLUSH, b"")
    c.server(BE.ERROR, error("42601", "syntax error"))
    send(c, FE.PARSE, parse("late", "select 1"))  # the server discards it: still before the Sync
    send(c, FE.SYNC, b"")
    assert not c.prepared
    c.server(BE.READY, b"I")
    send(c, FE.PARSE, parse("after", "select 1"))
    assert set(c.prepared) == {"after"}


def test_a_denied_message_has_no_effect() -> None:
    c = Conversation()
    send(c, FE.PARSE, parse("s", "delete from t"), denied=True)
    assert "s" not in c.prepared and c.queue[0].denied


def test_a_multi_statement_query_counts_its_parts_and_resets_columns() -> None:
    c = Conversation()
    q = send(c, FE.QUERY, m.cstr("select 1; select 'a', 'b'"))
    c.server(BE.ROW_DESCRIPTION, row_description(("one", INT4)))
    first = c.server(BE.DATA_ROW, row(b"1"))
    assert first.part == 0 and first.columns.names == ("one",)
    c.server(BE.COMMAND_COMPLETE, tag("SELECT 1"))
    c.server(BE.ROW_DESCRIPTION, row_description(("a", TEXT), ("b", TEXT)))
    second = c.server(BE.DATA_ROW, row(b"a", b"b"))
    assert second.part == 1 and second.columns.names == ("a", "b") and second.answers.msg is q
    c.server(BE.COMMAND_COMPLETE, tag("SELECT 1"))
    assert c.server(BE.DATA_ROW, row(b"x")).columns is None  # a row nothing described
    c.server(BE.READY, b"I")
    assert not c.queue


def test_copy_state_and_statement_describe() -> None:
    c = Conversation()
    q = send(c, FE.QUERY, m.cstr("copy t to stdout"))
    c.server(BE.COPY_OUT, copy_response(1, binary=True))
    assert c.copy is not None and c.copy.direction == "out" and c.copy.binary and c.copy.answers.msg is q
    c.server(BE.COPY_DONE, b"")
    assert c.copy is None
    c.server(BE.COMMAND_COMPLETE, tag("COPY 1"))
    c.server(BE.READY, b"I")
    send(c, FE.PARSE, parse("s", "select 1 as one where $1 > 0", [0]))
    send(c, FE.DESCRIBE, describe("S", "s"))
    send(c, FE.SYNC, b"")
    c.server(BE.PARSE_COMPLETE, b"")
    assert c.prepared["s"].param_types == (0,)  # left for the server to choose
    c.server(BE.PARAMETER_DESCRIPTION, b"\0\1" + INT4.to_bytes(4, "big"))
    c.server(BE.ROW_DESCRIPTION, row_description(("one", INT4)))
    c.server(BE.READY, b"I")
    assert c.prepared["s"].columns.names == ("one",) and not c.queue
    assert c.prepared["s"].param_types == (INT4,)  # as the server described them


def test_messages_decode_once() -> None:
    c = Conversation()
    msg = c.client(FE.BIND, bind("", "", [b"1"]))
    assert msg.decoded() is msg.decoded()
    q = c.client(FE.QUERY, m.cstr("select 1"))
    assert q.sql(bytes.decode) is q.sql(bytes.decode) == "select 1"
