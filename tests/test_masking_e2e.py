"""Content masking through ``twistd hoopd`` with real clients (psycopg text and binary,
asyncpg, psql) and a real PostgreSQL: every way tried to get an email or a card number
out arrives masked below admin, admin sees clear values, the journal keeps what the
client saw."""
from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from pathlib import Path

import asyncpg
import psycopg
import pytest

from tests.gateway import USERS, Gateway, connection_toml, free_port, users_toml

pytestmark = pytest.mark.integration

EMAILS = ("ada@example.com", "grace.hopper@navy.example.org")
CARD = "4111 1111 1111 1111"
CLEAR = (*EMAILS, CARD, "4111111111111111")


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql("DROP TABLE IF EXISTS mask_people; CREATE TABLE mask_people (id int PRIMARY KEY, email text UNIQUE,"
            " card varchar(40), note text, n bigint);"
            f"INSERT INTO mask_people VALUES (1, '{EMAILS[0]}', '{CARD}', 'call ada', 4111111111111111),"
            f" (2, '{EMAILS[1]}', NULL, 'mail {EMAILS[1]} now', 2);"
            "GRANT SELECT, INSERT ON mask_people TO PUBLIC;"
            "CREATE OR REPLACE VIEW mask_view AS SELECT id, 'contact: ' || email AS contact FROM mask_people;"
            "GRANT SELECT ON mask_view TO PUBLIC;"
            "CREATE OR REPLACE FUNCTION mask_first() RETURNS text LANGUAGE sql STABLE"
            " AS $$ SELECT email FROM mask_people ORDER BY id LIMIT 1 $$;"
            "CREATE OR REPLACE FUNCTION mask_tell() RETURNS int LANGUAGE plpgsql STABLE AS $$ BEGIN"
            " RAISE NOTICE 'first is %', (SELECT email FROM mask_people ORDER BY id LIMIT 1); RETURN 1; END $$;",
            dbname="shop")
    folder = tmp_path_factory.mktemp("mask")
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\n'  # (still in the [listen] table Gateway writes)
            '[control]\nopen_metrics = true\n'
            f'[journal]\ndir = "{folder / "journal"}"\n'
            '[[masking.rules]]\nname = "emails"\ndetectors = ["email"]\n'
            '[[masking.rules]]\nname = "cards"\ndetectors = ["card"]\nstrategy = "partial"\nkeep_last = 4\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]))
    g = Gateway(folder, body).start()
    g.http_port = http
    yield g, folder / "journal"
    g.stop()
    assert "Traceback" not in g.log()


def clear_in(text: str) -> list[str]:
    return [c for c in CLEAR if c in text]


LEAKS = [
    "select email from mask_people order by id",
    "select email as e, card as c from mask_people order by id",
    "select lower(email) || '' from mask_people",
    "select upper(email) from mask_people",  # (upper case: the detector is case-blind)
    "select row_to_json(p) from mask_people p",
    "select p from mask_people p",
    "select string_agg(email, ';') from mask_people",
    "select array_agg(email) from mask_people",
    "select json_agg(note) from mask_people",
    "select note from mask_people where id = 2",
    "with x as (select email from mask_people) select * from x",
    "select email from mask_people union all select card from mask_people",
    "select (select email from mask_people where id = 1)",
    "select replace(card, ' ', '') from mask_people where id = 1",
    "select format('%s', email) from mask_people",
    "select concat(email, '!') from mask_people",
    "select jsonb_build_object('e', email) from mask_people",
    "select xmlelement(name e, email) from mask_people",
    "select contact from mask_view",
    "select mask_first()",
    "select email::varchar(100)::char(60) from mask_people",
    "select regexp_split_to_array(note, ' ') from mask_people where id = 2",
    "select to_jsonb(array_agg(p)) from mask_people p",
]


def test_cursors_parameters_and_notices(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        notices: list[str] = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        with c.cursor(name="srv") as cur:  # DECLARE / FETCH, the portal suspended between fetches
            cur.itersize = 1
            cur.execute("select email, note from mask_people order by id")
            rows = list(cur)
        assert rows == [("****", "call ada"), ("****", "mail **** now")]
        got = c.execute("select %s::text || email from mask_people where id = %s", ("to: ", 1)).fetchone()
        assert got == ("to: ****",)  # extended protocol, parameters bound
        assert c.execute("select mask_tell()").fetchone() == (1,)
        assert notices == ["first is ****"]


@pytest.mark.parametrize("binary", [False, True])
def test_psycopg_text_and_binary_never_see_a_clear_value(gw, binary):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        for sql in LEAKS:
            rows = c.cursor(binary=binary).execute(sql).fetchall()
            assert rows and not clear_in(repr(rows)), (sql, rows)
        (email, card, n), = c.execute("select email, card, n from mask_people where id = 1").fetchall()
        assert email == "****" and card == "***************1111" and n == 4111111111111111  # numbers are not text


def test_errors_notices_notifications_and_copy_are_masked(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as w, psycopg.connect(g.dsn("reader"),
                                                                                 autocommit=True) as r:
        with pytest.raises(psycopg.errors.UniqueViolation) as e:
            w.execute("insert into mask_people (id, email) values (9, %s)", (EMAILS[0],))
        assert not clear_in(str(e.value) + str(e.value.diag.message_detail)), e.value.diag.message_detail
        r.execute("listen masked")
        w.execute("select pg_notify('masked', %s)", (f"to {EMAILS[1]}",))
        got = next(r.notifies(timeout=10))
        assert got.payload == "to ****"
        with r.cursor().copy("copy (select * from mask_people order by id) to stdout") as cp:
            lines = b"".join(bytes(x) for x in cp).decode()
        assert "****" in lines and not clear_in(lines)
        with r.cursor().copy("copy (select email from mask_people) to stdout (format csv)") as cp:
            assert not clear_in(b"".join(bytes(x) for x in cp).decode())
    with psycopg.connect(g.dsn("reader")) as r:  # binary COPY cannot be masked: the session ends
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="binary COPY cannot be masked"):
            with r.cursor().copy("copy mask_people to stdout (format binary)") as cp:
                b"".join(bytes(x) for x in cp)
        assert r.closed or r.info.status.name == "BAD"


def test_asyncpg_binary_and_prepared(gw):
    g, _ = gw

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=g.port, user="reader", password=USERS["reader"][0],
                                     database="shop", ssl=False)
        try:
            out = []
            for _ in range(3):  # prepared after the first runs: binary results
                out.append(await conn.fetch("select email, array_agg(email) over () as all_, note, card"
                                            " from mask_people order by id"))
            out.append(await conn.fetchval("select jsonb_build_object('e', email) from mask_people where id = 1"))
            return out
        finally:
            await conn.close()

    out = asyncio.run(run())
    assert not clear_in(repr(out)) and "****" in repr(out)
    assert out[0][0]["all_"] == ["****", "****"]


def test_admin_sees_clear_values_and_the_journal_keeps_what_the_client_saw(gw, tmp_path):
    g, journal = gw
    with psycopg.connect(g.dsn("dev")) as c:
        assert c.execute("select email from mask_people where id = 1").fetchone() == (EMAILS[0],)
    with psycopg.connect(g.dsn("reader")) as c:
        c.execute("select email, 'reader-was-here' from mask_people").fetchall()
    out = subprocess.run([str(Path(".venv/bin/hoopd").resolve()), "journal", "export", "--dir", str(journal),
                          "--format", "jsonl"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    reader = [i for i, line in enumerate(lines) if "reader-was-here" in line and '"result"' in line]
    assert reader and not clear_in(lines[reader[0]]) and "****" in lines[reader[0]]
    summary = lines[reader[0] - 1]  # what was masked in that result, just before it (no values)
    assert '"kind":"masking"' in summary and '"emails":2' in summary and not clear_in(summary)
    assert EMAILS[0] in out  # dev's result was recorded in clear, as dev saw it


def test_masked_values_are_counted_in_metrics(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("reader")) as c:
        c.execute("select email from mask_people").fetchall()
    text = urllib.request.urlopen(f"http://127.0.0.1:{g.http_port}/metrics", timeout=10).read().decode()
    series = 'hoopd_masked_values_total{rule="emails",strategy="redact"}'
    (line,) = [x for x in text.splitlines() if x.startswith(series)]
    assert float(line.split()[-1]) >= 2


def test_psql_as_a_newcomer_would(gw):
    g, _ = gw
    env = {"PGPASSWORD": USERS["reader"][0], "PATH": "/usr/bin:/bin", "PGSSLMODE": "disable"}
    out = subprocess.run(["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(g.port), "-U", "reader", "-d", "shop",
                          "-c", "select id, email, note from mask_people order by id"],
                         capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines() == ["1|****|call ada", "2|****|mail **** now"]
