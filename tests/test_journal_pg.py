"""The journal stage in the real gateway (in-process) with real PostgreSQL and real clients:
every statement, parameter and row they sent and got is in the journal."""
from __future__ import annotations

import asyncio
import errno
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from hoopd.config import parse
from hoopd.journal import records as r
from hoopd.journal.stage import JournalStage
from hoopd.journal.verify import verify
from hoopd.journal.writer import JournalWriter
from hoopd.proxy.pipeline import Pipeline
from hoopd.tap import GatewayService
from tests.gateway import USERS, _VERIFIERS, free_port
from tests.test_journal_helpers import FlakyOS, session_records

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(pg, tmp_path: Path):
    port = free_port()
    cfg = parse({
        "listen": {"postgres": f"tcp:{port}:interface=127.0.0.1"},
        "journal": {"dir": str(tmp_path / "journal"), "fsync": "always", "max_result_rows": 100},
        "users": [{"name": "dev", "password_hash": _VERIFIERS["dev"], "groups": ["dba"]}],
        "connections": {"shop": {"host": "127.0.0.1", "port": pg.port, "tls": "disable",
                                 "credentials": {"default": {"user": "app_scram", "password": pg.app_scram.password}},
                                 "access": {"dba": "admin"}}},
    })
    ops = FlakyOS()
    writer = JournalWriter(cfg.journal, cfg.gateway.node, reactor, ops=ops)
    writer.startService()
    # the gateway's own journal is off: this test's writer (with injectable failures) is the journal
    svc = GatewayService(replace(cfg, journal=replace(cfg.journal, dir=None)), reactor)
    old = svc.factory.pipeline
    svc.factory.pipeline = Pipeline([*old.client_stages, JournalStage(writer, cfg.journal)], old.observers)
    svc.startService()
    yield {"port": port, "folder": tmp_path / "journal", "ops": ops,
           "dsn": f"host=127.0.0.1 port={port} dbname=shop user=dev password={USERS['dev'][0]} sslmode=disable"}
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))
    writer.stopService()


def by_session(folder: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for rec in session_records(folder):
        out.setdefault(rec["session"], []).append(rec)
    return out


def wait_ended(folder: Path, n: int = 1):
    @defer.inlineCallbacks
    def poll():
        from twisted.internet.task import deferLater
        for _ in range(200):
            ended = [x for x in session_records(folder) if x["kind"] == "session_end"]
            if len(ended) >= n:
                return
            yield deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("sessions did not end")
    return poll()


@pytest_twisted.inlineCallbacks
def test_psycopg_conversation_is_recorded(gateway):
    def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with psycopg.connect(gateway["dsn"], autocommit=True) as c:
            out["multi"] = c.execute("select 1 as one; select 'two' as two").fetchall()
            out["params"] = c.execute("select %b::bytea as bin, %s::int as n, %s::text as nothing",
                                      (b"\x00\x01\xff", 5, None)).fetchone()
            c.execute("create temp table t (a int, b text)")
            with c.cursor().copy("copy t from stdin") as cp:
                cp.write_row((1, "alpha"))
                cp.write_row((2, "beta"))
            with c.cursor().copy("copy t to stdout") as cp:
                out["copied"] = [bytes(x) for x in cp]
            with c.pipeline():
                c.execute("insert into t values (%s, %s)", (3, "gamma"))
                c.execute("select count(*) from t")
            c.execute("do $$ begin raise notice 'hello from plpgsql'; end $$")
            c.execute("listen ch")
            c.execute("notify ch, 'the payload'")
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("select 1/0")
            out["rows"] = c.execute("select id, name from customers order by id").fetchall()
        return out

    out = yield threads.deferToThread(scenario)
    yield wait_ended(gateway["folder"])
    (recs,) = by_session(gateway["folder"]).values()
    assert [x["seq"] for x in recs] == list(range(1, len(recs) + 1))
    assert recs[0]["kind"] == "session_start" and recs[0]["user"] == "dev" and recs[0]["connection"] == "shop"
    assert recs[-1]["kind"] == "session_end" and recs[-1]["reason"] == "client terminate"
    stmts = [x for x in recs if x["kind"] == "statement"]
    texts = " | ".join(str(x.get("text")) for x in stmts)
    for sql in ("select 1 as one; select 'two' as two", "copy t from stdin", "copy t to stdout", "listen ch",
                "notify ch, 'the payload'", "select 1/0", "select id, name from customers order by id"):
        assert sql in texts
    binds = [x for x in stmts if x["op"] == "bind"]
    params = [x["params"] for x in binds]  # psycopg sends ints in binary, %b as binary, strings as text
    assert [b"\x00\x01\xff", b"\x00\x05", None] in params and [b"\x00\x03", "gamma"] in params
    results = [x for x in recs if x["kind"] == "result"]
    by_stmt = {x["stmt"]: x for x in stmts}
    multi = [x for x in results if by_stmt[x["stmt"]].get("text", "").startswith("select 1 as one")]
    assert [(x["part"], x["rows"]) for x in multi] == [(0, [["1"]]), (1, [["two"]])]
    customers = [x for x in results if x.get("columns") == ["id", "name"]][-1]
    assert customers["rows"] == [["1", "Ada Lovelace"], ["2", "Alan Turing"], ["3", "Grace Hopper"]]
    assert customers["tag"] == "SELECT 3" and customers["us"] > 0
    assert [x for x in results if x.get("columns") == ["bin", "n", "nothing"]][0]["rows"] == [["\\x0001ff", "5", None]]
    cin, cout = [x for x in recs if x["kind"] == "copy"]
    assert (cin["direction"], cin["rows"], cin["data"]) == ("in", 2, b"1\talpha\n2\tbeta\n")
    assert (cout["direction"], cout["rows"], cout["data"]) == ("out", 2, b"".join(out["copied"]))
    (notice,) = [x for x in recs if x["kind"] == "notice"]
    assert notice["message"] == "hello from plpgsql" and by_stmt[notice["stmt"]]["text"].startswith("do $$")
    (note,) = [x for x in recs if x["kind"] == "notification"]
    assert (note["channel"], note["payload"]) == ("ch", "the payload")
    (err,) = [x for x in recs if x["kind"] == "error"]
    assert err["sqlstate"] == "22012" and "1/0" in by_stmt[err["stmt"]]["text"]
    count = [x for x in results if x.get("columns") == ["count"]][0]
    assert count["rows"] == [["3"]]
    assert verify(r.list_segments(gateway["folder"]), None, whole_dir=True).ok


@pytest_twisted.inlineCallbacks
def test_asyncpg_prepared_statements_and_binary_copy(gateway):
    async def scenario() -> Any:
        conn = await asyncpg.connect(host="127.0.0.1", port=gateway["port"], user="dev", password=USERS["dev"][0],
                                     database="shop", ssl=False)
        try:
            one = await conn.fetch("select id, name from customers where id = $1", 2)
            stmt = await conn.prepare("select item, amount from orders where customer_id = $1 order by id")
            a, b = await stmt.fetch(3), await stmt.fetch(1)
            await conn.execute("create temp table n (x int, y text)")
            await conn.executemany("insert into n values ($1, $2)", [(1, "a"), (2, "b")])
            await conn.copy_records_to_table("n", records=[(3, "c")])
            rows = await conn.fetch("select x, y from n order by x")
            return one, a, b, rows
        finally:
            await conn.close()

    one, a, b, rows = yield threads.deferToThread(asyncio.run, scenario())
    assert [tuple(x) for x in rows] == [(1, "a"), (2, "b"), (3, "c")]
    yield wait_ended(gateway["folder"])
    (recs,) = by_session(gateway["folder"]).values()
    stmts = {x["stmt"]: x for x in recs if x["kind"] == "statement"}
    results = [x for x in recs if x["kind"] == "result" and x.get("columns")]
    turing = [x for x in results if x["columns"] == ["id", "name"]][0]
    assert turing["rows"] == [[b"\x00\x00\x00\x02", b"Alan Turing"]]  # binary, as asyncpg asked
    orders = [x for x in results if x["columns"] == ["item", "amount"]]
    assert [[row[0] for row in x["rows"]] for x in orders] == [[b"compiler", b"nanosecond wire"],
                                                               [b"analytical engine"]]
    assert all(stmts[x["stmt"]]["op"] == "execute" and "from orders" in stmts[x["stmt"]]["text"] for x in orders)
    binds = [x["params"] for x in stmts.values() if x["op"] == "bind"]
    assert [b"\x00\x00\x00\x01", b"a"] in binds and [b"\x00\x00\x00\x02", b"b"] in binds
    (cp,) = [x for x in recs if x["kind"] == "copy"]
    assert cp["direction"] == "in" and cp["format"] == "binary" and cp["rows"] == 1 and b"c" in cp["data"]
    final = [x for x in results if x["columns"] == ["x", "y"]][0]
    assert len(final["rows"]) == 3


@pytest_twisted.inlineCallbacks
def test_statements_fail_closed_while_the_journal_cannot_write(gateway):
    ops = gateway["ops"]

    def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with psycopg.connect(gateway["dsn"], autocommit=True) as c:
            c.execute("create temp table audit_me (x int)")
            ops.broken = errno.ENOSPC
            with pytest.raises(psycopg.errors.IoError) as e:  # 58030
                c.execute("insert into audit_me values (1)")
            out["error"] = (e.value.sqlstate, e.value.diag.message_primary)
            with pytest.raises(psycopg.errors.IoError):
                c.execute("insert into audit_me values (%s)", (2,))
            ops.broken = None
            out["count"] = c.execute("select count(*) from audit_me").fetchone()[0]
        return out

    out = yield threads.deferToThread(scenario)
    assert out["error"] == ("58030", "hoopd: the audit journal is unavailable; statement refused")
    assert out["count"] == 0  # nothing unrecorded reached the database
    yield wait_ended(gateway["folder"])
    (recs,) = by_session(gateway["folder"]).values()
    texts = [x.get("text") for x in recs if x["kind"] == "statement"]
    assert "insert into audit_me values (1)" not in texts and "select count(*) from audit_me" in texts
    assert verify(r.list_segments(gateway["folder"]), None, whole_dir=True).ok
