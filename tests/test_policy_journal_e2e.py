"""Policy and journal through ``twistd hoopd`` with real clients and a real PostgreSQL.

One gateway with a journal; each test uses the access level its user maps to
(reader -> read_only, writer -> read_write, dev -> admin) and then reads the journal
with the ``hoopd journal`` tools.
"""
from __future__ import annotations

import json
import signal
import subprocess
import urllib.request

import psycopg
import pytest

from tests.gateway import BIN, Gateway, connection_toml, free_port, users_toml

pytestmark = pytest.mark.integration

RULES = """
[[connections.shop.rules]]
name = "no-unbounded-writes"
action = "deny"
kinds = ["update", "delete"]
without_where = true
message = "add a WHERE clause"

[[rules]]
name = "pii-needs-approval"
action = "review"
kinds = ["update"]
relations = ["public.customers"]
"""


def config_body(pg, journal_dir, fsync: str) -> str:
    return (f'[journal]\ndir = "{journal_dir}"\nfsync = "{fsync}"\n' + users_toml()
            + connection_toml("shop", "127.0.0.1", pg.port, "shop", pg.app_scram.name, pg.app_scram.password)
            + RULES)


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gwpj")
    http = free_port()
    g = Gateway(folder, f'http = "tcp:{http}:interface=127.0.0.1"\n[control]\nopen_metrics = true\n'
                + config_body(pg, folder / "journal", "always")).start()
    g.http_port = http
    yield g
    g.stop()
    assert "Traceback" not in g.log()


@pytest.fixture(scope="module")
def pgbench_tables(pg) -> None:
    """pgbench's tables in shop, made directly (not through a gateway)."""
    r = subprocess.run(["pgbench", "-i", "-s", "1", "-q", pg.dsn(pg.app_scram)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr


def connect(gw, user: str) -> psycopg.Connection:
    return psycopg.connect(gw.dsn(user), autocommit=True)


def hoopd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hoopd"), *args], capture_output=True, text=True, timeout=60)


def denied(conn: psycopg.Connection, sql: str, params=None) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        conn.execute(sql, params)
    return e.value.diag.message_primary


def test_read_only_level(gw, pg):
    with connect(gw, "reader") as c:
        assert c.execute("select count(*) from customers").fetchone() == (3,)
        msg = denied(c, "insert into orders(customer_id, item, amount) values (1, 'x', 1)")
        assert "read_only" in msg and "insert" in msg
        assert c.execute("select 1").fetchone() == (1,)  # the session stays usable
        for sql in ("with d as (delete from orders returning *) select * from d",  # DML hidden in a CTE
                    "select 1; drop table orders",                                # a second statement
                    "explain analyze delete from orders",                         # EXPLAIN ANALYZE runs it
                    "set role postgres", "set session authorization postgres",
                    "set default_transaction_read_only = off",
                    "select set_config('role', 'postgres', false)",
                    "do $$ begin delete from orders; end $$",
                    "select * from orders for update"):
            denied(c, sql)
        denied(c, "update customers set email = %s where id = %s", ("x", 1))  # extended protocol
        # a denial inside a transaction aborts it, like any error would
        c.execute("begin")
        denied(c, "delete from orders where id = 1")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("select 1")
        c.execute("rollback")
        for sql in ("show search_path", "set statement_timeout = '5s'", "discard all", "begin read only", "commit"):
            c.execute(sql)
    with psycopg.connect(pg.superuser_dsn("shop")) as su:
        assert su.execute("select count(*) from orders").fetchone() == (4,)  # nothing reached the database


def test_read_write_level_and_rules(gw):
    with connect(gw, "writer") as c:
        c.execute("create temp table scratch(a int)")
        c.execute("insert into scratch values (1), (2)")
        c.execute("update scratch set a = 3 where a = 1")
        msg = denied(c, "delete from scratch")
        assert 'rule "no-unbounded-writes"' in msg and "add a WHERE clause" in msg
        msg = denied(c, "update customers set phone = null where id = 1")
        assert "pii-needs-approval" in msg and "approval" in msg
        assert "read_write" in denied(c, "drop table scratch")   # DDL on a real table needs admin
        assert "read_write" in denied(c, "grant select on orders to public")
    r = subprocess.run(["psql", "-X", "-c", r"\lo_import /etc/hostname", gw.dsn("writer")],
                       capture_output=True, text=True, timeout=60, env=gw.env("writer"))
    assert r.returncode != 0 and "FunctionCall" in r.stderr  # the fast-path call is refused


def test_admin_level_runs_ddl(gw):
    with connect(gw, "dev") as c:
        c.execute("create table audit_me(a int)")
        c.execute("drop table audit_me")


def test_journal_records_and_verifies(gw):
    with connect(gw, "reader") as c:
        c.execute("select name from customers where id = %s", (1,))
        denied(c, "delete from orders")
        c.execute("select 'marker-for-journal'")
    jdir = gw.folder / "journal"
    r = hoopd("journal", "verify", str(jdir))
    assert r.returncode == 0, r.stdout + r.stderr
    # the running gateway anchored its chain in state_dir (and says so in /metrics)
    r = hoopd("journal", "verify", "--config", str(gw.config))
    assert r.returncode == 0 and "checked against anchor" in r.stdout and "present" in r.stdout, r.stdout + r.stderr
    anchor = json.loads((gw.folder / "journal-anchor.test.json").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/metrics", timeout=10) as resp:
        metrics = resp.read().decode()
    assert (f'hoopd_journal_anchor_records{{hash="{anchor["hash"]}",node="test",segment="{anchor["segment"]}"}}'
            f' {anchor["records"]:.1f}') in metrics
    r = hoopd("journal", "sessions", "--dir", str(jdir), "--user", "reader")
    assert r.returncode == 0 and "reader" in r.stdout and "read_only" in r.stdout
    r = hoopd("journal", "export", "--dir", str(jdir), "--format", "jsonl")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = {e["kind"] for e in events}
    assert {"session_start", "statement", "result", "denied", "session_end"} <= kinds
    texts = json.dumps(events)
    assert "marker-for-journal" in texts and "Ada Lovelace" in texts and "delete from orders" in texts
    sid = next(e["session"] for e in events if "marker-for-journal" in json.dumps(e))
    r = hoopd("journal", "replay", sid, "--dir", str(jdir))
    assert r.returncode == 0 and "marker-for-journal" in r.stdout


def test_journal_survives_kill_9(pg, pgbench_tables, tmp_path):
    """kill -9 during a pgbench run: the next start recovers the torn segment, verify passes,
    and (fsync = always) every statement whose result a client received is in the journal."""
    g = Gateway(tmp_path, config_body(pg, tmp_path / "j", "always")).start()
    bench = subprocess.Popen(["pgbench", "-n", "-S", "-T", "20", "-c", "2", "-h", "127.0.0.1", "-p", str(g.port),
                              "-U", "dev", "shop"], env=g.env("dev"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    answered = []
    try:
        with psycopg.connect(g.dsn("dev"), autocommit=True) as c:
            for i in range(100):
                answered.append(c.execute(f"select 'acked-{i}'").fetchone()[0])
            g.proc.send_signal(signal.SIGKILL)
            g.proc.wait()
    except psycopg.OperationalError:
        pass  # the gateway died under us, as intended
    finally:
        bench.kill()
        bench.wait()
    g.start()  # recovery happens at start-up
    with psycopg.connect(g.dsn("dev"), autocommit=True) as c:
        c.execute("select 'after crash'")
    g.stop()
    r = hoopd("journal", "verify", str(tmp_path / "j"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list((tmp_path / "j").glob("*.open.*"))
    exported = hoopd("journal", "export", "--dir", str(tmp_path / "j"), "--format", "jsonl").stdout
    assert len(answered) == 100 and all(f"'{a}'" in exported for a in answered)
    assert "after crash" in exported


STATE_SQL = """
select (select count(*) from customers), (select count(*) from orders),
       (select md5(string_agg(c::text, ',' order by id)) from customers c),
       (select md5(string_agg(o::text, ',' order by id)) from orders o),
       (select string_agg(relname, ',' order by relname) from pg_class where relnamespace = 'public'::regnamespace),
       (select count(*) from pg_largeobject_metadata), (select count(*) from pg_roles),
       (select count(*) from pg_proc where pronamespace = 'public'::regnamespace),
       (select last_value from customers_id_seq), (select last_value from orders_id_seq)
"""


def db_state(pg) -> tuple:
    with psycopg.connect(pg.superuser_dsn("shop")) as su:
        return su.execute(STATE_SQL).fetchone()


def test_read_only_bypass_corpus_has_no_effect(gw, pg):
    """Every statement of the bypass corpus, simple and extended, is refused by the gateway
    (42501, our message) and the database is exactly as it was."""
    from psycopg.pq import DiagnosticField, ExecStatus

    from tests.test_policy_levels import READ_ONLY_BYPASS

    before = db_state(pg)
    passed: list[str] = []
    conn = connect(gw, "reader")
    try:
        for sql in READ_ONLY_BYPASS:
            for how in ("simple", "extended"):
                if conn.closed:
                    conn = connect(gw, "reader")
                pgc = conn.pgconn
                res = pgc.exec_(sql.encode()) if how == "simple" else pgc.exec_params(sql.encode(), [])
                state = res.error_field(DiagnosticField.SQLSTATE)
                msg = (res.error_field(DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
                if how == "simple" and (res.status != ExecStatus.FATAL_ERROR or state != b"42501"
                                        or not msg.startswith("hoopd:")):
                    passed.append(f"{how}: {sql!r} -> {res.status.name} {state} {msg}")
                if pgc.transaction_status != 0:  # leave no transaction open between statements
                    pgc.exec_(b"rollback")
    finally:
        conn.close()
    assert passed == []
    assert db_state(pg) == before
    assert len(READ_ONLY_BYPASS) >= 80


def test_read_only_routine_corpus_is_allowed(gw):
    """Statements drivers and tools send stay allowed for read_only (PostgreSQL may still
    answer an error of its own, e.g. for an object the statement expects; never hoopd)."""
    from psycopg.pq import DiagnosticField

    from tests.test_policy_levels import READ_ONLY_ROUTINE

    refused = []
    with connect(gw, "reader") as conn:
        pgc = conn.pgconn
        for sql in READ_ONLY_ROUTINE:
            res = pgc.exec_(sql.encode())
            msg = (res.error_field(DiagnosticField.MESSAGE_PRIMARY) or b"").decode()
            if msg.startswith("hoopd:"):
                refused.append(f"{sql!r}: {msg}")
            if pgc.transaction_status != 0:
                pgc.exec_(b"rollback")
    assert refused == []
    assert len(READ_ONLY_ROUTINE) >= 40


def test_journal_rotates_under_load(pg, pgbench_tables, tmp_path):
    body = config_body(pg, tmp_path / "j", "interval").replace('fsync = "interval"\n',
                                                               'fsync = "interval"\nrotate_bytes = "64KiB"\n')
    g = Gateway(tmp_path, body).start()
    try:
        r = subprocess.run(["pgbench", "-n", "-S", "-t", "300", "-c", "4", "-h", "127.0.0.1", "-p", str(g.port),
                            "-U", "dev", "shop"], env=g.env("dev"), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    finally:
        g.stop()
    segments = sorted((tmp_path / "j").glob("*.hjs"))
    assert len(segments) > 3 and not list((tmp_path / "j").glob("*.open.*"))
    assert hoopd("journal", "verify", str(tmp_path / "j")).returncode == 0
    exported = hoopd("journal", "export", "--dir", str(tmp_path / "j"), "--format", "jsonl").stdout
    statements = [e for e in map(json.loads, exported.splitlines()) if e["kind"] == "statement"]
    assert len([s for s in statements if "SELECT abalance FROM pgbench_accounts" in s.get("text", "")]) == 1200


def test_metrics_count_decisions_and_login_refusals(gw):
    import urllib.request

    with connect(gw, "reader") as c:
        denied(c, "insert into orders(customer_id, item, amount) values (1, 'x', 1)")
        c.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn("dev", "nosuch"))
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.http_port}/metrics", timeout=10) as r:
        text = r.read().decode()

    def value(prefix: str) -> float:
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        assert lines, prefix
        return float(lines[0].rsplit(" ", 1)[1])

    assert value('hoopd_statements_total{decision="deny",kind="insert"}') >= 1
    assert value('hoopd_statements_total{decision="allow",kind="select"}') >= 1
    assert value('hoopd_login_failures_total{reason="unknown_connection"}') >= 1
    assert value('hoopd_upstream_connect_seconds_count{connection="shop"}') >= 1
