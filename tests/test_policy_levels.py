"""Access levels: a bypass corpus read_only must refuse, a corpus of routine driver and
tool statements it must allow, and what read_write and admin add.

READ_ONLY_BYPASS and READ_ONLY_ROUTINE use the test cluster's ``shop`` schema
(customers, orders) so the end-to-end tests can replay them against PostgreSQL
through the gateway (``from tests.test_policy_levels import READ_ONLY_BYPASS``).
"""
from __future__ import annotations

import pytest

from hoopd.policy.classify import classify
from hoopd.policy.decide import Policy, level_denial, upstream_settings
from hoopd.policy.prepared import PreparedRegistry
from hoopd.policy.rules import Context, Rule

READ_ONLY_BYPASS = [
    # multi-statement, comments, whitespace, quoting, case
    "DELETE FROM orders",
    "SELECT 1; DELETE FROM orders",
    "select 1;delete from orders",
    "SELECT 1 /* ; */ ; DELETE FROM orders",
    "SELECT ';' ; DELETE FROM orders",
    "/* DELETE */ INSERT INTO customers (name, email) VALUES ('x', 'x@example.com')",
    "-- comment\nUPDATE customers SET phone = NULL",
    "UPDATE\tcustomers\nSET\tphone=NULL",
    'DeLeTe FrOm "orders"',
    "DELETE FROM public.orders WHERE id = 1",
    "INSERT INTO orders (customer_id, item, amount) SELECT customer_id, item, amount FROM orders",
    "UPDATE orders SET amount = 0 WHERE true",
    "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN DELETE",
    "SELECT $$;$$; DELETE FROM orders",
    # DDL / DCL
    "TRUNCATE orders",
    "TRUNCATE TABLE orders CASCADE",
    "DROP TABLE orders",
    "DROP TABLE IF EXISTS orders CASCADE",
    "ALTER TABLE customers DROP COLUMN phone",
    "ALTER TABLE customers RENAME TO clients",
    "CREATE TABLE evil (id int)",
    "CREATE TEMP TABLE t AS SELECT * FROM customers",
    "CREATE TEMPORARY TABLE t (id int)",
    "SELECT * INTO TEMP stolen FROM customers",
    "SELECT * INTO stolen FROM customers",
    "CREATE INDEX ON orders (item)",
    "CREATE VIEW v AS SELECT * FROM customers",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'DELETE FROM orders RETURNING 1'",
    "CREATE SCHEMA evil",
    "COMMENT ON TABLE orders IS 'pwned'",
    "CREATE RULE r AS ON INSERT TO orders DO INSTEAD NOTHING",
    "GRANT ALL ON customers TO PUBLIC",
    "REVOKE SELECT ON customers FROM PUBLIC",
    "CREATE ROLE evil LOGIN",
    "ALTER ROLE CURRENT_USER SET default_transaction_read_only = off",
    "ALTER DATABASE shop SET default_transaction_read_only = off",
    # data-modifying CTEs
    "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "WITH u AS (UPDATE customers SET phone = NULL RETURNING 1) SELECT count(*) FROM u",
    "WITH i AS (INSERT INTO customers (name, email) VALUES ('x', 'y@example.com') RETURNING id) SELECT * FROM i",
    "with x as (select 1), d as (delete from orders returning 1) select * from x",
    "WITH orders AS (SELECT 1) DELETE FROM orders",
    # EXPLAIN ANALYZE
    "EXPLAIN ANALYZE DELETE FROM orders",
    "EXPLAIN (ANALYZE) UPDATE customers SET phone = NULL",
    "EXPLAIN (ANALYZE true, BUFFERS) INSERT INTO customers (name, email) VALUES ('x', 'z@example.com')",
    "EXPLAIN (ANALYZE on) DELETE FROM orders",
    "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
    "EXPLAIN ANALYZE SELECT * FROM orders FOR UPDATE",
    # PREPARE / EXECUTE
    "PREPARE p AS DELETE FROM orders",
    "PREPARE p2(int) AS UPDATE customers SET phone = NULL WHERE id = $1",
    "PREPARE ok AS SELECT 1; PREPARE bad AS DELETE FROM orders; EXECUTE bad",
    "EXECUTE never_prepared",
    "CREATE TABLE x AS EXECUTE p",
    # opaque code
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "DO 'BEGIN EXECUTE ''DROP TABLE orders''; END'",
    "DO LANGUAGE plpgsql $x$ BEGIN PERFORM 1; END $x$",
    "CALL some_proc()",
    # COPY
    "COPY orders FROM STDIN",
    "COPY orders TO '/tmp/orders.csv'",
    "COPY orders FROM '/etc/passwd'",
    "COPY orders TO PROGRAM 'id'",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/pwned'",
    "COPY (DELETE FROM orders RETURNING *) TO STDOUT",
    # functions with side effects
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')",
    "SELECT * FROM pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_export(1, '/tmp/x')",
    "SELECT lo_create(0)",
    "SELECT dblink_exec('dbname=shop', 'DELETE FROM orders')",
    "SELECT nextval('orders_id_seq')",
    "SELECT setval('orders_id_seq', 1)",
    "SELECT pg_advisory_lock(42)",
    "SELECT pg_notify('chan', 'x')",
    "SELECT pg_reload_conf()",
    "SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, false, '')",
    "SELECT (SELECT nextval('orders_id_seq')) FROM customers",
    # SQL run from text, tables read by value, state changed by stable functions (the allowlist)
    "SELECT * FROM query_to_xml_and_xmlschema('DELETE FROM orders RETURNING 1', true, false, '')",
    "SELECT table_to_xml('orders', true, false, '')",
    "SELECT schema_to_xml('public', true, false, '')",
    "SELECT database_to_xml(true, false, '')",
    "SELECT ts_stat('SELECT to_tsvector(item) FROM orders')",
    "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')",
    "SELECT * FROM crosstab('SELECT 1::text, 1::text, 1::text')",
    "SELECT * FROM public.connectby('orders', 'id', 'customer_id', '1', 0)",
    "SELECT txid_current()",
    "SELECT pg_current_xact_id()",
    "SELECT brin_summarize_new_values('orders_pkey')",
    "SELECT gin_clean_pending_list('orders_pkey')",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT pg_stat_reset()",
    "SELECT some_schema.unknown_function()",
    "SELECT 1 WHERE \"Lower\"('x') = 'x'",
    # privilege changes and read-write toggles
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'off', true)",
    "SELECT set_config('session_authorization', 'postgres', false)",
    "SELECT * FROM customers WHERE set_config('role', 'postgres', false) IS NOT NULL",
    "SELECT set_config('ro' || 'le', 'postgres', false)",
    "SET ROLE postgres",
    "SET LOCAL ROLE postgres",
    "SET ROLE NONE",
    "RESET ROLE",
    "SET SESSION AUTHORIZATION postgres",
    "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET default_transaction_read_only = off",
    "SET default_transaction_read_only TO DEFAULT",
    "RESET default_transaction_read_only",
    "SET \"default_transaction_read_only\" = 'false'",
    "SET transaction_read_only = off",
    "BEGIN READ WRITE",
    "START TRANSACTION READ WRITE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    # locks
    "SELECT * FROM orders FOR UPDATE",
    "SELECT * FROM customers FOR SHARE NOWAIT",
    "LOCK TABLE orders",
    "LOCK TABLE orders IN ROW EXCLUSIVE MODE",
    "DECLARE c CURSOR FOR SELECT * FROM orders FOR UPDATE",
    # utility
    "NOTIFY chan",
    "VACUUM orders",
    "ANALYZE orders",
    "CHECKPOINT",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "LOAD 'auto_explain'",
    "REINDEX TABLE orders",
    "CLUSTER orders USING orders_pkey",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    # the parser cannot read these
    "SELEC 1",
    "SELECT 1; DROP TABLE orders; SELEC",
]

READ_ONLY_ROUTINE = [
    # psql \d, \dt, \l, \dn, \du, \df and tab completion
    "SELECT n.nspname as \"Schema\", c.relname as \"Name\", CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' "
    "THEN 'view' END as \"Type\", pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\" FROM pg_catalog.pg_class c "
    "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam "
    "WHERE c.relkind IN ('r','p','v','m','S','f','') AND n.nspname <> 'pg_catalog' AND n.nspname !~ '^pg_toast' "
    "AND n.nspname <> 'information_schema' AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 1,2;",
    "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON "
    "n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) '^(customers)$' COLLATE pg_catalog.default "
    "AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;",
    "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), (SELECT pg_catalog.pg_get_expr(d.adbin, "
    "d.adrelid, true) FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND "
    "a.atthasdef), a.attnotnull, a.attidentity, a.attgenerated FROM pg_catalog.pg_attribute a WHERE "
    "a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum;",
    "SELECT d.datname as \"Name\", pg_catalog.pg_get_userbyid(d.datdba) as \"Owner\", "
    "pg_catalog.pg_encoding_to_char(d.encoding) as \"Encoding\", pg_catalog.array_to_string(d.datacl, E'\\n') "
    "AS \"Access privileges\" FROM pg_catalog.pg_database d ORDER BY 1;",
    "SELECT n.nspname AS \"Name\", pg_catalog.pg_get_userbyid(n.nspowner) AS \"Owner\" FROM "
    "pg_catalog.pg_namespace n WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' ORDER BY 1;",
    "SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin, r.rolconnlimit, "
    "r.rolvaliduntil, r.rolreplication, r.rolbypassrls FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_' "
    "ORDER BY 1;",
    "SELECT n.nspname as \"Schema\", p.proname as \"Name\", pg_catalog.pg_get_function_result(p.oid) as "
    "\"Result data type\", pg_catalog.pg_get_function_arguments(p.oid) as \"Argument data types\" FROM "
    "pg_catalog.pg_proc p LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE "
    "pg_catalog.pg_function_is_visible(p.oid) AND n.nspname <> 'pg_catalog' ORDER BY 1, 2, 4;",
    "SELECT pg_catalog.quote_ident(c.relname) FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'S', 'v', 'm', "
    "'f', 'p') AND substring(pg_catalog.quote_ident(c.relname),1,3)='cus' AND "
    "pg_catalog.pg_table_is_visible(c.oid) LIMIT 1000",
    # pg_dump
    "SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0; "
    "SET client_encoding = 'UTF8'; SET standard_conforming_strings = on; "
    "SELECT pg_catalog.set_config('search_path', '', false); SET check_function_bodies = false; "
    "SET xmloption = content; SET client_min_messages = warning; SET row_security = off;",
    "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE",
    "LOCK TABLE public.customers IN ACCESS SHARE MODE",
    # pgjdbc
    "SET extra_float_digits = 3",
    "SET application_name = 'PostgreSQL JDBC Driver'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "select current_schema()",
    "SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME, CASE n.nspname ~ '^pg_' OR "
    "n.nspname = 'information_schema' WHEN true THEN CASE c.relkind WHEN 'r' THEN 'SYSTEM TABLE' ELSE NULL END "
    "WHEN false THEN CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'v' THEN 'VIEW' ELSE NULL END ELSE NULL END AS "
    "TABLE_TYPE, d.description AS REMARKS FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c LEFT JOIN "
    "pg_catalog.pg_description d ON (c.oid = d.objoid AND d.objsubid = 0 and d.classoid = 'pg_class'::regclass) "
    "WHERE c.relnamespace = n.oid AND c.relname LIKE '%' ORDER BY TABLE_TYPE,TABLE_SCHEM,TABLE_NAME",
    "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid FROM "
    "pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns join ( select "
    "s.r, (current_schemas(false))[s.r] as nspname from generate_series(1, array_upper(current_schemas(false), 1)) "
    "as s(r) ) as r using ( nspname ) ) as sp ON sp.nspoid = typnamespace WHERE pg_type.oid = $1 ORDER BY sp.r, "
    "pg_type.oid DESC",
    # npgsql
    "SELECT version();",
    "SELECT ns.nspname, typ.oid, typ.typname, typ.typtype FROM pg_type AS typ JOIN pg_namespace AS ns ON "
    "(ns.oid = typ.typnamespace) LEFT JOIN pg_class AS cls ON (cls.oid = typ.typrelid) LEFT JOIN pg_proc AS proc "
    "ON proc.oid = typ.typreceive WHERE typ.typtype IN ('b', 'r', 'm', 'e', 'd') OR (typ.typtype = 'c' AND "
    "cls.relkind='c') ORDER BY CASE WHEN typ.typtype IN ('b', 'e', 'p') THEN 0 ELSE 1 END",
    "DISCARD ALL",
    "SET SESSION AUTHORIZATION DEFAULT;RESET ALL;CLOSE ALL;UNLISTEN *;SELECT pg_advisory_unlock_all();"
    "DISCARD SEQUENCES;DISCARD TEMP",
    # asyncpg
    "SELECT pg_advisory_unlock_all();\nCLOSE ALL;\nUNLISTEN *;\nRESET ALL;",
    "WITH RECURSIVE typeinfo_tree(oid, ns, name, kind, basetype, elemtype, depth) AS (SELECT ti.oid, ti.ns, "
    "ti.name, ti.kind, ti.basetype, ti.elemtype, 0 FROM (SELECT t.oid, ns.nspname AS ns, t.typname AS name, "
    "t.typtype AS kind, t.typbasetype AS basetype, t.typelem AS elemtype FROM pg_catalog.pg_type AS t INNER JOIN "
    "pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace) AS ti WHERE ti.oid = any($1::oid[]) UNION ALL SELECT "
    "ti.oid, ti.ns, ti.name, ti.kind, ti.basetype, ti.elemtype, tt.depth + 1 FROM (SELECT t.oid, t.typname AS "
    "name, ns.nspname AS ns, t.typtype AS kind, t.typbasetype AS basetype, t.typelem AS elemtype FROM "
    "pg_catalog.pg_type AS t INNER JOIN pg_catalog.pg_namespace ns ON ns.oid = t.typnamespace) ti, typeinfo_tree tt "
    "WHERE (tt.elemtype IS NOT NULL AND ti.oid = tt.elemtype)) SELECT DISTINCT * FROM typeinfo_tree "
    "ORDER BY depth DESC",
    # psycopg 3
    "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, typdelim AS delimiter "
    "FROM pg_type t WHERE t.oid = $1::regtype ORDER BY t.oid",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
    'SAVEPOINT "_pg3_1"',
    'RELEASE "_pg3_1"',
    'ROLLBACK TO "_pg3_1"',
    'DECLARE "c1" CURSOR FOR SELECT * FROM customers',
    'FETCH FORWARD 100 FROM "c1"',
    'MOVE ABSOLUTE 0 FROM "c1"',
    'CLOSE "c1"',
    # DBeaver-style metadata
    "SELECT current_schema(),session_user",
    "SHOW search_path",
    "SELECT db.oid,db.* FROM pg_catalog.pg_database db WHERE datallowconn AND NOT datistemplate OR "
    "db.datname =$1 ORDER BY db.datname",
    "select c.oid,c.*,d.description,pg_catalog.pg_get_expr(c.relpartbound, c.oid) as partition_expr, "
    "pg_catalog.pg_get_partkeydef(c.oid) as partition_key from pg_catalog.pg_class c left outer join "
    "pg_catalog.pg_description d on d.objoid=c.oid and d.objsubid=0 and d.classoid='pg_class'::regclass where "
    "c.relnamespace=$1 and c.relkind not in ('i','I','c')",
    "select * from pg_catalog.pg_settings where name='standard_conforming_strings'",
    "SET application_name = 'DBeaver 23.0.0 - Main'",
    # everyday reads and session housekeeping
    "SELECT 1",
    "SELECT * FROM customers WHERE id = $1",
    "SELECT c.name, sum(o.amount) FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY 1",
    "WITH big AS (SELECT * FROM orders WHERE amount > 100) SELECT count(*) FROM big",
    "SELECT * FROM information_schema.tables WHERE table_schema = 'public'",
    "EXPLAIN SELECT * FROM orders",
    "EXPLAIN ANALYZE SELECT * FROM orders",
    "EXPLAIN DELETE FROM orders",
    "COPY customers TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT * FROM orders) TO STDOUT",
    "LISTEN events",
    "UNLISTEN events",
    "DEALLOCATE ALL",
    "DEALLOCATE pdo_stmt_1",
    "PREPARE q AS SELECT * FROM customers WHERE id = $1; EXECUTE q(1)",
    "SET statement_timeout = '5s'",
    "SET search_path = public, \"$user\"",
    "SET TIME ZONE 'UTC'",
    "RESET statement_timeout",
    "SET LOCAL lock_timeout = '1s'",
    "SET default_transaction_read_only = on",
    "SHOW ALL",
    "BEGIN; SELECT 1; COMMIT",
    "START TRANSACTION READ ONLY",
    "ROLLBACK",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SELECT current_setting('server_version_num')",
    "SELECT set_config('application_name', 'x', false)",
    "SET CONSTRAINTS ALL DEFERRED",
]

SHOP = "shop"


def _decide_all(sql: str, level: str, policy: Policy | None = None, ctx: Context | None = None) -> list:
    policy = policy or Policy()
    ctx = ctx or Context(SHOP, level)
    return policy.decide_all(classify(sql, PreparedRegistry()), ctx)


def test_corpus_sizes() -> None:
    assert len(READ_ONLY_BYPASS) >= 80 and len(set(READ_ONLY_BYPASS)) == len(READ_ONLY_BYPASS)
    assert len(READ_ONLY_ROUTINE) >= 40 and len(set(READ_ONLY_ROUTINE)) == len(READ_ONLY_ROUTINE)


@pytest.mark.parametrize("sql", READ_ONLY_BYPASS)
def test_read_only_refuses(sql: str) -> None:
    decisions = _decide_all(sql, "read_only")
    assert decisions and not all(d.allowed for d in decisions)
    denied = next(d for d in decisions if not d.allowed)
    assert denied.message.startswith('hoopd: read_only access to connection "shop" does not allow ')


@pytest.mark.parametrize("sql", READ_ONLY_ROUTINE)
def test_read_only_allows_routine(sql: str) -> None:
    decisions = _decide_all(sql, "read_only")
    assert decisions and all(d.allowed for d in decisions), [d.message for d in decisions if not d.allowed]


@pytest.mark.parametrize("sql", READ_ONLY_BYPASS)
def test_admin_allows_all_but_opaque_needs_nothing(sql: str) -> None:
    assert all(d.allowed for d in _decide_all(sql, "admin"))


READ_WRITE_ALLOWS = [
    "DELETE FROM orders", "INSERT INTO orders (item) VALUES ('x')", "UPDATE customers SET phone = NULL",
    "MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN DELETE",
    "COPY orders FROM STDIN", "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
    "EXPLAIN ANALYZE DELETE FROM orders", "PREPARE p AS DELETE FROM orders",
    "CREATE TEMP TABLE t (id int)", "CREATE TEMPORARY TABLE t AS SELECT * FROM customers",
    "SELECT * INTO TEMP stolen FROM customers", "CREATE TEMP SEQUENCE s", "CREATE TEMP VIEW v AS SELECT 1",
    "SELECT nextval('orders_id_seq')", "SELECT setval('orders_id_seq', 1)", "SELECT pg_advisory_lock(42)",
    "SELECT lo_create(0)", "SELECT pg_notify('c', 'x')", "NOTIFY chan", "SELECT * FROM orders FOR UPDATE",
    "LOCK TABLE orders IN ROW EXCLUSIVE MODE", "BEGIN READ WRITE", "SET TRANSACTION READ WRITE",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", "SET default_transaction_read_only = off",
    "COMMIT PREPARED 'x'", "SELECT set_config('default_transaction_read_only', 'off', false)",
]
READ_WRITE_REFUSES = {
    "DROP TABLE orders": "ddl (DROP TABLE)",
    "TRUNCATE orders": "ddl (TRUNCATE)",
    "CREATE TABLE t (id int)": "ddl (CREATE TABLE)",
    "SELECT * INTO stolen FROM customers": "ddl (SELECT INTO)",
    "CREATE INDEX ON orders (item)": "ddl (CREATE INDEX)",
    "CREATE TEMP TABLE t (id int DEFAULT pg_terminate_backend(1)::int)": "function pg_terminate_backend()",
    "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1": "ddl (inside EXPLAIN ANALYZE)",
    "GRANT ALL ON customers TO PUBLIC": "dcl (GRANT)",
    "CREATE ROLE evil": "dcl (CREATE ROLE)",
    "SET ROLE postgres": "privilege changes (SET ROLE)",
    "RESET ROLE": "privilege changes (RESET ROLE)",
    "SET SESSION AUTHORIZATION postgres": "privilege changes (SET SESSION AUTHORIZATION)",
    "SELECT set_config('role', 'x', false)": "privilege changes (set_config of role inside SELECT)",
    "SELECT set_config($1, 'x', false)": "privilege changes (set_config of a computed setting name inside SELECT)",
    "COPY orders TO PROGRAM 'id'": "server-side files or programs (COPY)",
    "COPY orders FROM '/etc/passwd'": "server-side files or programs (COPY)",
    "SELECT pg_read_file('/etc/passwd')": "function pg_read_file()",
    "SELECT lo_import('/etc/passwd')": "function lo_import()",
    "SELECT dblink_exec('x', 'y')": "function dblink_exec()",
    "SELECT pg_terminate_backend(1)": "function pg_terminate_backend()",
    "VACUUM orders": "vacuum",
    "ANALYZE orders": "analyze",
    "CHECKPOINT": "utility (CHECKPOINT)",
    "DO $$ BEGIN NULL; END $$": "do (DO): its effects cannot be checked; a rule can allow it",
    "CALL p()": "call (CALL): its effects cannot be checked; a rule can allow it",
    "SELEC 1": 'statements the parser cannot parse (syntax error at or near "SELEC", at index 0)',
}


@pytest.mark.parametrize("sql", READ_WRITE_ALLOWS)
def test_read_write_allows(sql: str) -> None:
    assert all(d.allowed for d in _decide_all(sql, "read_write"))


@pytest.mark.parametrize("sql,why", READ_WRITE_REFUSES.items())
def test_read_write_refuses_with_a_reason(sql: str, why: str) -> None:
    (d,) = _decide_all(sql, "read_write")
    assert not d.allowed and d.rule is None and d.action == "deny"
    assert d.message == f'hoopd: read_write access to connection "shop" does not allow {why}'


def test_level_messages() -> None:
    (d,) = _decide_all("INSERT INTO orders (item) VALUES ('x')", "read_only")
    assert d.message == 'hoopd: read_only access to connection "shop" does not allow insert'
    (d,) = _decide_all("WITH d AS (DELETE FROM orders RETURNING 1) SELECT * FROM d", "read_only")
    assert d.message.endswith("does not allow delete (inside SELECT)")
    (d,) = _decide_all("SELECT * FROM orders FOR UPDATE", "read_only")
    assert d.message.endswith("does not allow row locks (SELECT ... FOR UPDATE/SHARE)")
    (d,) = _decide_all("LOCK orders", "read_only")
    assert d.message.endswith("does not allow LOCK stronger than ACCESS SHARE MODE")
    (d,) = _decide_all("DECLARE c CURSOR FOR SELECT * FROM orders FOR SHARE", "read_only")
    assert d.message.endswith("does not allow row locks (FOR UPDATE/SHARE inside DECLARE CURSOR)")
    (d,) = _decide_all("SELECT set_config('transaction_read_only', 'off', true)", "read_only")
    assert d.message.endswith("does not allow privilege changes (set_config of transaction_read_only inside SELECT)")
    (d,) = _decide_all("START TRANSACTION READ WRITE", "read_only")
    assert d.message.endswith("does not allow privilege changes (START TRANSACTION)")
    (d,) = _decide_all("NOTIFY c", "read_only")
    assert d.message.endswith("does not allow writes (NOTIFY)")
    (d,) = _decide_all("SELECT nextval('s')", "read_only")
    assert d.message.endswith("does not allow function nextval() (volatile: it may change state)")


def test_no_level_refuses_everything() -> None:
    (d,) = _decide_all("SELECT 1", None)  # type: ignore[arg-type]
    assert not d.allowed and "no access level" in d.message


def test_execute_is_decided_by_its_body() -> None:
    reg = PreparedRegistry()
    ctx = Context(SHOP, "read_only")
    policy = Policy()
    # prepared under admin (or via Parse) earlier in the session
    reg.apply(classify("PREPARE wipe AS DELETE FROM orders")[0])
    reg.apply(classify("PREPARE look AS SELECT * FROM orders")[0])
    (d,) = policy.decide_all(classify("EXECUTE wipe", reg), ctx)
    assert not d.allowed and d.message.endswith("does not allow delete (inside EXECUTE)")
    (d,) = policy.decide_all(classify("EXECUTE look", reg), ctx)
    assert d.allowed


def test_opaque_needs_a_rule_below_admin() -> None:
    allow_do = Rule("trusted-do", "allow", kinds=frozenset({"do"}), users=("alice",))
    policy = Policy([allow_do])
    alice = Context(SHOP, "read_only", "alice")
    bob = Context(SHOP, "read_only", "bob")
    (d,) = policy.decide_all(classify("DO $$ BEGIN NULL; END $$"), alice)
    assert d.allowed and d.rule == "trusted-do"
    (d,) = policy.decide_all(classify("DO $$ BEGIN NULL; END $$"), bob)
    assert not d.allowed and "a rule can allow it" in d.message
    # an allow rule never lifts what the level itself refuses
    (d,) = policy.decide_all(classify("CALL p(pg_terminate_backend(1))"), alice)
    assert not d.allowed


@pytest.mark.parametrize("setting,allowed_levels", [
    ("none", set()),
    ("read_only", {"read_only", "read_write", "admin"}),
    ("read_write", {"read_write", "admin"}),
    ("admin", {"admin"}),
])
def test_unparseable_setting(setting: str, allowed_levels: set) -> None:
    for policy in (Policy(unparseable=setting), Policy(connections={SHOP: ((), setting)})):
        for level in ("read_only", "read_write", "admin"):
            (d,) = policy.decide_all(classify("SELEC 1"), Context(SHOP, level))
            assert d.allowed == (level in allowed_levels)


def test_connection_unparseable_overrides_global() -> None:
    policy = Policy(unparseable="none", connections={SHOP: ((), "read_only"), "other": ((), None)})
    assert policy.decide(classify("SELEC")[0], Context(SHOP, "read_only")).allowed
    assert not policy.decide(classify("SELEC")[0], Context("other", "admin")).allowed


def test_level_denial_is_none_for_admin() -> None:
    for sql in READ_ONLY_BYPASS:
        for info in classify(sql):
            assert level_denial(info, "admin") is None


def test_upstream_settings() -> None:
    assert upstream_settings("read_only") == {"default_transaction_read_only": "on"}
    assert upstream_settings("read_write") == {} and upstream_settings("admin") == {}
