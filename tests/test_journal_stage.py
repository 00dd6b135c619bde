"""JournalStage fed with real protocol bytes: what each conversation leaves in the journal."""
from __future__ import annotations

import errno
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from hoopd.identity.base import Identity
from hoopd.journal import stage as stage_mod
from hoopd.journal.stage import JournalStage, split_statements
from hoopd.pgwire import messages as m
from hoopd.session import Deny, SessionInfo
from tests.test_journal_helpers import (FlakyOS, ManualSync, Talk, bind, copy_response, describe, error, execute, make_writer, parse,
                                        records, row, row_description, session_records, tag)

INT4, TEXT, BYTEA = 23, 25, 17


class Harness:
    def __init__(self, folder: Path, ops: Any = None, broken: int | None = None, relay: bool = False,
                 **cfg: Any) -> None:
        kw = {"ops": ops} if ops else {}
        self.folder = folder
        self.writer = make_writer(folder, fsync=cfg.pop("fsync", "never"), **kw, **cfg)
        self.writer.startService()
        self.clock = self.writer.clock
        self.stage = JournalStage(self.writer, self.writer.config)
        self.info = SessionInfo(id="0123456789abcdef", peer="10.0.0.7:5555", started=self.clock.seconds(),
                                identity=Identity("alice", frozenset({"dba", "ops"}), "local"), connection="shop",
                                level="admin", tls="TLSv1.3", application_name="psql")
        if ops is not None:
            ops.broken = broken  # the disk fails from here on
        self.talk: Any = None if relay else Talk(self.stage, self.info)  # relay: see relay_for
        self.opened: Any = None  # the relay's SessionStages

    def c(self, t: bytes, body: bytes) -> Any:
        return self.talk.c(t, body)

    def s(self, *msgs: tuple[bytes, bytes]) -> None:
        assert self.talk.s(*msgs) == [None] * len(msgs)

    def end(self, reason: str = "client terminate") -> list[dict[str, Any]]:
        if self.opened is not None:
            self.opened.close(reason)
        else:
            self.talk.end(reason)
        self.writer.stopService()
        return session_records(self.folder)


def kinds(recs: list[dict]) -> list[str]:
    return [x["kind"] for x in recs]


def by_kind(recs: list[dict], kind: str) -> list[dict]:
    return [x for x in recs if x["kind"] == kind]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_split_statements() -> None:
    assert split_statements("select 1") == ["select 1"]
    assert split_statements("select 1;") == ["select 1;"]
    assert split_statements("select 1; select 'a;b'; select $$x;y$$") == ["select 1", "select 'a;b'", "select $$x;y$$"]
    assert split_statements("selec 1; select 2") == ["selec 1; select 2"]  # does not parse: whole
    assert split_statements("select 'unterminated; select 2") == ["select 'unterminated; select 2"]


def test_simple_query_with_several_statements(h: Harness) -> None:
    assert h.c(b"Q", m.cstr("select 1 as a, 'x' as b; select null::text as c")) is None
    h.clock.advance(0.002)
    h.s((b"T", row_description(("a", INT4), ("b", TEXT))), (b"D", row(b"1", b"x")), (b"C", tag("SELECT 1")))
    h.clock.advance(0.001)
    h.s((b"T", row_description(("c", TEXT))), (b"D", row(None)), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    assert kinds(recs) == ["session_start", "statement", "result", "result", "session_end"]
    start = recs[0]
    assert (start["user"], start["groups"], start["source"], start["connection"], start["level"], start["peer"],
            start["tls"], start["application_name"], start["protocol"]) == (
        "alice", ["dba", "ops"], "local", "shop", "admin", "10.0.0.7:5555", "TLSv1.3", "psql", "3.0")
    st = recs[1]
    assert st["op"] == "query" and st["parts"] == ["select 1 as a, 'x' as b", "select null::text as c"]
    r0, r1 = recs[2], recs[3]
    assert (r0["stmt"], r0["part"], r0["columns"], r0["types"], r0["rows"], r0["tag"], r0["us"]) == (
        st["stmt"], 0, ["a", "b"], [INT4, TEXT], [["1", "x"]], "SELECT 1", 2000)
    assert (r1["part"], r1["rows"], r1["rows_total"], r1["truncated"], r1["us"]) == (1, [[None]], 1, False, 1000)
    assert [x["seq"] for x in recs] == list(range(1, 6))
    assert {x["session"] for x in recs} == {"0123456789abcdef"}
    end = recs[-1]
    assert end["reason"] == "client terminate" and end["statements"] == 1 and end["rows"] == 2 and end["errors"] == 0


def test_extended_protocol_params_text_binary_null(h: Harness) -> None:
    h.c(b"P", parse("", "select $1::int, $2::bytea, $3::text", [INT4, BYTEA, 0]))
    h.c(b"B", bind("", "", [b"42", b"\x00\xff", None], formats=[0, 1, 0], result_formats=[1]))
    h.c(b"D", describe("P", ""))
    h.c(b"E", execute())
    h.c(b"S", b"")
    h.s((b"1", b""), (b"2", b""), (b"T", row_description(("int4", INT4), ("bytea", BYTEA), ("text", TEXT), fmt=1)),
        (b"D", row(struct.pack("!i", 42), b"\x00\xff", None)), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    p, b, e = by_kind(recs, "statement")
    assert (p["op"], p["name"], p["text"], p["param_types"]) == ("parse", "", "select $1::int, $2::bytea, $3::text",
                                                               [INT4, BYTEA, 0])
    assert b["op"] == "bind" and b["params"] == ["42", b"\x00\xff", None] and b["text"] == p["text"]
    assert e["op"] == "execute" and e["text"] == p["text"] and e["portal"] == "" and e["max_rows"] == 0
    (res,) = by_kind(recs, "result")
    assert res["stmt"] == e["stmt"] and res["rows"] == [[b"\x00\x00\x00*", b"\x00\xff", None]]
    assert res["columns"] == ["int4", "bytea", "text"]


def test_statement_described_once_then_executed_later(h: Harness) -> None:
    """asyncpg's way: Parse + Describe(statement) + Sync, later Bind + Execute + Sync without Describe."""
    h.c(b"P", parse("s1", "select id, name from t where id = $1", [INT4]))
    h.c(b"D", describe("S", "s1"))
    h.c(b"S", b"")
    h.s((b"1", b""), (b"T", row_description(("id", INT4), ("name", TEXT))), (b"Z", b"I"))
    for n in (1, 2):
        h.c(b"B", bind("", "s1", [struct.pack("!i", n)], formats=[1], result_formats=[1, 0]))
        h.c(b"E", execute())
        h.c(b"S", b"")
        h.s((b"2", b""), (b"D", row(struct.pack("!i", n), f"name{n}".encode())), (b"C", tag("SELECT 1")),
            (b"Z", b"I"))
    recs = h.end()
    binds = [x for x in by_kind(recs, "statement") if x["op"] == "bind"]
    assert [x["params"] for x in binds] == [[b"\x00\x00\x00\x01"], [b"\x00\x00\x00\x02"]]
    res = by_kind(recs, "result")
    assert [x["columns"] for x in res] == [["id", "name"]] * 2
    assert [x["rows"] for x in res] == [[[b"\x00\x00\x00\x01", "name1"]], [[b"\x00\x00\x00\x02", "name2"]]]
    executes = [x["stmt"] for x in by_kind(recs, "statement") if x["op"] == "execute"]
    assert [x["stmt"] for x in res] == executes


def test_error_in_a_pipeline_skips_to_sync(h: Harness) -> None:
    h.c(b"P", parse("", "select 1/0"))
    h.c(b"B", bind("", "", []))
    h.c(b"E", execute())
    h.c(b"P", parse("", "select 2"))
    h.c(b"B", bind("", "", []))
    h.c(b"E", execute())
    h.c(b"S", b"")
    h.s((b"1", b""), (b"2", b""), (b"E", error("22012", "division by zero", detail="d", hint="h")), (b"Z", b"E"))
    h.c(b"Q", m.cstr("select 3"))
    h.s((b"T", row_description(("x", INT4))), (b"D", row(b"3")), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    stmts = by_kind(recs, "statement")
    (err,) = by_kind(recs, "error")
    assert err["stmt"] == stmts[2]["stmt"]
    assert (err["sqlstate"], err["severity"], err["message"], err["detail"], err["hint"]) == (
        "22012", "ERROR", "division by zero", "d", "h")
    (res,) = by_kind(recs, "result")
    assert res["stmt"] == stmts[-1]["stmt"] and res["rows"] == [["3"]]
    assert recs[-1]["errors"] == 1 and recs[-1]["statements"] == 3


def test_error_mid_result_keeps_the_rows_sent(h: Harness) -> None:
    h.c(b"Q", m.cstr("select 1/(3-g) from generate_series(1,5) g"))
    h.s((b"T", row_description(("x", INT4))), (b"D", row(b"0")), (b"D", row(b"1")),
        (b"E", error("22012", "division by zero")), (b"Z", b"I"))
    recs = h.end()
    assert kinds(recs)[1:4] == ["statement", "result", "error"]
    res = recs[2]
    assert res["failed"] and res["rows"] == [["0"], ["1"]] and res["tag"] is None


@pytest.mark.parametrize("cap, kept", [(2, 2), (0, 0), (-1, 5), (10, 5)])
def test_max_result_rows(tmp_path: Path, cap: int, kept: int) -> None:
    h = Harness(tmp_path, max_result_rows=cap)
    h.c(b"Q", m.cstr("select g from generate_series(1,5) g"))
    h.s((b"T", row_description(("g", INT4))), *[(b"D", row(str(i).encode())) for i in range(1, 6)],
        (b"C", tag("SELECT 5")), (b"Z", b"I"))
    (res,) = by_kind(h.end(), "result")
    assert len(res["rows"]) == kept and res["rows_total"] == 5 and res["truncated"] == (kept < 5)
    assert res["rows"] == [[str(i)] for i in range(1, kept + 1)]


@pytest.mark.parametrize("cap, kept", [(3, 3), (0, 0), (-1, 5)])
def test_rows_through_the_relay_are_kept_as_runs(tmp_path: Path, cap: int, kept: int) -> None:
    h = Harness(tmp_path, relay=True, max_result_rows=cap)
    relay, client, upstream = relay_for(h, [h.stage])
    assert h.opened.row_runs  # the journal takes DataRows as runs
    relay.client_data(m.query("select g, b from t"))
    rows = [(str(i).encode(), None if i == 2 else b"\xff" * i) for i in range(1, 6)]
    wire = (m.frame(b"T", row_description(("g", INT4), ("b", TEXT)))
            + b"".join(m.frame(b"D", row(*x)) for x in rows) + m.frame(b"C", tag("SELECT 5")) + m.ready_for_query(b"I"))
    relay.server_data(wire)
    assert client.value() == wire  # the client gets every byte as it was sent
    (res,) = by_kind(h.end(), "result")
    assert res["rows_total"] == 5 and res["truncated"] == (kept < 5) and res["columns"] == ["g", "b"]
    assert res["rows"] == [[g.decode(), b] for g, b in rows][:kept]  # not UTF-8: kept as bytes


def test_rows_records_of_an_older_format_are_read_as_they_were(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from hoopd.journal.verify import verify
    monkeypatch.setattr(stage_mod.r, "VERSION", 1)
    w = make_writer(tmp_path)
    w.startService()
    w.write({"session": "s1", "seq": 1, "kind": "result", "stmt": 1, "columns": ["a"], "types": [TEXT],
             "rows": [["x"], [None]], "rows_total": 2, "truncated": False, "tag": "SELECT 2"})
    w.stopService()
    monkeypatch.undo()
    assert stage_mod.r.VERSION == 2 and verify(stage_mod.r.list_segments(tmp_path), None, whole_dir=True).ok
    (res,) = by_kind(session_records(tmp_path), "result")
    assert res["rows"] == [["x"], [None]]


def test_undecodable_row_bytes_are_named_not_raised() -> None:
    rec = {"kind": "result", "formats": [0], "wire": m.frame(b"D", row(b"ok")) + b"D\x00\x00\x00\x09\x00\x01\x00"}
    got = stage_mod.r.expand(rec)
    assert got["rows"] == [["ok"]] and "after row 1" in got["rows_error"] and "wire" not in got


def test_big_results_go_out_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage_mod, "ROWS_CHUNK", 100)
    h = Harness(tmp_path, max_result_rows=-1)
    h.c(b"Q", m.cstr("select g from generate_series(1,50) g"))
    h.s((b"T", row_description(("g", TEXT))), *[(b"D", row(b"%020d" % i)) for i in range(50)],
        (b"C", tag("SELECT 50")), (b"Z", b"I"))
    recs = h.end()
    chunks, (res,) = by_kind(recs, "rows"), by_kind(recs, "result")
    assert len(chunks) == res["chunks"] > 5
    rows = [x for c in chunks for x in c["rows"]] + res["rows"]
    assert rows == [["%020d" % i] for i in range(50)] and res["rows_total"] == 50
    assert [c["first"] for c in chunks] == sorted({c["first"] for c in chunks}) and chunks[0]["first"] == 0


def test_oversize_row_is_counted(h: Harness) -> None:
    h.c(b"Q", m.cstr("select big"))
    h.s((b"T", row_description(("big", TEXT))), (b"D", row(b"small")))
    h.talk.stage.oversize(False, ord("D"), 5 << 20)
    h.s((b"C", tag("SELECT 2")), (b"Z", b"I"))
    (res,) = by_kind(h.end(), "result")
    assert res["rows"] == [["small"]] and res["rows_total"] == 2 and res["truncated"]


def test_copy_in_and_out(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_copy_bytes=10)
    h.c(b"Q", m.cstr("copy t from stdin"))
    h.s((b"G", copy_response(2)))
    for line in (b"1\talpha\n", b"2\tbeta\n"):
        assert h.c(b"d", line) is None
    h.c(b"c", b"")
    h.s((b"C", tag("COPY 2")), (b"Z", b"I"))
    h.c(b"Q", m.cstr("copy t to stdout (format binary)"))
    h.s((b"H", copy_response(2, binary=True)), (b"d", b"\x00\x01"), (b"d", b"\x00\x02"), (b"c", b""),
        (b"C", tag("COPY 2")), (b"Z", b"I"))
    recs = h.end()
    cin, cout = by_kind(recs, "copy")
    stmts = by_kind(recs, "statement")
    assert (cin["stmt"], cin["direction"], cin["format"], cin["bytes"], cin["rows"], cin["data"], cin["truncated"]) == (
        stmts[0]["stmt"], "in", "text", 15, 2, b"1\talpha\n2\t", True)
    assert (cout["direction"], cout["format"], cout["bytes"], cout["rows"], cout["data"], cout["truncated"]) == (
        "out", "binary", 4, 2, b"\x00\x01\x00\x02", False)
    assert [x["tag"] for x in by_kind(recs, "result")] == ["COPY 2", "COPY 2"]


def test_copy_fail(h: Harness) -> None:
    h.c(b"Q", m.cstr("copy t from stdin"))
    h.s((b"G", copy_response(1)))
    h.c(b"d", b"1\n")
    h.c(b"f", m.cstr("client gave up"))
    h.s((b"E", error("57014", "COPY from stdin failed: client gave up")), (b"Z", b"I"))
    recs = h.end()
    (cp,) = by_kind(recs, "copy")
    assert cp["failed"] == "client gave up" and cp["bytes"] == 2 and cp["rows"] is None
    assert by_kind(recs, "error")[0]["sqlstate"] == "57014"


def test_notice_notification_function_call_close_empty_and_suspended(h: Harness) -> None:
    h.c(b"Q", m.cstr("do $$ begin raise notice 'hi'; end $$"))
    h.s((b"N", error("00000", "hi", notice=True, severity="NOTICE")), (b"C", tag("DO")), (b"Z", b"I"))
    h.s((b"A", struct.pack("!i", 4242) + m.cstr("chan") + m.cstr("payload")))
    h.c(b"F", struct.pack("!ih", 1598, 1) + struct.pack("!h", 0) + struct.pack("!h", 1) + struct.pack("!i", 2)
        + b"42" + struct.pack("!h", 0))
    h.s((b"V", struct.pack("!i", 3) + b"abc"), (b"Z", b"I"))
    h.c(b"C", describe("S", "s1"))
    h.c(b"S", b"")
    h.s((b"3", b""), (b"Z", b"I"))
    h.c(b"Q", m.cstr(""))
    h.s((b"I", b""), (b"Z", b"I"))
    h.c(b"B", bind("c1", "", []))
    h.c(b"E", execute("c1", 1))
    h.c(b"E", execute("c1", 1))
    h.c(b"S", b"")
    h.s((b"2", b""), (b"D", row(b"1")), (b"s", b""), (b"D", row(b"2")), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    stmts = by_kind(recs, "statement")
    (notice,) = by_kind(recs, "notice")
    assert notice["stmt"] == stmts[0]["stmt"] and notice["message"] == "hi" and notice["severity"] == "NOTICE"
    (note,) = by_kind(recs, "notification")
    assert (note["pid"], note["channel"], note["payload"]) == (4242, "chan", "payload")
    call = stmts[1]
    assert (call["op"], call["oid"], call["args"]) == ("call", 1598, ["42"])
    results = by_kind(recs, "result")
    assert results[1]["value"] == b"abc" and results[1]["stmt"] == call["stmt"]
    assert (stmts[2]["op"], stmts[2]["target"], stmts[2]["name"]) == ("close", "statement", "s1")
    assert results[2]["empty"] and results[2]["stmt"] == stmts[3]["stmt"]
    assert results[3]["suspended"] and results[3]["rows"] == [["1"]] and results[4]["rows"] == [["2"]]
    assert [x["stmt"] for x in results[3:]] == [stmts[5]["stmt"], stmts[6]["stmt"]]


def test_bind_values_are_capped(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_value_bytes=4)
    h.c(b"B", bind("", "", [b"abcdefgh", b"xy"]))
    (b,) = by_kind(h.end(), "statement")
    assert b["params"] == ["abcd", "xy"] and b["cut"] == [[0, 8]]


def test_malformed_message_is_recorded_as_it_came(h: Harness) -> None:
    assert h.c(b"Q", b"select 1") is None  # no terminator: PostgreSQL will refuse it
    (st,) = by_kind(h.end(), "statement")
    assert st["op"] == "malformed" and st["raw"] == b"select 1" and st["type"] == "Q"


def test_fail_closed_and_recovery(tmp_path: Path) -> None:
    ops = FlakyOS()
    h = Harness(tmp_path, ops=ops, fsync="always")
    h.c(b"Q", m.cstr("select 1"))
    h.s((b"C", tag("SELECT 1")), (b"Z", b"I"))
    ops.broken = errno.EIO
    deny = h.c(b"Q", m.cstr("drop table precious"))
    assert isinstance(deny, Deny) and deny.sqlstate == "58030" and "audit journal is unavailable" in deny.message
    h.s((b"Z", b"I"))  # the relay's marker query is answered; its error is rewritten before stages see it
    ops.broken = None
    assert h.c(b"Q", m.cstr("select 2")) is None
    h.s((b"T", row_description(("x", INT4))), (b"D", row(b"2")), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    texts = [x["text"] for x in by_kind(recs, "statement")]
    assert texts == ["select 1", "select 2"]
    assert by_kind(recs, "result")[-1]["rows"] == [["2"]]
    assert [x["seq"] for x in recs] == list(range(1, len(recs) + 1))
    assert recs[-1]["denied"] == 1


def test_session_start_written_late_when_the_journal_was_down(tmp_path: Path) -> None:
    ops = FlakyOS()
    h = Harness(tmp_path, ops=ops, broken=errno.ENOSPC)
    assert isinstance(h.c(b"Q", m.cstr("select 1")), Deny)
    h.s((b"Z", b"I"))
    ops.broken = None
    assert h.c(b"Q", m.cstr("select 2")) is None
    recs = h.end()
    assert kinds(recs)[:2] == ["session_start", "statement"] and recs[0]["seq"] == 1


def test_denied_by_a_later_stage_refers_to_the_statement(h: Harness) -> None:
    assert h.talk.c(b"Q", m.cstr("delete from orders"), denied_after=Deny("hoopd: no deletes", hint="ask")) is None
    h.s((b"Z", b"I"))
    h.c(b"Q", m.cstr("select 1"))
    h.s((b"T", row_description(("x", INT4))), (b"D", row(b"1")), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    st, denied = by_kind(recs, "statement")[0], by_kind(recs, "denied")[0]
    assert denied["stmt"] == st["stmt"] and denied["message"] == "hoopd: no deletes" and denied["hint"] == "ask"
    assert denied["sqlstate"] == "42501"
    assert by_kind(recs, "result")[0]["stmt"] == by_kind(recs, "statement")[1]["stmt"]


def test_denied_by_an_earlier_stage_records_what_was_asked(h: Harness) -> None:
    h.c(b"P", parse("", "select 1"))
    h.talk.denied(b"B", bind("", "", [b"x"]), Deny("hoopd: nope"))
    h.c(b"E", execute())
    h.c(b"S", b"")
    h.s((b"1", b""), (b"Z", b"E"))
    h.c(b"Q", m.cstr("select 2"))
    h.s((b"C", tag("SELECT 1")), (b"Z", b"I"))
    recs = h.end()
    (denied,) = by_kind(recs, "denied")
    assert denied["op"] == "bind" and denied["params"] == ["x"] and "stmt" not in denied
    assert by_kind(recs, "result")[0]["stmt"] == by_kind(recs, "statement")[-1]["stmt"]


# --- through the real relay -------------------------------------------------------------

class Policy:
    name = "policy"
    client_types = frozenset(b"Q")
    server_types: frozenset[int] = frozenset()
    rewrites: frozenset[int] = frozenset()

    def open(self, info, conversation):
        return self

    def client(self, msg):
        return Deny("hoopd: no drops") if b"drop" in msg.body else None

    def __getattr__(self, name: str) -> Any:
        return lambda *a: None


class CheckingUpstream(StringTransport):
    """An upstream that, on each write, notes whether each statement was already journaled."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder
        self.seen: list[tuple[bytes, bool]] = []

    def write(self, data: bytes) -> None:
        texts = [x.get("text") for x in records(self.folder) if x.get("kind") == "statement"]
        self.seen.append((data, bool(texts) and texts[-1].encode() in data))
        super().write(data)


def relay_for(h: Harness, stages: list) -> tuple[Any, StringTransport, CheckingUpstream]:
    from hoopd.proxy.pipeline import Pipeline
    from hoopd.proxy.relay import Relay
    from tests.test_journal_helpers import Log

    client, upstream = StringTransport(), CheckingUpstream(h.folder)
    h.opened = Pipeline(stages).open(h.info)
    return Relay(h.info, client, upstream, h.opened, Log(), lambda: None), client, upstream


def test_relay_forwards_only_what_is_journaled_and_synced(tmp_path: Path) -> None:
    ops = FlakyOS()
    thread = ManualSync(ops)
    h = Harness(tmp_path, ops=ops, fsync="always", relay=True, sync=thread)
    relay, client, upstream = relay_for(h, [Policy(), h.stage])
    synced = ops.fsyncs
    relay.client_data(m.query("select 42") + m.query("select 43"))
    assert upstream.seen == [] and ops.fsyncs == synced  # written, syncing in the thread: held
    thread.run()
    assert upstream.seen == [(m.query("select 42"), True)] and ops.fsyncs == synced + 1  # 43 waits behind it
    thread.run()
    assert upstream.seen[1] == (m.query("select 43"), True) and ops.fsyncs == synced + 2
    relay.client_data(m.query("drop table t"))  # denied by policy before the journal saw it
    assert b"drop" not in upstream.value()
    h.end()
    (denied,) = by_kind(session_records(tmp_path), "denied")
    assert denied["text"] == "drop table t" and denied["message"] == "hoopd: no drops"


def test_relay_refuses_statements_the_journal_cannot_record(tmp_path: Path) -> None:
    ops = FlakyOS()
    h = Harness(tmp_path, ops=ops, fsync="always", relay=True)
    relay, client, upstream = relay_for(h, [h.stage])
    ops.broken = errno.ENOSPC
    relay.client_data(m.query("update accounts set balance = 0"))
    sent = upstream.value()
    assert b"update" not in sent and sent.startswith(b"Q")
    marker = m.decode_query(sent[5:])
    relay.server_data(m.error_response("42601", f'syntax error at or near "{marker}"') + m.ready_for_query(b"I"))
    out = client.value()
    fields = m.decode_fields(out[5:out.index(b"Z")])
    assert fields["C"] == "58030" and "audit journal is unavailable" in fields["M"]
    ops.broken = None
    relay.client_data(m.query("select 1"))
    assert upstream.seen[-1] == (m.query("select 1"), True)
    h.end()


def test_other_parts_record_into_the_session_sequence(h: Harness) -> None:
    h.c(b"Q", m.cstr("select 1"))
    h.stage.record(h.info, "decision", {"stmt": 1, "rule": "read-only", "verdict": "allow"})
    h.stage.reconfigure(replace(h.writer.config, max_result_rows=1))
    h.s((b"T", row_description(("x", INT4))), (b"D", row(b"1")), (b"D", row(b"2")), (b"C", tag("SELECT 2")),
        (b"Z", b"I"))
    recs = h.end()
    assert kinds(recs) == ["session_start", "statement", "decision", "result", "session_end"]
    assert [x["seq"] for x in recs] == [1, 2, 3, 4, 5]
    assert recs[3]["rows"] == [["1"]] and recs[3]["truncated"]


def test_copy_data_sent_before_the_copy_in_response(h: Harness) -> None:
    """asyncpg sends the COPY and its data without waiting; an earlier statement in flight
    completes in between and must not take the COPY's data."""
    h.c(b"Q", m.cstr("select 1"))
    h.c(b"Q", m.cstr("copy n from stdin"))
    h.c(b"d", b"3\tc\n")
    h.c(b"c", b"")
    h.s((b"T", row_description(("x", INT4))), (b"D", row(b"1")), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    h.s((b"G", copy_response(2)), (b"C", tag("COPY 1")), (b"Z", b"I"))
    recs = h.end()
    (cp,) = by_kind(recs, "copy")
    stmts = by_kind(recs, "statement")
    assert (cp["stmt"], cp["data"], cp["rows"], cp["direction"]) == (stmts[1]["stmt"], b"3\tc\n", 1, "in")
    assert kinds(recs).index("copy") > [i for i, x in enumerate(recs) if x["kind"] == "result"][0]


def test_copy_in_pipelined_in_the_extended_protocol(h: Harness) -> None:
    h.c(b"P", parse("", "copy n from stdin"))
    h.c(b"B", bind("", "", []))
    h.c(b"E", execute())
    h.c(b"S", b"")
    h.c(b"d", b"1\n")
    h.c(b"c", b"")
    h.s((b"1", b""), (b"2", b""), (b"G", copy_response(1)), (b"C", tag("COPY 1")), (b"Z", b"I"))
    recs = h.end()
    (cp,) = by_kind(recs, "copy")
    assert cp["stmt"] == by_kind(recs, "statement")[2]["stmt"] and cp["data"] == b"1\n" and cp["rows"] == 1
