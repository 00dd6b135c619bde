"""The SQL classifier: one table of statements and the facts each must yield, CTE scoping,
statement slicing, unparseable input, the caches (counted parser calls), EXECUTE
resolution, and random SQL that must never crash it."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hoopd.policy import classify as C
from hoopd.policy.catalog import KINDS
from hoopd.policy.statement import StatementInfo
from hoopd.policy.classify import Classifier, classify
from hoopd.policy.prepared import PreparedRegistry

# (sql, expected facts of the single statement). Only the named fields are checked.
CASES = [
    # plain reads and writes
    ("SELECT * FROM customers", dict(kind="select", reads=True, writes=False, relations=("customers",))),
    ("select c.name from public.customers c join orders o on o.customer_id = c.id",
     dict(kind="select", relations=("public.customers", "orders"))),
    ("TABLE orders", dict(kind="select", relations=("orders",), writes=False)),
    ("VALUES (1), (2)", dict(kind="select", writes=False, relations=())),
    ("INSERT INTO orders (item) VALUES ('x')", dict(kind="insert", writes=True, relations=("orders",))),
    ("UPDATE customers SET phone = NULL", dict(kind="update", writes=True, has_where=False)),
    ("UPDATE customers SET phone = NULL WHERE id = 1", dict(kind="update", has_where=True)),
    ("DELETE FROM orders", dict(kind="delete", writes=True, has_where=False)),
    ("DELETE FROM orders WHERE true", dict(kind="delete", has_where=True)),
    ("DELETE FROM orders USING customers c WHERE c.id = orders.customer_id",
     dict(kind="delete", relations=("orders", "customers"), has_where=True)),
    ("UPDATE customers SET name = 'x' WHERE CURRENT OF cur", dict(kind="update", has_where=True)),
    ("MERGE INTO customers t USING orders s ON t.id = s.customer_id WHEN MATCHED THEN DELETE",
     dict(kind="merge", writes=True, relations=("customers", "orders"), has_where=None)),
    ("SELECT 1", dict(kind="select", has_where=None, locks=False, privilege_change=None)),
    # comments, odd whitespace, quoting
    ("/* hi */ DELETE\n\t-- x\n FROM\"orders\"", dict(kind="delete", relations=("orders",))),
    ('DELETE FROM "Orders"', dict(kind="delete", relations=("Orders",))),
    ("DeLeTe FrOm ORDERS", dict(kind="delete", relations=("orders",))),
    ("SELECT 'DELETE FROM orders'", dict(kind="select", writes=False)),
    ("SELECT $$; DROP TABLE orders; $$", dict(kind="select", writes=False)),
    # data-modifying CTEs
    ("WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
     dict(kind="select", writes=True, kinds={"select", "delete"}, relations=("orders",), has_where=False)),
    ("WITH u AS (UPDATE customers SET name = 'x' WHERE id = 1 RETURNING id) SELECT count(*) FROM u",
     dict(kind="select", writes=True, kinds={"select", "update"}, has_where=True)),
    ("WITH a AS (SELECT 1), b AS (INSERT INTO orders (item) SELECT 'x' FROM a RETURNING 1) TABLE b",
     dict(writes=True, kinds={"select", "insert"}, relations=("orders",))),
    ("WITH x AS (WITH y AS (DELETE FROM orders RETURNING 1) SELECT * FROM y) SELECT * FROM x",
     dict(writes=True, kinds={"select", "delete"})),
    ("SELECT * FROM (WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d) s",
     dict(writes=True)),
    # CTE names are not relations, with PostgreSQL's scoping
    ("WITH t AS (SELECT 1) SELECT * FROM t", dict(relations=())),
    ("WITH t AS (SELECT 1) DELETE FROM t", dict(kind="delete", relations=("t",))),  # target: the real t
    ("WITH t AS (SELECT 1), d AS (DELETE FROM t RETURNING 1) SELECT * FROM d",
     dict(relations=("t",), writes=True)),  # a DML target is never a CTE, also inside one
    ("WITH t AS (SELECT * FROM t) SELECT * FROM t", dict(relations=("t",))),  # inner t: the table
    ("WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT * FROM t", dict(relations=())),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", dict(relations=("b",))),
    ("SELECT (WITH s AS (SELECT 1) SELECT 1), * FROM s", dict(relations=("s",))),
    ("WITH t AS (SELECT 1) SELECT * FROM public.t", dict(relations=("public.t",))),
    # EXPLAIN
    ("EXPLAIN ANALYZE DELETE FROM orders", dict(kind="explain", writes=True, kinds={"explain", "delete"},
                                               command="EXPLAIN ANALYZE")),
    ("EXPLAIN (ANALYZE) UPDATE customers SET name = 'x'", dict(writes=True, has_where=False)),
    ("EXPLAIN (ANALYZE true, FORMAT json) INSERT INTO orders (item) VALUES ('x')", dict(writes=True)),
    ("EXPLAIN (ANALYZE 1) DELETE FROM orders", dict(writes=True)),
    ("EXPLAIN (ANALYZE on) DELETE FROM orders", dict(writes=True)),
    ("EXPLAIN (ANALYZE false) DELETE FROM orders", dict(writes=False, kinds={"explain"}, command="EXPLAIN")),
    ("EXPLAIN (ANALYZE off) DELETE FROM orders", dict(writes=False)),
    ("EXPLAIN DELETE FROM orders", dict(kind="explain", writes=False, relations=("orders",))),
    ("EXPLAIN SELECT pg_terminate_backend(1)", dict(side_effect_functions=("pg_terminate_backend",))),
    ("EXPLAIN ANALYZE SELECT * FROM orders FOR UPDATE", dict(locks=True)),
    ("EXPLAIN SELECT * FROM orders FOR UPDATE", dict(locks=False)),
    ("EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", dict(kinds={"explain", "ddl"}, writes=True)),
    # COPY
    ("COPY orders TO STDOUT", dict(kind="copy_to", reads=True, writes=False, server_files=False)),
    ("COPY orders FROM STDIN", dict(kind="copy_from", writes=True, server_files=False)),
    ("COPY orders TO '/tmp/x'", dict(kind="copy_to", server_files=True)),
    ("COPY orders FROM '/etc/passwd'", dict(kind="copy_from", server_files=True)),
    ("COPY orders TO PROGRAM 'id'", dict(kind="copy_program", server_files=True, writes=True)),
    ("COPY orders FROM PROGRAM 'id'", dict(kind="copy_program", server_files=True)),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", dict(kind="copy_to", writes=True,
                                                             kinds={"copy_to", "delete"})),
    ("COPY (SELECT pg_read_file('/etc/passwd')) TO STDOUT", dict(side_effect_functions=("pg_read_file",))),
    # PREPARE / EXECUTE / DEALLOCATE
    ("PREPARE p AS DELETE FROM orders", dict(kind="prepare", prepared_name="p", writes=True,
                                             kinds={"prepare", "delete"})),
    ("PREPARE q(int) AS SELECT * FROM orders WHERE id = $1", dict(kind="prepare", writes=False)),
    ("EXECUTE p", dict(kind="execute", executes=("p",), opaque=True)),
    ("EXECUTE p(pg_terminate_backend(1))", dict(side_effect_functions=("pg_terminate_backend",))),
    ("CREATE TABLE x AS EXECUTE p", dict(kind="ddl", executes=("p",), kinds={"ddl", "execute"})),
    ("EXPLAIN ANALYZE EXECUTE p", dict(executes=("p",), opaque=True)),
    ("DEALLOCATE p", dict(kind="deallocate", prepared_name="p")),
    ("DEALLOCATE ALL", dict(kind="deallocate", prepared_name=None)),
    # opaque code
    ("DO $$ BEGIN DELETE FROM orders; END $$", dict(kind="do", opaque=True, writes=True)),
    ("DO LANGUAGE plpgsql 'BEGIN NULL; END'", dict(kind="do", opaque=True)),
    ("CALL my_proc(1)", dict(kind="call", opaque=True, writes=True, functions=("my_proc",))),
    ("CALL s.p(pg_terminate_backend(1))", dict(side_effect_functions=("pg_terminate_backend",))),
    # functions with side effects (any schema, any case)
    ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", dict(side_effect_functions=("pg_terminate_backend",))),
    ("SELECT pg_catalog.pg_cancel_backend(1)", dict(side_effect_functions=("pg_catalog.pg_cancel_backend",))),
    ("SELECT PG_READ_FILE('/etc/passwd')", dict(side_effect_functions=("pg_read_file",))),
    ('SELECT "pg_read_binary_file"(\'x\')', dict(side_effect_functions=("pg_read_binary_file",))),
    ("SELECT * FROM pg_ls_dir('.')", dict(side_effect_functions=("pg_ls_dir",))),
    ("SELECT lo_import('/etc/passwd')", dict(side_effect_functions=("lo_import",))),
    ("SELECT lo_unlink(1)", dict(side_effect_functions=("lo_unlink",))),
    ("SELECT dblink_exec('dbname=x', 'DROP TABLE y')", dict(side_effect_functions=("dblink_exec",))),
    ("SELECT * FROM ext.dblink('c', 'select 1') AS t(a int)", dict(side_effect_functions=("ext.dblink",))),
    ("SELECT nextval('s')", dict(side_effect_functions=("nextval",))),
    ("SELECT setval('s', 1)", dict(side_effect_functions=("setval",))),
    ("SELECT pg_advisory_lock(1)", dict(side_effect_functions=("pg_advisory_lock",))),
    ("SELECT pg_try_advisory_xact_lock(1)", dict(side_effect_functions=("pg_try_advisory_xact_lock",))),
    ("SELECT pg_advisory_unlock_all()", dict(side_effect_functions=(), functions=("pg_advisory_unlock_all",))),
    ("SELECT pg_notify('c', 'x')", dict(side_effect_functions=("pg_notify",))),
    ("SELECT pg_reload_conf()", dict(side_effect_functions=("pg_reload_conf",))),
    ("SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, false, '')",
     dict(side_effect_functions=("query_to_xml",))),
    ("SELECT 1 WHERE EXISTS (SELECT pg_sleep(0) FROM (SELECT pg_terminate_backend(1)) s)",
     dict(side_effect_functions=("pg_terminate_backend",))),
    ("SELECT count(*), lower(name), now() FROM customers GROUP BY 2", dict(side_effect_functions=())),
    # privilege changes
    ("SET ROLE postgres", dict(kind="set", privilege_change="role", command="SET ROLE")),
    ("SET LOCAL ROLE postgres", dict(privilege_change="role")),
    ("SET ROLE NONE", dict(privilege_change="role")),
    ("RESET ROLE", dict(privilege_change="role", command="RESET ROLE")),
    ("SET role TO DEFAULT", dict(privilege_change="role")),
    ('SET "ROLE" = \'postgres\'', dict(privilege_change="role")),
    ("SET SESSION AUTHORIZATION postgres", dict(privilege_change="session_authorization")),
    ("SET SESSION AUTHORIZATION DEFAULT", dict(kind="set", privilege_change=None)),
    ("RESET SESSION AUTHORIZATION", dict(privilege_change=None)),
    ("SET TRANSACTION READ WRITE", dict(privilege_change="read_write")),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE", dict(privilege_change="read_write")),
    ("SET TRANSACTION READ ONLY", dict(privilege_change=None)),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", dict(privilege_change="read_write")),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", dict(privilege_change=None)),
    ("SET default_transaction_read_only = off", dict(privilege_change="read_write")),
    ("SET default_transaction_read_only TO false", dict(privilege_change="read_write")),
    ("SET default_transaction_read_only = 0", dict(privilege_change="read_write")),
    ("SET default_transaction_read_only = 'of'", dict(privilege_change="read_write")),
    ("SET default_transaction_read_only TO DEFAULT", dict(privilege_change="read_write")),
    ("RESET default_transaction_read_only", dict(privilege_change="read_write")),
    ("SET DEFAULT_TRANSACTION_READ_ONLY = off", dict(privilege_change="read_write")),
    ('SET "Default_Transaction_Read_Only" = off', dict(privilege_change="read_write")),
    ("SET default_transaction_read_only = on", dict(privilege_change=None)),
    ("SET default_transaction_read_only = 'tr'", dict(privilege_change=None)),
    ("SET transaction_read_only = off", dict(privilege_change="read_write")),
    ("SET LOCAL transaction_read_only TO 0", dict(privilege_change="read_write")),
    ("BEGIN READ WRITE", dict(kind="transaction", privilege_change="read_write")),
    ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE", dict(privilege_change="read_write")),
    ("BEGIN READ ONLY", dict(kind="transaction", privilege_change=None)),
    ("BEGIN", dict(kind="transaction", privilege_change=None, writes=False)),
    ("SELECT set_config('role', 'postgres', false)", dict(privilege_change="role",
                                                          side_effect_functions=("set_config",))),
    ("SELECT pg_catalog.set_config('ROLE', 'x', true)", dict(privilege_change="role")),
    ("SELECT set_config('session_authorization', 'x', false)", dict(privilege_change="session_authorization")),
    ("SELECT set_config('default_transaction_read_only', 'off', false)",
     dict(privilege_change="read_write", side_effect_functions=())),
    ("SELECT set_config('transaction_read_only', 'off', true)", dict(privilege_change="read_write")),
    ("SELECT set_config('transaction_read_only', 'on', true)", dict(privilege_change=None)),
    ("SELECT set_config('ro' || 'le', 'x', false)", dict(privilege_change="unknown")),
    ("SELECT set_config($1, $2, false)", dict(privilege_change="unknown")),
    ("SELECT set_config('role'::text, 'x', false)", dict(privilege_change="role")),
    ("SELECT set_config('search_path', '', false)", dict(privilege_change=None, side_effect_functions=())),
    ("SELECT * FROM orders WHERE set_config('role', 'x', false) IS NOT NULL", dict(privilege_change="role")),
    # locks
    ("SELECT * FROM orders FOR UPDATE", dict(kind="select", locks=True, writes=False)),
    ("SELECT * FROM orders FOR NO KEY UPDATE SKIP LOCKED", dict(locks=True)),
    ("SELECT * FROM orders FOR SHARE", dict(locks=True)),
    ("SELECT * FROM (SELECT * FROM orders FOR KEY SHARE) s", dict(locks=True)),
    ("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE", dict(kind="lock", locks=True, relations=("orders",))),
    ("LOCK orders", dict(kind="lock", locks=True)),
    ("LOCK TABLE orders IN ACCESS SHARE MODE", dict(kind="lock", locks=False)),
    # DDL and temporary objects
    ("DROP TABLE orders", dict(kind="ddl", command="DROP TABLE", relations=("orders",), writes=True)),
    ("DROP TABLE IF EXISTS public.orders, customers CASCADE", dict(relations=("public.orders", "customers"))),
    ("DROP FUNCTION f()", dict(kind="ddl", command="DROP FUNCTION")),
    ("CREATE TABLE t (id int)", dict(kind="ddl", temp_only=False, reads=False)),
    ("CREATE TEMP TABLE t (id int)", dict(kind="ddl", temp_only=True, relations=("t",))),
    ("CREATE TEMPORARY TABLE t AS SELECT * FROM orders", dict(temp_only=True, relations=("t", "orders"))),
    ("CREATE TEMP VIEW v AS SELECT 1", dict(temp_only=True)),
    ("CREATE TEMP SEQUENCE s", dict(temp_only=True)),
    ("CREATE TEMP TABLE t (id int DEFAULT pg_terminate_backend(1)::int)",
     dict(temp_only=True, side_effect_functions=("pg_terminate_backend",))),
    ("CREATE TEMP VIEW v AS SELECT pg_read_file('x')", dict(side_effect_functions=("pg_read_file",))),
    ("CREATE MATERIALIZED VIEW m AS SELECT 1", dict(temp_only=False, command="CREATE MATERIALIZED VIEW")),
    ("SELECT * INTO TEMP x FROM orders", dict(kind="ddl", temp_only=True, writes=True, command="SELECT INTO")),
    ("SELECT * INTO x FROM orders", dict(kind="ddl", temp_only=False)),
    ("CREATE INDEX ON orders (item)", dict(kind="ddl", temp_only=False)),
    ("ALTER TABLE orders ADD COLUMN x int", dict(kind="ddl", relations=("orders",), command="ALTER TABLE")),
    ("TRUNCATE orders", dict(kind="ddl", writes=True, relations=("orders",))),
    ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", dict(kind="ddl", temp_only=False)),
    ("CREATE RULE r AS ON SELECT TO orders DO INSTEAD SELECT 1", dict(kind="ddl")),
    ("CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()", dict(kind="ddl")),
    ("COMMENT ON TABLE orders IS 'x'", dict(kind="ddl")),
    ("CREATE EXTENSION dblink", dict(kind="ddl")),
    ("REFRESH MATERIALIZED VIEW m", dict(kind="utility", writes=True)),
    # DCL
    ("GRANT SELECT ON orders TO public", dict(kind="dcl", writes=True, command="GRANT")),
    ("REVOKE ALL ON orders FROM public", dict(kind="dcl", command="REVOKE")),
    ("GRANT pg_read_server_files TO me", dict(kind="dcl")),
    ("CREATE ROLE x SUPERUSER", dict(kind="dcl")),
    ("ALTER ROLE me SET default_transaction_read_only = off", dict(kind="dcl")),
    ("ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO public", dict(kind="dcl")),
    # utility and others
    ("ALTER SYSTEM SET default_transaction_read_only = off", dict(kind="utility", writes=True)),
    ("CHECKPOINT", dict(kind="utility", command="CHECKPOINT")),
    ("LOAD 'auto_explain'", dict(kind="utility")),
    ("VACUUM orders", dict(kind="vacuum", writes=True, relations=("orders",))),
    ("ANALYZE public.orders", dict(kind="analyze", relations=("public.orders",))),
    ("CLUSTER orders USING orders_pkey", dict(kind="utility", relations=("orders",))),
    ("REINDEX TABLE orders", dict(kind="utility", relations=("orders",))),
    ("CREATE TRIGGER t AFTER DELETE ON orders EXECUTE FUNCTION f()", dict(kind="ddl", relations=("orders",))),
    ("LISTEN chan", dict(kind="listen_notify", writes=False)),
    ("UNLISTEN *", dict(kind="listen_notify", writes=False)),
    ("NOTIFY chan, 'x'", dict(kind="listen_notify", writes=True)),
    ("SHOW search_path", dict(kind="show", writes=False)),
    ("SHOW ALL", dict(kind="show")),
    ("SET search_path TO public", dict(kind="set", privilege_change=None, writes=False)),
    ("SET TIME ZONE 'UTC'", dict(kind="set", privilege_change=None)),
    ("RESET ALL", dict(kind="set", privilege_change=None, command="RESET ALL")),
    ("SET CONSTRAINTS ALL DEFERRED", dict(kind="set")),
    ("DISCARD ALL", dict(kind="discard", command="DISCARD ALL")),
    ("DISCARD TEMP", dict(kind="discard", command="DISCARD TEMP")),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM orders", dict(kind="declare", relations=("orders",))),
    ("DECLARE c CURSOR FOR SELECT * FROM orders FOR UPDATE", dict(kind="declare", locks=True)),
    ("FETCH 10 FROM c", dict(kind="fetch", writes=False)),
    ("CLOSE c", dict(kind="close")),
    ("CLOSE ALL", dict(kind="close")),
    ("COMMIT", dict(kind="transaction", writes=False)),
    ("SAVEPOINT a", dict(kind="transaction")),
    ("ROLLBACK TO SAVEPOINT a", dict(kind="transaction")),
    ("PREPARE TRANSACTION 'x'", dict(kind="transaction", writes=True)),
    ("COMMIT PREPARED 'x'", dict(kind="transaction", writes=True)),
    ("ROLLBACK PREPARED 'x'", dict(kind="transaction", writes=True)),
]


def _check(info: StatementInfo, want: dict) -> None:
    for field, value in want.items():
        got = getattr(info, field)
        if field in ("kinds", "relations", "functions", "side_effect_functions"):  # order: the tree's
            assert set(got) == set(value) and len(got) == len(value), (info.text, field, got)
        else:
            assert got == value, (info.text, field, got)


@pytest.mark.parametrize("sql,want", CASES, ids=[c[0][:60] for c in CASES])
def test_classification(sql: str, want: dict) -> None:
    infos = Classifier().classify(sql)
    assert len(infos) == 1
    _check(infos[0], want)
    assert infos[0].text == sql.strip()


def test_every_kind_has_a_case() -> None:
    seen = {C.classify(sql)[0].kind for sql, _ in CASES}
    assert KINDS - seen == {"function_call", "unparseable"}  # these come from the stage / parse errors


def test_multi_statement_slices_and_utf8_offsets() -> None:
    sql = "select 'é€'; /* c */ delete from orders ;; SELECT 2 ; -- tail"
    infos = classify(sql)
    assert [i.kind for i in infos] == ["select", "delete", "select"]
    assert [i.text for i in infos] == ["select 'é€'", "delete from orders", "SELECT 2"]


def test_empty_and_comment_only() -> None:
    assert classify("") == []
    assert classify("  -- nothing\n/* at all */ ;") == []


@pytest.mark.parametrize("sql", ["SELEC 1", "SELECT FROM WHERE", "DELETE orders", "SELECT 1; DROP"])
def test_unparseable(sql: str) -> None:
    (info,) = classify(sql)
    assert info.kind == "unparseable" and info.text == sql
    assert info.error and "syntax error" in info.error


def test_unparseable_statement_makes_the_whole_string_unparseable() -> None:
    (info,) = classify("SELECT 1; DROP TABLE orders; SELEC 2")
    assert info.kind == "unparseable"


def test_nul_byte_is_unparseable() -> None:
    # libpg_query would read only up to the NUL: "SELECT 1"
    (info,) = classify("SELECT 1\0; DROP TABLE orders")
    assert info.kind == "unparseable" and "NUL" in (info.error or "")


def test_lone_surrogate_is_unparseable() -> None:
    (info,) = classify("SELECT '\ud800'")
    assert info.kind == "unparseable"


def test_deep_nesting_does_not_crash() -> None:
    for sql in ("SELECT " + "(" * 3000 + "1" + ")" * 3000,
                "SELECT " + "-" * 5000 + "1",
                "SELECT " + "(SELECT " * 1500 + "1" + ")" * 1500,
                "SELECT " + "ARRAY[" * 2000 + "1" + "]" * 2000):
        infos = classify(sql)
        assert len(infos) == 1  # classified or unparseable, never an exception


# --- caches ----------------------------------------------------------------------------

class _Counting:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parse = self.normalize = 0
        real_parse, real_norm = C._parse_json, C._normalize

        def parse(sql: str) -> str:
            self.parse += 1
            return real_parse(sql)

        def normalize(sql: str) -> str:
            self.normalize += 1
            return real_norm(sql)

        monkeypatch.setattr(C, "_parse_json", parse)
        monkeypatch.setattr(C, "_normalize", normalize)


def test_repeated_text_does_not_parse_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Counting(monkeypatch)
    c = Classifier()
    for sql in ("SET ROLE x", "SELECT 1; DELETE FROM orders", "SELEC broken"):
        first = c.classify(sql)
        before = (calls.parse, calls.normalize)
        for _ in range(3):
            assert c.classify(sql) == first
        assert (calls.parse, calls.normalize) == before
    assert c.stats()["exact_hits"] == 9


def test_same_shape_other_constants_skips_the_full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _Counting(monkeypatch)
    c = Classifier()
    c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
    assert calls.parse == 1
    for aid in range(2, 50):
        (info,) = c.classify(f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid}")
        assert info.text.endswith(f"= {aid}") and info.relations == ("pgbench_accounts",)
    assert calls.parse == 1
    assert c.stats()["shape_hits"] == 48
    assert c.stats()["exact_entries"] == 1  # shape hits do not flood the exact cache


@pytest.mark.parametrize("a,b", [
    # pairs a fingerprint would confuse; each must be classified on its own
    ("SELECT * FROM a.t", "SELECT * FROM b.t"),
    ("DELETE FROM t WHERE true", "DELETE FROM t"),
    ("SET default_transaction_read_only = on", "SET default_transaction_read_only = off"),
    ("BEGIN READ ONLY", "BEGIN READ WRITE"),
    ("SELECT set_config('search_path', 'x', false)", "SELECT set_config('role', 'x', false)"),
    ("SELECT set_config('transaction_read_only', 'on', false)",
     "SELECT set_config('transaction_read_only', 'off', false)"),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", "EXPLAIN (ANALYZE true) DELETE FROM t"),
    ("SELECT * FROM t", "SELECT * FROM t FOR UPDATE"),
])
def test_constant_dependent_statements_are_not_shared(a: str, b: str) -> None:
    c = Classifier()
    ia = c.classify(a)[0]
    ib = c.classify(b)[0]
    fresh = Classifier().classify(b)[0]
    assert ib == fresh and ia.summary() != ib.summary()


def test_cache_bounds() -> None:
    c = Classifier(max_entries=10, max_chars=1000)
    for i in range(50):
        c.classify(f"SET application_name = 'a{i}'")
    assert c.stats()["exact_entries"] == 10
    big = "SELECT " + "1, " * 400 + "1"
    c.classify(big)
    assert c._exact.chars <= 1000
    c2 = Classifier(max_text=100)
    c2.classify(big)
    assert c2.stats()["exact_entries"] == 0


# --- EXECUTE resolution ----------------------------------------------------------------

def test_execute_has_the_effects_of_its_prepared_body() -> None:
    reg = PreparedRegistry()
    prep, ex = classify("PREPARE p AS DELETE FROM orders; EXECUTE p", reg)
    assert ex.writes and ex.kinds == {"execute", "delete"} and not ex.opaque and ex.has_where is False
    assert "p" not in reg  # resolving does not change the registry
    reg.apply(prep)
    (ex2,) = classify("EXECUTE p", reg)
    assert ex2.writes and ex2.relations == ("orders",)
    (ex3,) = classify("EXECUTE nope", reg)
    assert ex3.opaque
    reg.apply(classify("DEALLOCATE p")[0])
    assert "p" not in reg and classify("EXECUTE p", reg)[0].opaque


def test_registry_clears_and_unions() -> None:
    reg = PreparedRegistry()
    reg.apply_all(classify("PREPARE a AS SELECT 1; PREPARE b AS SELECT 2", reg))
    assert len(reg) == 2
    reg.apply(classify("DISCARD ALL")[0])
    assert len(reg) == 0
    reg.apply_all(classify("PREPARE a AS SELECT 1; PREPARE b AS SELECT 2", reg))
    reg.apply(classify("DEALLOCATE ALL")[0])
    assert len(reg) == 0
    # prepared twice without DEALLOCATE: the server keeps the first; remember both
    reg.apply_all(classify("PREPARE a AS DELETE FROM orders; PREPARE a AS SELECT 1", reg))
    assert classify("EXECUTE a", reg)[0].writes


# --- robustness ------------------------------------------------------------------------

_SQL_WORDS = ["SELECT", "DELETE", "FROM", "WITH", "AS", "(", ")", ";", "orders", "1", "'x'", "$1",
              "EXPLAIN", "ANALYZE", "SET", "ROLE", "PREPARE", "EXECUTE", "p", "DO", "$$", "--", "/*", "*/",
              "INSERT", "INTO", "VALUES", "RETURNING", "*", ",", "=", "WHERE", "FOR", "UPDATE", "CALL",
              "set_config", "'role'", "BEGIN", "READ", "WRITE", "COPY", "TO", "PROGRAM", "\n", '"', "E'\\\\'"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_SQL_WORDS), max_size=25).map(" ".join))
def test_token_soup_never_crashes(sql: str) -> None:
    for info in classify(sql):
        assert info.kind in KINDS


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(sql: str) -> None:
    infos = classify(sql)
    assert all(isinstance(i, StatementInfo) for i in infos)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([c[0] for c in CASES]), st.integers(0, 200), st.text(max_size=5))
def test_mutated_statements_never_crash(sql: str, pos: int, insert: str) -> None:
    pos = min(pos, len(sql))
    for mutated in (sql[:pos] + insert + sql[pos:], sql[:pos] + sql[pos + 1:], sql[:pos]):
        classify(mutated)
