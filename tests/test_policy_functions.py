"""The read_only function allowlist (hoopd.policy.functions): the built-in table is
PostgreSQL's own catalog, resolution of names and operators, the per-database catalog
cache, and end to end through the gateway against an upstream role that may write."""
from __future__ import annotations

import time

import psycopg
import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from hoopd.policy import functions
from hoopd.policy.functions import (BUILTINS, BUILTINS_QUERY, SQL_EXECUTORS, VETTED_VOLATILE, FunctionCatalogs,
                                    UserFunctions, read_only_refusal, unresolved)
from tests.gateway import Gateway, connection_toml, users_toml

USER = UserFunctions.from_rows([
    ("f", "fx", "price", "s"), ("f", "fx", "bump", "v"), ("f", "public", "lower", "v"),
    ("f", "ext", "crosstab", "v"), ("f", "fx", "vetted", "v"), ("o", "fx", "###", "v"), ("o", "fx", "~~~", "i"),
])


def refusal(*calls, operators=(), user=USER, vetted=frozenset()):
    return read_only_refusal(calls, operators, user, vetted)


# --- the built-in table ------------------------------------------------------------------

@pytest.mark.integration
def test_builtin_table_is_the_servers_catalog(pg):
    """pg_builtins.tsv is what this PostgreSQL's pg_proc says (regenerate it with
    scripts/gen_pg_builtins.py when this fails after an upgrade)."""
    with psycopg.connect(pg.superuser_dsn()) as conn:
        assert dict(conn.execute(BUILTINS_QUERY).fetchall()) == dict(BUILTINS)
    assert len(BUILTINS) > 2000


def test_vetted_and_executor_lists_name_real_functions():
    assert all(BUILTINS.get(n) == "v" for n in VETTED_VOLATILE)  # a vetted one that is not volatile is a typo
    assert {"query_to_xml", "table_to_xml", "ts_stat", "cursor_to_xml", "database_to_xml"} <= SQL_EXECUTORS


# --- resolution ----------------------------------------------------------------------------

@pytest.mark.parametrize("call", [(None, "lower"), ("pg_catalog", "now"), (None, "count"), (None, "random"),
                                  (None, "pg_sleep"), (None, "pg_relation_size"), ("fx", "price"),
                                  (None, "price"), (None, "set_config"), (None, "pg_advisory_unlock_all")])
def test_allowed_calls(call):
    user = UserFunctions.from_rows([("f", "fx", "price", "s")])  # no shadowing function in this one
    assert refusal(call, user=user) is None


@pytest.mark.parametrize("call, why", [
    ((None, "nextval"), "function nextval() (volatile: it may change state)"),
    ((None, "txid_current"), "function txid_current() (it assigns a transaction id)"),
    ((None, "pg_current_xact_id"), "function pg_current_xact_id() (it assigns a transaction id)"),
    ((None, "brin_summarize_range"), "volatile"),
    ((None, "pg_advisory_lock"), "volatile"),
    ((None, "lo_import"), "volatile"),
    ((None, "query_to_xml"), "runs SQL or reads tables"),
    (("pg_catalog", "table_to_xml"), "runs SQL or reads tables"),
    (("ext", "crosstab"), "runs SQL or reads tables"),  # in whatever schema the extension went
    ((None, "ts_stat"), "runs SQL or reads tables"),
    (("fx", "bump"), "fx.bump is volatile"),
    ((None, "bump"), "fx.bump is volatile"),  # reachable through search_path
    ((None, "lower"), "public.lower is volatile"),  # shadows pg_catalog.lower for search_path = public, pg_catalog
    (("fx", "nothere"), "function fx.nothere() (not found in the database's catalog)"),
    ((None, "nothere"), "not found"),
    (("public", "now"), "not found"),  # a built-in only in pg_catalog
    ((None, "Lower"), "not found"),  # quoted: another name
])
def test_refused_calls(call, why):
    got = refusal(call)
    assert got is not None and why in got


def test_vetted_volatile_function():
    assert refusal(("fx", "vetted")) is not None
    assert refusal(("fx", "vetted"), vetted=frozenset({"fx.vetted"})) is None
    assert refusal((None, "vetted"), vetted=frozenset({"fx.vetted"})) is None
    assert refusal(("fx", "bump"), vetted=frozenset({"fx.vetted"})) is not None


def test_operators():
    assert refusal(operators=[(None, "+"), (None, "~~")]) is None
    assert "operator ###" in refusal(operators=[(None, "###")])
    assert "operator fx.###" in refusal(operators=[("fx", "###")])
    assert refusal(operators=[(None, "~~~")]) is None  # immutable
    assert "could not be read" in refusal(operators=[(None, "+")], user=None)


def test_hidden_uses_are_worked_out_lazily_once_and_fail_closed(monkeypatch):
    user = UserFunctions.from_rows([
        ("f", "fx", "loop", "s"), ("S", "fx", "loop", "select fx.loop()", None),  # recursive: no refusal by itself
        ("f", "fx", "loop2", "s"), ("S", "fx", "loop2", "select fx.loop2() + pg_advisory_lock(1)", None),
        ("V", "public", "v", "SELECT 1 FROM (garbage", None),  # unparseable: refuses
        ("V", "fx", "v", "SELECT 1", None), ("C", "fx", "d", "(VALUE > 0)", None),
        ("V", "other", "w", "SELECT fx.loop2()", None),
    ])
    assert refusal((None, "loop"), user=user) is None
    assert "fx.loop2() (it uses function pg_advisory_lock()" in refusal(("fx", "loop2"), user=user)
    assert "could not parse" in read_only_refusal((), (), user, relations=["v"])  # any schema's v
    assert read_only_refusal((), (), user, relations=["fx.v"], types=[(None, "d")]) is None
    parsed = []
    real = functions.statements_of
    monkeypatch.setattr(functions, "statements_of", lambda sql: parsed.append(sql) or real(sql))
    for _ in range(3):
        assert "relation other.w" in read_only_refusal((), (), user, relations=["other.w"])
    assert parsed == ["SELECT fx.loop2()"]  # the view once; fx.loop2's body was worked out above


def test_plpgsql_bodies_and_other_languages():
    body = ("CREATE FUNCTION fx.f(x int) RETURNS int STABLE LANGUAGE plpgsql AS $$ DECLARE a int[]; c refcursor; r int := lower('a');"
            " BEGIN r = x + 1; PERFORM upper('b'); IF x > 0 THEN RETURN (SELECT count(*) FROM t); END IF;"
            " RETURN r; END $$")
    texts, dynamic = functions.plpgsql_statements(body)
    assert not dynamic and texts == ["select lower('a')", "select  x + 1", "SELECT upper('b')", "select x > 0",
                                     "select (SELECT count(*) FROM t)"]
    for dyn in ("EXECUTE 'select 1'", "FOR r IN EXECUTE 'select 1' LOOP END LOOP", "OPEN c FOR EXECUTE 'x'"):
        assert functions.plpgsql_statements(body.replace("PERFORM upper('b')", dyn))[1], dyn
    with pytest.raises(ValueError):  # a subscripted target: not taken apart, so refused
        functions.plpgsql_statements(body.replace("r = x + 1", "a[f()] := 1"))
    user = UserFunctions.from_rows([("f", "fx", "py", "s"), ("G", "fx", "py", "plpython3u", None)])
    assert "language plpython3u" in refusal(("fx", "py"), user=user)
    assert refusal(("fx", "py"), user=user, vetted=frozenset({"fx.py"})) is None


def test_unreadable_catalog_refuses_every_call():
    assert "could not be read" in refusal((None, "lower"), user=None)
    assert refusal(user=None) is None  # nothing called: nothing to check


def test_unresolved():
    assert not unresolved([(None, "lower"), ("fx", "price")], USER)
    assert unresolved([("fx", "fresh")], USER)
    assert unresolved([(None, "lower")], None)


# --- the cache -------------------------------------------------------------------------------

class Loads:
    def __init__(self) -> None:
        self.pending: list[tuple[tuple[str, str], Deferred]] = []

    def __call__(self, connection: str, database: str) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append(((connection, database), d))
        return d


def test_catalog_loads_once_for_all_waiters_and_keeps_others_when_one_cancels():
    loads, clock = Loads(), Clock()
    cats = FunctionCatalogs(loads, clock, max_age=60, retry=1)
    assert cats.needs_load("shop", "shop", missing=False)
    a, b = cats.refresh("shop", "shop"), cats.refresh("shop", "shop")
    assert len(loads.pending) == 1  # coalesced
    got: list = []
    a.addErrback(lambda f: None)
    a.cancel()  # that session went away
    b.addCallback(got.append)
    loads.pending[0][1].callback([("f", "fx", "price", "s")])
    assert got == [UserFunctions.from_rows([("f", "fx", "price", "s")])]
    assert not cats.needs_load("shop", "shop", missing=False)


def test_catalog_max_age_ddl_and_retry():
    loads, clock = Loads(), Clock()
    cats = FunctionCatalogs(loads, clock, max_age=60, retry=1)
    cats.refresh("shop", "shop")
    loads.pending[-1][1].callback([])
    assert not cats.needs_load("shop", "shop", missing=True)  # just read: a missing name is refused
    clock.advance(1)
    assert cats.needs_load("shop", "shop", missing=True)  # read once more before refusing
    assert not cats.needs_load("shop", "shop", missing=False)
    cats.changed("other")
    assert not cats.needs_load("shop", "shop", missing=False)
    cats.changed("shop")  # a DDL statement passed on this connection
    assert cats.needs_load("shop", "shop", missing=False)
    cats.refresh("shop", "shop")
    loads.pending[-1][1].callback([])
    clock.advance(60)
    assert cats.needs_load("shop", "shop", missing=False)  # too old


def test_failed_load_keeps_the_old_snapshot():
    loads, clock = Loads(), Clock()
    cats = FunctionCatalogs(loads, clock)
    got: list = []
    cats.refresh("shop", "shop").addCallback(got.append)
    loads.pending[-1][1].errback(RuntimeError("upstream down"))
    assert got == [None]
    cats.refresh("shop", "shop").addCallback(got.append)
    loads.pending[-1][1].callback([("f", "fx", "price", "s")])
    cats.refresh("shop", "shop").addCallback(got.append)
    loads.pending[-1][1].errback(RuntimeError("upstream down"))
    assert got[2] == got[1] and got[1] is not None


# --- end to end --------------------------------------------------------------------------------

SETUP = """
CREATE SCHEMA fx AUTHORIZATION app_scram;
CREATE EXTENSION IF NOT EXISTS tablefunc SCHEMA fx;
SET ROLE app_scram;
CREATE TABLE fx.hits (n int);
CREATE FUNCTION fx.price(int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1 * 2';
CREATE FUNCTION fx.bump() RETURNS int VOLATILE LANGUAGE sql AS 'INSERT INTO fx.hits VALUES (1) RETURNING n';
CREATE FUNCTION fx.lower(text) RETURNS text VOLATILE LANGUAGE sql AS 'INSERT INTO fx.hits VALUES (2); SELECT $1';
CREATE FUNCTION fx.vetted() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 41 + 1';
CREATE FUNCTION fx.addhit(int, int) RETURNS int VOLATILE LANGUAGE sql AS 'INSERT INTO fx.hits VALUES ($1) RETURNING $2';
CREATE OPERATOR fx.### (LEFTARG = int, RIGHTARG = int, FUNCTION = fx.addhit);
-- what runs without being named: every one of these takes an advisory lock (an effect a
-- read-only transaction does not stop) through a function the statement does not show
CREATE VIEW fx.v_lock AS SELECT pg_try_advisory_lock(42) AS locked;
CREATE VIEW fx.v_outer AS SELECT * FROM fx.v_lock;
CREATE FUNCTION fx.sneaky() RETURNS bool STABLE LANGUAGE sql AS 'SELECT pg_try_advisory_lock(43)';
CREATE VIEW fx.v_sneaky AS SELECT fx.sneaky() AS locked;
CREATE FUNCTION fx.atomic() RETURNS bool STABLE LANGUAGE sql BEGIN ATOMIC SELECT pg_try_advisory_lock(44); END;
CREATE FUNCTION fx.dflt(x bool DEFAULT pg_try_advisory_lock(45)) RETURNS bool IMMUTABLE LANGUAGE sql AS 'SELECT $1';
CREATE TABLE fx.guarded (n int);
INSERT INTO fx.guarded VALUES (1);
ALTER TABLE fx.guarded ENABLE ROW LEVEL SECURITY;
ALTER TABLE fx.guarded FORCE ROW LEVEL SECURITY;
CREATE POLICY sneaky ON fx.guarded FOR SELECT USING (pg_try_advisory_lock(46));
CREATE DOMAIN fx.locked_int AS int CHECK (pg_try_advisory_lock(47));
CREATE DOMAIN fx.locked_too AS fx.locked_int;
CREATE TYPE fx.pair AS (a bool);
CREATE FUNCTION fx.to_pair(int) RETURNS fx.pair STABLE LANGUAGE sql AS 'SELECT ROW(pg_try_advisory_lock(48))::fx.pair';
CREATE CAST (int AS fx.pair) WITH FUNCTION fx.to_pair(int);
CREATE FUNCTION fx.eq_lock(int, int) RETURNS bool STABLE LANGUAGE sql AS 'SELECT pg_try_advisory_lock(49) AND $1 = $2';
CREATE OPERATOR fx.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = fx.eq_lock);
CREATE FUNCTION fx.step(int, int) RETURNS int STABLE LANGUAGE sql AS 'SELECT $1 + $2 + pg_try_advisory_lock(50)::int';
CREATE AGGREGATE fx.total(int) (SFUNC = fx.step, STYPE = int, INITCOND = '0');
CREATE FUNCTION fx.pl_perform() RETURNS bool STABLE LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_try_advisory_lock(51); RETURN true; END $$;
CREATE FUNCTION fx.pl_assign() RETURNS bool STABLE LANGUAGE plpgsql AS $$
DECLARE b bool; BEGIN b := pg_try_advisory_lock(52); RETURN b; END $$;
CREATE FUNCTION fx.pl_dynamic() RETURNS bool STABLE LANGUAGE plpgsql AS $$
DECLARE b bool; BEGIN EXECUTE 'SELECT pg_try_advisory_' || 'lock(53)' INTO b; RETURN b; END $$;
-- and harmless ones, which pass
CREATE FUNCTION fx.pl_ok(x int) RETURNS int STABLE LANGUAGE plpgsql AS $$
DECLARE y int := x * 2; BEGIN y := y + 1; IF y > 2 THEN RETURN fx.price(y); END IF; RETURN 0; END $$;
CREATE VIEW fx.v_ok AS SELECT fx.price(n) AS p FROM fx.hits;
CREATE DOMAIN fx.positive AS int CHECK (VALUE > 0);
CREATE TABLE fx.open_rows (n int);
ALTER TABLE fx.open_rows ENABLE ROW LEVEL SECURITY;
CREATE POLICY fine ON fx.open_rows FOR SELECT USING (n > 0);
RESET ROLE;
"""


@pytest.fixture(scope="module")
def fgw(pg, tmp_path_factory):
    pg.psql(SETUP, dbname="shop")
    folder = tmp_path_factory.mktemp("gwfn")
    g = Gateway(folder, users_toml() + '[policy]\nread_only_functions = ["fx.vetted"]\n'
                + connection_toml("shop", "127.0.0.1", pg.port, "shop", pg.app_scram.name, pg.app_scram.password)
                ).start()
    yield g
    g.stop()
    pg.psql("DROP SCHEMA fx CASCADE;", dbname="shop")
    assert "Traceback" not in g.log()


def _hits(pg) -> int:
    with psycopg.connect(pg.superuser_dsn("shop")) as su:
        return su.execute("select count(*) from fx.hits").fetchone()[0]


def _refused(conn: psycopg.Connection, sql: str, prepare: bool | None = None) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
        conn.execute(sql, prepare=prepare)
    conn.rollback()
    msg = e.value.diag.message_primary or ""
    assert msg.startswith("hoopd: read_only access")
    return msg


FORMS = [
    ("SELECT fx.bump()", "fx.bump"),
    ("SELECT * FROM fx.bump()", "fx.bump"),
    ("SELECT 1 FROM customers WHERE fx.bump() > 0", "fx.bump"),
    ("WITH x AS (SELECT fx.bump()) SELECT * FROM x", "fx.bump"),
    ("SELECT 1 OPERATOR(fx.###) 2", "operator fx.###"),
    ("SELECT nextval('orders_id_seq')", "nextval"),
    ("SELECT txid_current()", "txid_current"),
    ("SELECT query_to_xml('INSERT INTO fx.hits VALUES (9) RETURNING 1', true, true, '')", "query_to_xml"),
    ("SELECT table_to_xml('customers', true, true, '')", "table_to_xml"),
    ("SELECT * FROM fx.crosstab('INSERT INTO fx.hits VALUES (3) RETURNING 1::text, 1::text, 1::text')",
     "fx.crosstab"),
    ("SELECT ts_stat('SELECT to_tsvector(name) FROM customers')", "ts_stat"),
    ("SELECT fx.nothere()", "fx.nothere"),
]


@pytest.mark.integration
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_read_only_calls_only_functions_without_effect(fgw, pg, prepare):
    before = _hits(pg)
    with psycopg.connect(fgw.dsn("reader")) as conn:
        for sql, name in FORMS:
            assert name in _refused(conn, sql, prepare)
        assert conn.execute("SELECT fx.price(21), upper('a'), count(*) FROM customers").fetchone()[:2] == (42, "A")
        assert conn.execute("SELECT fx.vetted()").fetchone() == (42,)  # [policy] read_only_functions
        # whatever the search_path (PostgreSQL 15 does not report it), fx.lower may be the one that runs
        assert "fx.lower is volatile" in _refused(conn, "SELECT lower('A')")
        conn.execute("SET search_path = fx, pg_catalog")
        assert "operator ###" in _refused(conn, "SELECT 1 ### 2")
    assert _hits(pg) == before  # nothing of it ran


HIDDEN_FORMS = [
    ("SELECT * FROM fx.v_lock", "relation fx.v_lock"),
    ("SELECT locked FROM fx.v_outer", "relation fx.v_outer"),  # a view of a view
    ("WITH x AS (SELECT * FROM fx.v_sneaky) SELECT * FROM x", "fx.sneaky()"),  # view -> stable SQL function
    ("SELECT fx.sneaky()", "function fx.sneaky() (it uses"),  # a stable function's body
    ("SELECT fx.atomic()", "function fx.atomic() (it uses"),  # BEGIN ATOMIC body
    ("SELECT fx.dflt()", "function fx.dflt() (it uses"),  # an argument's default
    ("SELECT count(*) FROM fx.guarded", "relation fx.guarded"),  # a row security policy
    ("SELECT 1::fx.locked_int", "type fx.locked_int"),  # a domain's CHECK
    ("SELECT CAST(1 AS fx.locked_too)", "uses type fx.locked_int"),  # a domain over it
    ("SELECT (1::fx.pair).a", "type fx.pair"),  # a cast's function
    ("SELECT 1 OPERATOR(fx.===) 1", "operator fx.=== (it uses function fx.eq_lock()"),  # a stable operator function's body
    ("SELECT fx.total(n) FROM fx.hits", "function fx.total()"),  # an aggregate's transition function
    ("SELECT fx.pl_perform()", "function fx.pl_perform() (it uses"),  # PL/pgSQL: PERFORM
    ("SELECT fx.pl_assign()", "function fx.pl_assign() (it uses"),  # PL/pgSQL: an assignment
    ("SELECT fx.pl_dynamic()", "fx.pl_dynamic() (it uses dynamic SQL (EXECUTE)"),  # what it runs is not known
]


def _advisory_locks(pg) -> int:
    with psycopg.connect(pg.superuser_dsn("shop")) as su:
        return su.execute("select count(*) from pg_locks where locktype = 'advisory'").fetchone()[0]


@pytest.mark.integration
@pytest.mark.parametrize("prepare", [False, True], ids=["simple", "extended"])
def test_read_only_sees_what_views_types_policies_and_bodies_run(fgw, pg, prepare):
    """Views (and views of views), row security policies, domain CHECKs, casts, SQL
    function bodies and defaults, operator and aggregate functions run functions the
    statement does not name: each is refused, and no advisory lock was taken."""
    with psycopg.connect(fgw.dsn("reader")) as conn:
        for sql, name in HIDDEN_FORMS:
            msg = _refused(conn, sql, prepare)
            assert name in msg and ("pg_try_advisory_lock" in msg or "dynamic" in msg), (sql, msg)
            assert _advisory_locks(pg) == 0, sql
        assert conn.execute("SELECT count(*) FROM fx.v_ok", prepare=prepare).fetchone() == (0,)
        assert conn.execute("SELECT 3::fx.positive, fx.pl_ok(1)", prepare=prepare).fetchone() == (3, 6)
        assert conn.execute("SELECT count(*) FROM fx.open_rows", prepare=prepare).fetchone() == (0,)
    with psycopg.connect(fgw.dsn("dev"), autocommit=True) as dev:  # admin: PostgreSQL runs it
        assert dev.execute("SELECT locked, pg_advisory_unlock(42) FROM fx.v_lock").fetchone() == (True, True)


@pytest.mark.integration
def test_new_functions_are_found(fgw, pg):
    """A function made through the gateway (a DDL statement passed) or directly (a name
    the cached catalog does not know is looked up again) is resolved, not refused."""
    with psycopg.connect(fgw.dsn("reader"), autocommit=True) as reader, \
            psycopg.connect(fgw.dsn("dev"), autocommit=True) as dev:
        assert reader.execute("SELECT fx.price(1)").fetchone() == (2,)
        dev.execute("CREATE FUNCTION fx.made_here() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 5'")
        assert reader.execute("SELECT fx.made_here()").fetchone() == (5,)
        dev.execute("CREATE OR REPLACE FUNCTION fx.made_here() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 6'")
        assert "volatile" in _refused(reader, "SELECT fx.made_here()")
        pg.psql("SET ROLE app_scram; CREATE FUNCTION fx.made_there() RETURNS int STABLE LANGUAGE sql AS 'SELECT 7';",
                dbname="shop")
        time.sleep(1.1)  # the gateway reads the catalog again for a missing name at most once a second
        assert reader.execute("SELECT fx.made_there()").fetchone() == (7,)


@pytest.mark.integration
def test_admin_and_read_write_keep_their_functions(fgw, pg):
    with psycopg.connect(fgw.dsn("writer"), autocommit=True) as w:
        assert w.execute("SELECT nextval('orders_id_seq') > 0").fetchone() == (True,)
        with pytest.raises(psycopg.errors.UndefinedFunction):  # not the gateway's to refuse at this level
            w.execute("SELECT fx.nothere()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            w.execute("SELECT query_to_xml('SELECT 1', true, true, '')")
    with psycopg.connect(fgw.dsn("dev"), autocommit=True) as dev:
        assert dev.execute("SELECT fx.bump()").fetchone() == (1,)
        dev.execute("DELETE FROM fx.hits")


# --- config ------------------------------------------------------------------------------------

def _config(policy: dict):
    from hoopd.config import parse
    return parse({"listen": {"postgres": "tcp:0"}, "policy": policy})


def test_config_keys():
    from hoopd.confkit import ConfigError
    cfg = _config({"read_only_functions": ["fx.vetted"], "function_catalog_max_age": "5m"})
    assert cfg.functions.read_only_functions == {"fx.vetted"} and cfg.functions.catalog_max_age == 300
    assert _config({}).functions.catalog_max_age == 60
    with pytest.raises(ConfigError, match=r"policy\.read_only_functions.*\"vetted\" is not schema\.name"):
        _config({"read_only_functions": ["vetted"]})
    with pytest.raises(ConfigError, match=r"policy\.function_catalog_max_age"):
        _config({"function_catalog_max_age": "0s"})


# --- the stage holds a statement while the catalog is read ------------------------------------

def test_stage_waits_for_the_catalog_then_decides_and_remembers_the_prepare():
    from hoopd.identity.base import Identity
    from hoopd.pgwire import messages as m
    from hoopd.pgwire.conversation import ClientMessage
    from hoopd.policy.decide import Policy
    from hoopd.policy.stage import PolicyStage
    from hoopd.session import Deny, SessionInfo

    loads, clock = Loads(), Clock()
    stage = PolicyStage(Policy(), functions=FunctionCatalogs(loads, clock))
    s = SessionInfo(id="s1", peer="p", started=0.0, identity=Identity("alice", frozenset()),
                    connection="shop", level="read_only", database="shop")
    ps = stage.open(s, None)

    def q(sql: str) -> ClientMessage:
        return ClientMessage(ord("Q"), m.query(sql)[5:], 0)

    assert ps.client(q("SELECT 1")) is None  # no call: no catalog needed
    held = ps.client(q("PREPARE p AS SELECT fx.price(1)"))
    assert isinstance(held, Deferred) and loads.pending[0][0] == ("shop", "shop")
    got: list = []
    held.addCallback(got.append)
    loads.pending[0][1].callback([("f", "fx", "price", "s"), ("f", "fx", "bump", "v")])
    assert got == [None] and "p" in ps.prepared
    deny = ps.client(q("SELECT fx.bump()"))  # fresh catalog: decided at once
    assert isinstance(deny, Deny) and "fx.bump is volatile" in deny.message
    # a session that goes away while its statement waits gets a quiet refusal
    clock.advance(61)
    held = ps.client(q("SELECT fx.price(2)"))
    assert isinstance(held, Deferred)
    held.cancel()
    got.clear()
    held.addCallback(got.append)
    assert isinstance(got[0], Deny)
    # read_write and admin never wait
    s.level = "read_write"
    assert ps.client(q("SELECT fx.anything()")) is None
