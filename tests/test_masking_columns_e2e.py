"""Column rules through ``twistd hoopd`` with a real PostgreSQL and real clients: the
columns a rule names reach read_only clients masked, whatever the query does to them
(aliases, expressions, views, CTEs, set operations, cursors, binary format, functions);
values keep their column's type; statements that would copy masked values elsewhere
are refused; a table created after the catalog was read is masked until it is read again."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.gateway import USERS, Gateway, connection_toml, users_toml

pytestmark = pytest.mark.integration

SSNS = ("078-05-1120", "219-09-9999")
EMAILS = ("ada.col@example.com", "grace.col@navy.example.org")
UID = "6f1c2a0e-3b1d-4c55-9a7e-0c1d2e3f4a5b"
CLEAR = (*SSNS, *EMAILS, "078051120", UID, "ada.col", "7777")


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql("DROP TABLE IF EXISTS mc_people CASCADE; DROP TABLE IF EXISTS mc_late CASCADE;"
            "CREATE TABLE mc_people (id int PRIMARY KEY, email text, ssn varchar(11), score int, uid uuid,"
            " born date, note text);"
            f"INSERT INTO mc_people VALUES (1, '{EMAILS[0]}', '{SSNS[0]}', 7777, '{UID}', '1990-04-01', 'hello'),"
            f" (2, '{EMAILS[1]}', '{SSNS[1]}', 7777, NULL, NULL, 'world');"
            "GRANT SELECT, INSERT, UPDATE ON mc_people TO PUBLIC;"
            "CREATE OR REPLACE VIEW mc_view AS SELECT id, email AS contact, upper(ssn) AS tax, note FROM mc_people;"
            "CREATE OR REPLACE VIEW mc_view2 AS SELECT contact AS c2, id FROM mc_view;"
            "GRANT SELECT ON mc_view, mc_view2 TO PUBLIC;"
            "CREATE OR REPLACE FUNCTION mc_first() RETURNS text LANGUAGE sql STABLE"
            " AS $$ SELECT ssn FROM mc_people ORDER BY id LIMIT 1 $$;"
            "CREATE OR REPLACE FUNCTION mc_tell() RETURNS int LANGUAGE plpgsql STABLE AS $$ BEGIN"
            " RAISE NOTICE 'first is %', (SELECT ssn FROM mc_people ORDER BY id LIMIT 1); RETURN 1; END $$;"
            "ALTER TABLE mc_people ADD CONSTRAINT mc_note_short CHECK (length(note) < 20);"
            "ANALYZE mc_people;", dbname="shop")
    folder = tmp_path_factory.mktemp("maskcol")
    r = {role.name: role.password for role in pg.roles}
    key = folder / "hash.key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    body = (f'[journal]\ndir = "{folder / "journal"}"\n'
            f'[masking]\nhash_key_file = "{key}"\n'
            '[[masking.rules]]\nname = "pii"\ncolumns = ["public.mc_people.email", "*.ssn", "mc_late.secret"]\n'
            '[[masking.rules]]\nname = "ids"\ncolumns = ["mc_people.uid", "mc_people.score", "mc_people.born"]\n'
            'strategy = "hash"\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]))
    g = Gateway(folder, body).start()
    yield g, pg
    g.stop()
    assert "Traceback" not in g.log()


def clear_in(text: str) -> list[str]:
    return [c for c in CLEAR if c in text]


LEAKS = [
    "select email, ssn from mc_people",
    "select * from mc_people",
    "select email as e, ssn as s from mc_people p",
    "select p.email from mc_people p",
    "select lower(email) from mc_people",
    "select email || '' from mc_people",
    "select ssn::text::varchar from mc_people",
    "select replace(ssn, '-', '') from mc_people",
    "select row_to_json(p) from mc_people p",
    "select p from mc_people p",
    "select to_jsonb(p.*) from mc_people p",
    "select string_agg(email, ',') from mc_people",
    "select array_agg(ssn) from mc_people",
    "select json_agg(email) from mc_people",
    "select jsonb_build_object('x', ssn) from mc_people",
    "select format('%s', email) from mc_people",
    "select concat(email, ssn) from mc_people",
    "select coalesce(email, 'x') from mc_people",
    "select case when id > 0 then ssn end from mc_people",
    "select (select email from mc_people where id = 1)",
    "select x from (select email as x from mc_people) s",
    "select s.* from (select lower(email) as x from mc_people) s",
    "select * from (select ssn || '' as y from mc_people) s",
    "with x as (select email from mc_people) select * from x",
    "with x as (select upper(email) u from mc_people) select u from x",
    "with x(a) as (select ssn || '' from mc_people) select a from x",
    "with x as (select * from mc_people) select lower(x.ssn) from x",
    'with x as (select email || \'\' from mc_people) select "?column?" from x',
    'select s."?column?" from (select ssn || \'\' from mc_people) s',
    "select email from mc_people union all select 'a'",
    "select 'a' union select lower(ssn) from mc_people",
    "select id::text from mc_people union all select ssn from mc_people",
    "values ((select email from mc_people limit 1))",
    "select contact, tax from mc_view",
    "select * from mc_view",
    "select lower(contact) from mc_view",
    "select c2 from mc_view2",
    "select mc_first()",
    "select * from mc_first()",
    "select xmlelement(name e, email) from mc_people",
    "select regexp_split_to_array(ssn, '-') from mc_people",
    "select most_common_vals::text, histogram_bounds::text from pg_stats where tablename = 'mc_people'",
    "select score, uid, born from mc_people where id = 1",
    "select score + 0, uid::text from mc_people where id = 1",
    "select left(email, 7) from mc_people",
    "select substr(ssn, 1, 3) || substr(ssn, 5, 2) || substr(ssn, 8) from mc_people",
]


@pytest.mark.parametrize("binary", [False, True])
def test_leak_corpus_through_psycopg(gw, binary):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        for sql in LEAKS:
            rows = c.cursor(binary=binary).execute(sql).fetchall()
            assert rows and not clear_in(repr(rows)), (sql, rows)


def test_values_keep_their_types_and_admin_sees_clear_values(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        row = c.execute("select id, email, ssn, score, uid, born, note from mc_people where id = 1").fetchone()
        assert row[0] == 1 and row[1] == "****" and row[2] == "****" and row[6] == "hello"
        assert isinstance(row[3], int) and row[3] != 7777 and isinstance(row[4], uuid.UUID) and str(row[4]) != UID
        again = c.cursor(binary=True).execute("select score, uid from mc_people where id = 2").fetchone()
        assert again[0] == row[3]  # hash: the same value masks the same way (7777 in both rows)
        assert c.execute("select count(*), max(id) from mc_people").fetchone() == (2, 2)  # no masked input
        assert c.execute("select id, note from mc_view order by id").fetchall() == [(1, "hello"), (2, "world")]
    with psycopg.connect(g.dsn("dev")) as c:
        assert c.execute("select email, ssn from mc_people where id = 1").fetchone() == (EMAILS[0], SSNS[0])


def test_asyncpg_binary_prepared_and_cursors(gw):
    g, _ = gw

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=g.port, user="reader", password=USERS["reader"][0],
                                     database="shop", ssl=False)
        try:
            out = [await conn.fetch("select email, ssn, score, uid, born, lower(email) from mc_people")
                   for _ in range(3)]
            async with conn.transaction():
                out.append([r async for r in conn.cursor("select email, ssn || '' from mc_people", prefetch=1)])
            return out
        finally:
            await conn.close()

    out = asyncio.run(run())
    assert not clear_in(repr(out)) and "****" in repr(out)


def test_sql_cursors_are_masked(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        c.execute("declare cur cursor for select email, lower(ssn), note from mc_people order by id")
        rows = c.execute("fetch all from cur").fetchall()
        assert rows == [("****", "****", "hello"), ("****", "****", "world")]
        with c.cursor(name="srv") as cur:
            cur.execute("select upper(email), id from mc_people order by id")
            assert list(cur) == [("****", 1), ("****", 2)]


@pytest.mark.parametrize("sql", [
    "insert into mc_people (id, note) select id + 100, email from mc_people",
    "select set_config('mc.leak', email, false) from mc_people",
    'select "set_config"(\'mc.leak\', ssn, false) from mc_people',
    "select U&\"set\\005fconfig\"('mc.leak', ssn, false) from mc_people",
    "update mc_people set note = ssn",
    "create temp table mc_copy as select email from mc_people",
    "select email into temp mc_copy2 from mc_people",
    "copy (select ssn from mc_people) to stdout (encoding 'latin1')",
])
def test_copying_masked_values_is_refused(gw, sql):
    g, _ = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='masking rule "pii"'):
            c.execute(sql)
        c.execute("update mc_people set note = note where email = 'nobody'")  # filtering on one is fine


def test_table_created_later_is_masked_before_and_after_the_catalog_is_read_again(gw):
    g, pg = gw
    with psycopg.connect(g.dsn("reader")) as c:
        c.execute("select 1").fetchall()  # the catalog is read now
        pg.psql("CREATE TABLE mc_late (id int, secret text, open text); GRANT SELECT ON mc_late TO PUBLIC;"
                "INSERT INTO mc_late VALUES (1, 'ada.col', 'fine')", dbname="shop")
        first = c.execute("select secret, open from mc_late").fetchone()
        assert first == ("****", "****")  # a table the catalog does not have: masked whole (fail closed)
        assert c.execute("select secret, open from mc_late").fetchone() == ("****", "fine")  # read again


def test_explain_sql_asks_the_database(gw):
    g, _ = gw
    hoopd = str(Path(".venv/bin/hoopd").resolve())
    base = [hoopd, "masking", "explain", "--config", str(g.config), "--connection", "shop", "--groups", "analysts"]
    out = subprocess.run(base + ["--json", "--sql", "select p.id, lower(p.email), v.contact, p.note from mc_people p, mc_view v"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = {c["column"]: (c["source"], c["rule"]) for c in json.loads(out.stdout)["columns"]}
    assert got == {"id": ("public.mc_people.id", None), "lower": (None, "pii"),
                   "contact": ("public.mc_view.contact", "pii"), "note": ("public.mc_people.note", None)}
    refused = subprocess.run(base + ["--sql", "insert into mc_people (id, note) select 99, ssn from mc_people"],
                             capture_output=True, text=True)
    assert refused.returncode == 0 and 'refused: it would store or export values masking rule "pii"' in refused.stdout
    clear = subprocess.run(base + ["--sql", "select note from mc_people"], capture_output=True, text=True)
    assert clear.returncode == 1 and "note [public.mc_people.note]: clear" in clear.stdout
    bad = subprocess.run(base + ["--sql", "select nope from mc_people"], capture_output=True, text=True)
    assert bad.returncode == 2 and "42703" in bad.stderr and "Traceback" not in bad.stderr
    policy = [hoopd, "policy", "explain", "--config", str(g.config), "--connection", "shop", "--groups", "analysts"]
    offline = subprocess.run(policy + ["select mc_first()"], capture_output=True, text=True)
    assert offline.returncode == 1 and "not found" in offline.stdout  # built-ins only
    live = subprocess.run(policy + ["--catalog", "select mc_first()"], capture_output=True, text=True)
    assert live.returncode == 0 and "ALLOW" in live.stdout, live.stdout + live.stderr  # a stable user function


def test_errors_and_notices_that_could_quote_masked_values_are_withheld(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(f"{d.message_primary} {d.message_detail}"))
        for sql, error in [("select email::int from mc_people", psycopg.errors.InvalidTextRepresentation),
                           ("select ssn::date from mc_people", psycopg.errors.DataError),
                           ("update mc_people set note = repeat('x', 30) where id = 1", psycopg.errors.CheckViolation)]:
            with pytest.raises(error) as e:
                c.execute(sql)
            said = f"{e.value} {e.value.diag.message_detail} {e.value.diag.context}"
            assert not clear_in(said) and "withheld" in said, (sql, said)
        assert c.execute("select mc_tell()").fetchone() == (0,)  # (a user function's result: masked, as an int)
        assert notices and not clear_in(" ".join(notices)) and "withheld" in notices[0]
        with pytest.raises(psycopg.errors.DivisionByZero, match="division by zero"):
            c.execute("select 1 / 0")  # a statement that reads no masked column: its message as the server wrote it
        assert c.execute("select current_setting('mc.leak', true)").fetchone()[0] in (None, "")


def test_node_postgres_sees_masked_values(gw):
    g, _ = gw
    node_dir = Path(__file__).with_name("node")
    if not shutil.which("node") or not (node_dir / "node_modules" / "pg").is_dir():
        pytest.fail("node-postgres is not installed: run scripts/install-deps.sh")
    script = """
const { Client } = require('pg');
(async () => {
  const c = new Client({ connectionString: process.argv[1] });
  await c.connect();
  const out = [];
  for (const q of ['select email, ssn, score, uid, note from mc_people where id = $1',
                   'select lower(contact) as e, contact from mc_view where id = $1']) {
    out.push((await c.query({ text: q, values: [1] })).rows[0]);
    out.push((await c.query({ name: 'p' + out.length, text: q, values: [1] })).rows[0]);  // prepared
  }
  console.log(JSON.stringify(out));
  await c.end();
})().catch(e => { console.error(e.message); process.exit(1); });
"""
    r = subprocess.run(["node", "-e", script, g.url("reader")], cwd=node_dir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert not clear_in(r.stdout)
    assert rows[0]["email"] == "****" and rows[0]["note"] == "hello" and isinstance(rows[0]["score"], int)
    assert rows[2] == {"e": "****", "contact": "****"} and rows[1] == rows[0]


@pytest.mark.parametrize("sql, header", [
    ("copy mc_people to stdout", False),
    ("copy mc_people (note, email) to stdout", False),
    ("copy (select id, lower(ssn), note from mc_people order by id) to stdout", False),
    ("copy mc_people to stdout with (format csv, header)", True),
    ("copy (select email, note from mc_people order by id) to stdout (format csv, delimiter '|', quote '~')",
     False),
    ("copy (select id, contact, note from mc_view order by id) to stdout (format csv, force_quote *)", False),
])
def test_copy_out_masks_fields(gw, sql, header):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        with c.cursor().copy(sql) as cp:
            text = b"".join(bytes(x) for x in cp).decode()
    assert not clear_in(text) and "****" in text, text
    lines = text.splitlines()
    assert len(lines) == 2 + header and "hello" in text
    if header:
        assert lines[0].startswith("id,email,ssn")
    if sql == "copy mc_people to stdout":
        fields = lines[0].split("\t")
        assert fields[:3] == ["1", "****", "****"] and fields[6] == "hello"
