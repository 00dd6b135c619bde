"""The gateway reads statement text exactly as the server will (issue 9, section 1), and
the tripwire ends a session whose upstream reports a setting the checks rely on changed.

The upstream role is a superuser, shared by every level: the weak configuration in which
only the gateway stands between a read_only user and a write. A refusal must come from
the gateway (42501, "hoopd: ..."), not from the server's read-only transaction, and the
canary table must be unchanged afterwards.
"""
from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import psycopg
import pytest
from psycopg.pq import ExecStatus

from hoopd.pgwire import messages as m
from tests.gateway import BIN, Gateway, connection_toml, free_port, users_toml
from tests.pgcluster import quote_literal
from tests.rawclient import RawClient, error_of

pytestmark = pytest.mark.integration
SU, SU_PW = "lex_su", "lex-su-password"

SETUP = f"""
DO $$ BEGIN CREATE ROLE {SU} SUPERUSER LOGIN PASSWORD {quote_literal(SU_PW)}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
"""
SHOP_SETUP = """
DROP TABLE IF EXISTS lex_canary;
CREATE TABLE lex_canary (id int);
INSERT INTO lex_canary VALUES (1), (2);
ALTER TABLE lex_canary OWNER TO app_scram;
GRANT ALL ON lex_canary TO PUBLIC;
CREATE OR REPLACE FUNCTION lex_flip_scs() RETURNS text LANGUAGE plpgsql STABLE AS
  $$ BEGIN PERFORM set_config('standard_conforming_strings', 'off', false); RETURN 'flipped'; END $$;
CREATE OR REPLACE FUNCTION lex_flip_ro() RETURNS text LANGUAGE plpgsql STABLE AS
  $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', false); RETURN 'flipped'; END $$;
CREATE OR REPLACE FUNCTION lex_become() RETURNS text LANGUAGE plpgsql STABLE AS
  $$ BEGIN PERFORM set_config('session_authorization', 'app_md5', false); RETURN 'became'; END $$;
"""


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql(SETUP)
    pg.psql(SHOP_SETUP, dbname="shop")
    folder = tmp_path_factory.mktemp("gwlex")
    http = free_port()
    g = Gateway(folder, f'http = "tcp:{http}:interface=127.0.0.1"\n[control]\nopen_metrics = true\n'
                f'[journal]\ndir = "{folder / "journal"}"\n' + users_toml()
                + connection_toml("shop", "127.0.0.1", pg.port, "shop", SU, SU_PW)).start()
    g.http_port = http
    yield g
    g.stop()
    assert "Traceback" not in g.log()


def canary(pg) -> str:
    return pg.psql("select count(*) from lex_canary", dbname="shop").strip()


def refused_by_gateway(res) -> str:
    """The message of a result the gateway refused (asserting it was the gateway)."""
    state = res.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
    msg = (res.error_field(psycopg.pq.DiagnosticField.MESSAGE_PRIMARY) or b"").decode("utf-8", "replace")
    assert res.status == ExecStatus.FATAL_ERROR and state == b"42501" and msg.startswith("hoopd:"), (state, msg)
    return msg


def run(pgc, sql: bytes, how: str):
    return pgc.exec_(sql) if how == "simple" else pgc.exec_params(sql, [])


@pytest.mark.parametrize("how", ["simple", "extended"])
@pytest.mark.parametrize("user", ["reader", "writer"])
def test_standard_conforming_strings_cannot_be_turned_off(gw, pg, user, how):
    with psycopg.connect(gw.dsn(user), autocommit=True) as c:
        pgc = c.pgconn
        for sql in (b"set standard_conforming_strings = off",
                    b"SET SESSION standard_conforming_strings TO 'false'",
                    b"set local standard_conforming_strings = 0",
                    b"select set_config('standard_conforming_strings', 'off', false)",
                    b"select 1 from (select set_config('Standard_Conforming_Strings', 'no', true)) s",
                    b"with x as (select set_config('standard_conforming_strings', 'off', false)) select * from x"):
            msg = refused_by_gateway(run(pgc, sql, how))
            assert "standard_conforming_strings" in msg
        # harmless forms pass, and the session still reads strings the standard way
        for sql in (b"set standard_conforming_strings = on", b"reset standard_conforming_strings", b"reset all",
                    b"set standard_conforming_strings to default"):
            assert run(pgc, sql, how).status == ExecStatus.COMMAND_OK, sql
        assert c.execute("show standard_conforming_strings").fetchone() == ("on",)
        if user == "reader":  # the classic payload, read as the server reads it: a DELETE
            refused_by_gateway(run(pgc, b"select 'a\\'; delete from lex_canary; --'", how))
    assert canary(pg) == "2"


def test_admin_may_turn_it_off(gw):
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as c:
        c.execute("set standard_conforming_strings = off")
        assert c.execute("show standard_conforming_strings").fetchone() == ("off",)


def test_startup_options_cannot_turn_it_off(gw):
    dsn = gw.dsn("reader") + " options='-c standard_conforming_strings=off'"
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("show standard_conforming_strings").fetchone() == ("on",)


UNSAFE_CHARS = {"SJIS": (b"\xc3\x81\x5c", "cp932"), "BIG5": (b"\xa4\x5c", "big5"), "GBK": (b"\x81\x5c", "gbk")}
"""Characters whose last byte is 0x5C (backslash). In SJIS 0xC3 is a half-width katakana
and 0x81 0x5C one character, so the server sees E'(two characters)' and then a DELETE;
read as UTF-8 (0xC3 0x81 is one character, then a backslash) the backslash escapes the
quote and the whole text is one SELECT of a string."""


@pytest.mark.parametrize("how", ["simple", "extended"])
@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK"])
def test_ascii_unsafe_client_encodings_are_read_as_the_server_reads_them(gw, pg, encoding, how):
    with psycopg.connect(gw.dsn("reader") + f" client_encoding={encoding}", autocommit=True) as c:
        pgc = c.pgconn
        assert c.execute("show client_encoding").fetchone() == (encoding,)
        char, codec = UNSAFE_CHARS[encoding]
        msg = refused_by_gateway(run(pgc, b"select E'" + char + b"'; delete from lex_canary; --'", how))
        assert "delete" in msg
        # a harmless multibyte string passes and comes back right
        res = run(pgc, b"select E'" + char + b"' as s", how)
        assert res.status == ExecStatus.TUPLES_OK
        assert res.get_value(0, 0) == char and not char.decode(codec).endswith("\\")
    assert canary(pg) == "2"


def test_client_encoding_cannot_change_below_admin(gw):
    with psycopg.connect(gw.dsn("reader"), autocommit=True) as c:
        pgc = c.pgconn
        for sql in (b"set client_encoding = 'SJIS'", b"set names 'latin1'",
                    b"select set_config('client_encoding', 'BIG5', false)"):
            assert "client_encoding" in refused_by_gateway(pgc.exec_(sql))
        for sql in (b"set client_encoding = 'UTF8'", b"set names 'utf-8'", b"reset client_encoding"):
            assert pgc.exec_(sql).status == ExecStatus.COMMAND_OK, sql
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as c:  # admin may
        c.execute("set client_encoding = 'LATIN1'")
        assert c.execute("show client_encoding").fetchone() == ("LATIN1",)


def test_encoding_the_gateway_cannot_read_refuses_statements(gw):
    with psycopg.connect(gw.dsn("reader") + " client_encoding=EUC_TW", autocommit=True) as c:
        msg = refused_by_gateway(c.pgconn.exec_(b"select 1"))
        assert "EUC_TW" in msg and "cannot be read faithfully" in msg


def test_invalid_bytes_refused_with_22021(gw):
    with psycopg.connect(gw.dsn("reader"), autocommit=True) as c:
        res = c.pgconn.exec_(b"select '\xff\xfe'")
        assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"22021"
        assert c.execute("select 1").fetchone() == (1,)  # the session goes on


def journal_policy_records(gw) -> list[dict]:
    out = subprocess.run([str(BIN / "hoopd"), "journal", "export", "--format", "jsonl", "--dir", str(gw.folder / "journal")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [r for r in map(json.loads, out.stdout.splitlines()) if r.get("kind") == "policy"]


@pytest.mark.parametrize("user, function, setting", [
    ("writer", "lex_flip_scs", "standard_conforming_strings"),
    ("reader", "lex_flip_ro", "default_transaction_read_only"),
    ("reader", "lex_become", "session_authorization"),
])
def test_tripwire_ends_the_session(gw, pg, user, function, setting):
    """A function changes a setting the checks rely on: the session ends before its next
    statement reaches PostgreSQL, the journal says why, the log has it at error level."""
    r = RawClient(gw.port)
    r.login(user, gw_password(user))
    r.send(m.query(f"select {function}()"))
    msgs = []
    with pytest.raises(ConnectionError):  # the gateway closes the session
        while True:
            msgs.append(r.read_message())
    r.close()
    assert msgs[-1][0] == b"E" and b"Z" not in [t for t, _ in msgs], msgs  # no ReadyForQuery: nothing more runs
    fatal = error_of(msgs[-1:])
    assert fatal["S"] == "FATAL" and fatal["C"] == "42501" and setting in fatal["M"], fatal
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "tripwire" not in gw.log():
        time.sleep(0.1)
    assert f"ended by the tripwire: the server reports {setting}" in gw.log()
    recs = [x for x in journal_policy_records(gw) if x.get("action") == "end" and x.get("setting") == setting]
    assert recs, "no policy record for the tripwire"
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert f'hoopd_tripwire_sessions_ended_total{{setting="{setting}"}} 1.0' in metrics


def gw_password(user: str) -> str:
    from tests.gateway import USERS
    return USERS[user][0]


def test_pipelined_refusals_beyond_256_all_answer_42501(gw):
    """Every refused statement of a long pipeline is answered with the gateway's 42501,
    never the server's syntax error about an internal marker."""
    r = RawClient(gw.port)
    r.login("reader", gw_password("reader"))
    n = 600
    bind, execute, sync = m.frame(b"B", b"\0\0" + b"\0" * 6), m.frame(b"E", b"\0" + b"\0" * 4), m.frame(b"S", b"")
    batch = (m.parse_message("", "delete from lex_canary") + bind + execute + sync) * n
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    r.send(batch + m.query("select 1"))
    states = []
    ready = 0
    while ready < n + 1:
        t, body = r.read_message()
        if t == b"E":
            e = error_of([(t, body)])
            states.append((e["C"], e["M"]))
        elif t == b"Z":
            ready += 1
    r.close()
    assert len(states) == n
    assert all(c == "42501" and "hoopd_deny" not in msg and msg.startswith("hoopd:") for c, msg in states)
