"""End to end: real clients -> ``twistd hoopd`` -> a real PostgreSQL 15 cluster."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import psycopg
import pytest

from hoopd.pgwire import messages as m
from tests.certs import write_self_signed
from tests.gateway import USERS, Gateway, connection_toml, users_toml
from tests.rawclient import RawClient, error_of

pytestmark = pytest.mark.integration


def upstreams(pg, folder) -> str:
    """One hoopd connection per upstream auth method and TLS mode."""
    wrong_ca = folder / "wrong"
    wrong_ca.mkdir()
    write_self_signed(wrong_ca)
    r = {role.name: role.password for role in pg.roles}
    return "".join([
        connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]),
        connection_toml("md5", "127.0.0.1", pg.port, "shop", "app_md5", r["app_md5"],
                        extra='require_auth = ["md5"]\nallow_plaintext_password = true\n'),
        connection_toml("clear", "127.0.0.1", pg.port, "shop", "app_clear", r["app_clear"],
                        extra='require_auth = ["password"]\nallow_plaintext_password = true\n'),
        connection_toml("trust", "127.0.0.1", pg.port, "shop", "app_trust", None, extra='require_auth = ["none"]\n'),
        connection_toml("tlsreq", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"], tls="require"),
        connection_toml("tlsfull", "localhost", pg.port, "shop", "app_scram", r["app_scram"], tls="verify-full",
                        ca_file=str(pg.ca_file)),
        connection_toml("tlswrongca", "localhost", pg.port, "shop", "app_scram", r["app_scram"],
                        tls="verify-full", ca_file=str(wrong_ca / "ca.crt")),
        connection_toml("down", "127.0.0.1", 1, "shop", "app_scram", r["app_scram"]),
    ])


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gw")
    cert, key = write_self_signed(folder)
    body = (f'[tls]\nmode = "allow"\ncert = "{cert}"\nkey = "{key}"\n[logging]\nlevel = "debug"\n'
            '[logging.levels]\n"hoopd.proxy" = "trace"\n'
            + users_toml() + upstreams(pg, folder))
    g = Gateway(folder, body).start()
    yield g
    g.stop()
    secrets = [role.password for role in pg.roles]
    assert not [s for s in secrets if s in g.log()], "an upstream password reached the gateway log"
    assert USERS["dev"][0] not in g.log()  # nor a client password, even at trace level
    assert "client p (password message" in g.log() and "client Q (" in g.log()  # trace shows the protocol
    assert "Traceback" not in g.log()
    assert "shutdown: waiting" not in g.log()  # every session ended and left the registry


def connect(gw, user="dev", dbname="shop", **kw) -> psycopg.Connection:
    return psycopg.connect(gw.dsn(user, dbname, **kw), autocommit=True)


def psql(gw, *args: str, sslmode: str = "disable", user: str = "dev", dbname: str = "shop"):
    return subprocess.run(["psql", "-X", "-At", f"host=127.0.0.1 port={gw.port} dbname={dbname} user={user} "
                           f"sslmode={sslmode}", *args], env=gw.env(user), capture_output=True, text=True, timeout=60)


# --- clients and TLS -----------------------------------------------------------------

@pytest.mark.parametrize("sslmode,ssl_on", [("disable", "off"), ("require", "on")])
def test_psql_through_gateway(gw, sslmode, ssl_on):
    r = psql(gw, "-c", "select current_user", "-c", "show ssl", "-c", "select count(*) from customers",
             sslmode=sslmode)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "app_scram"  # the gateway's credential, not the client's name
    assert lines[2] == "3"
    r = psql(gw, "-c", r"\conninfo", sslmode=sslmode)
    assert ("SSL connection" in r.stdout) == (ssl_on == "on")


@pytest.mark.parametrize("conn,role", [("shop", "app_scram"), ("md5", "app_md5"), ("clear", "app_clear"),
                                       ("trust", "app_trust")])
def test_upstream_auth_methods(gw, conn, role):
    with connect(gw, dbname=conn) as c:
        assert c.execute("select current_user").fetchone()[0] == role


@pytest.mark.parametrize("conn", ["tlsreq", "tlsfull"])
def test_upstream_tls(gw, conn):
    with connect(gw, dbname=conn) as c:
        assert c.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0] is True


def test_upstream_tls_verification_failure_is_clear_and_leaks_nothing(gw, pg):
    with pytest.raises(psycopg.OperationalError) as e:
        connect(gw, dbname="tlswrongca")
    assert 'cannot connect to connection "tlswrongca"' in str(e.value)
    assert pg.app_scram.password not in str(e.value)
    assert "certificate verify failed" in gw.log() or "CERTIFICATE_VERIFY_FAILED" in gw.log()


def test_upstream_down_gives_08001(gw):
    with pytest.raises(psycopg.OperationalError) as e:
        connect(gw, dbname="down")
    assert e.value.sqlstate == "08001" or 'cannot connect to connection "down"' in str(e.value)


def test_auth_errors(gw):
    with pytest.raises(psycopg.OperationalError) as e:
        connect(gw, password="wrong")
    assert 'password authentication failed for user "dev"' in str(e.value)
    with pytest.raises(psycopg.OperationalError) as e:
        connect(gw, user="nobody")
    assert 'has no access to connection "shop"' in str(e.value)
    with pytest.raises(psycopg.OperationalError) as e:
        connect(gw, dbname="nosuch")
    assert 'no connection named "nosuch"' in str(e.value)


def test_a_local_user_typed_in_capitals_is_that_user(gw):
    # one person, one name: "READER" gets reader's level (read_only), not a level of its own
    with psycopg.connect(gw.dsn("reader").replace("user='reader'", "user='READER'"), autocommit=True) as c:
        assert c.execute("show default_transaction_read_only").fetchone()[0] == "on"


def test_role_and_options_cannot_pick_the_upstream_role(gw):
    with connect(gw, options="-c role=postgres -c search_path=public", application_name="cursor-agent") as c:
        assert c.execute("select current_user").fetchone()[0] == "app_scram"
        assert c.execute("show application_name").fetchone()[0] == "cursor-agent"
        assert c.execute("show search_path").fetchone()[0] == "public"


def test_read_only_level_runs_upstream_read_only(gw):
    with connect(gw, user="reader", options="-c default_transaction_read_only=off") as c:
        assert c.execute("show default_transaction_read_only").fetchone()[0] == "on"


def test_parameter_status_and_server_version_relayed(gw, pg):
    with connect(gw) as c, psycopg.connect(pg.superuser_dsn("shop")) as direct:
        assert c.info.parameter_status("server_version") == direct.info.parameter_status("server_version")
        assert c.info.parameter_status("client_encoding") == "UTF8"
        assert c.info.backend_pid != direct.info.backend_pid or True  # minted: see test_protocol_3_2_key


# --- relay -------------------------------------------------------------------------------

def test_simple_multi_statement_and_extended_binary(gw):
    with connect(gw) as c:
        cur = c.cursor()
        cur.execute("select 1; select 2 as two")
        assert cur.fetchone() == (1,)
        assert cur.nextset() and cur.fetchone() == (2,)
        cur.execute("select %s::int + 1, %s::bytea", (41, b"\x00\xff"), binary=True)
        assert cur.fetchone() == (42, b"\x00\xff")
        prepared = c.execute("select %s::text", ("x",), prepare=True).fetchone()
        assert prepared == ("x",)


def test_pipeline_mode(gw):
    with connect(gw) as c:
        with c.pipeline():
            curs = [c.execute("select %s::int", (i,)) for i in range(20)]
        assert [cur.fetchone()[0] for cur in curs] == list(range(20))


def test_copy_both_ways_and_error_mid_copy(gw):
    with connect(gw) as c:
        c.execute("create temp table t(a int, b text)")
        with c.cursor().copy("copy t from stdin") as cp:
            for i in range(1000):
                cp.write_row((i, f"row {i}"))
        out = bytearray()
        with c.cursor().copy("copy t to stdout") as cp:
            for chunk in cp:
                out += chunk
        assert out.count(b"\n") == 1000 and b"999\trow 999" in out
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            with c.cursor().copy("copy t from stdin") as cp:
                for i in range(20000):
                    cp.write(f"{i}\tok\n" if i != 5 else "notanint\tbad\n")
        assert c.execute("select count(*) from t").fetchone()[0] == 1000  # session still usable


def test_notifications_and_notices_at_any_time(gw):
    with connect(gw) as listener, connect(gw) as talker:
        notices = []
        listener.add_notice_handler(lambda d: notices.append(d.message_primary))
        listener.execute("listen ch")
        talker.execute("notify ch, 'hello'")
        got = next(listener.notifies(timeout=10))
        assert (got.channel, got.payload) == ("ch", "hello")
        listener.execute("do $$ begin raise notice 'careful'; end $$")
        assert notices == ["careful"]


def test_cancel_via_gateway(gw):
    with connect(gw) as c:
        threading.Timer(0.5, c.cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("select pg_sleep(30)")
        assert c.execute("select 1").fetchone() == (1,)


def test_the_client_sees_the_real_backend_pid(gw):
    """libpq's backend_pid is the server's own (pg_backend_pid(), notification pids,
    pg_terminate_backend), not a number the gateway made up."""
    with connect(gw) as c:
        pid = c.info.backend_pid
        assert c.execute("select pg_backend_pid()").fetchone() == (pid,)
        c.autocommit = True
        c.execute("listen me")
        c.execute("notify me, 'x'")
        got = next(c.notifies(timeout=10))
        assert got.pid == pid


def test_stale_cancel_key_ignored_and_right_key_in_tls(gw):
    r = RawClient(gw.port)
    r.login("dev", USERS["dev"][0])
    pid, secret = r.key
    r.send(m.query("select pg_sleep(2)"))
    stale = RawClient(gw.port)
    stale.send(m.cancel_request(pid, bytes(b ^ 0xFF for b in secret)))
    stale.close()
    msgs = r.until_ready()
    assert error_of(msgs) is None  # the sleep ran to the end
    r.send(m.query("select pg_sleep(30)"))
    time.sleep(0.3)
    c = RawClient(gw.port, tls="ssl_request")  # CancelRequest inside TLS (libpq 17, psycopg 3.2)
    c.send(m.cancel_request(pid, secret))
    c.close()
    assert error_of(r.until_ready())["C"] == "57014"
    r.close()


def test_disconnect_mid_query_cancels_upstream(gw, pg):
    r = RawClient(gw.port)
    r.login("dev", USERS["dev"][0], extra={"application_name": "walkaway"})
    r.send(m.query("select pg_sleep(60)"))
    time.sleep(0.5)
    r.sock.close()
    with psycopg.connect(pg.superuser_dsn("shop"), autocommit=True) as su:
        for _ in range(100):
            n = su.execute("select count(*) from pg_stat_activity where application_name = 'walkaway'"
                           " and state = 'active'").fetchone()[0]
            if n == 0:
                break
            time.sleep(0.1)
        assert n == 0


def test_protocol_3_2_key_and_negotiation(gw):
    r = RawClient(gw.port)
    msgs = r.login("dev", USERS["dev"][0], version=m.PROTOCOL_3_2)
    assert len(r.key[1]) == 32
    assert error_of(r.query("select 1")) is None
    r.close()
    r = RawClient(gw.port)
    msgs = r.login("dev", USERS["dev"][0], version=(3 << 16) | 9999, extra={"_pq_.grease": "1"})
    v = [body for t, body in msgs if t == b"v"]
    assert v and struct.unpack_from("!ii", v[0]) == (2, 1)
    assert error_of(r.query("select 1")) is None
    r.close()


def test_direct_tls_requires_alpn(gw):
    r = RawClient(gw.port, tls="direct")
    r.login("dev", USERS["dev"][0])
    assert error_of(r.query("select 1")) is None
    r.close()
    r = RawClient(gw.port, tls="direct", alpn=False)
    r.send(m.startup_message({"user": "dev", "database": "shop"}))
    t, body = r.read_message()
    assert t == b"E" and "ALPN" in m.decode_fields(body)["M"]


def test_malformed_packet_kills_only_that_session(gw):
    with connect(gw) as good:
        bad = RawClient(gw.port)
        bad.login("dev", USERS["dev"][0])
        bad.send(b"Q" + struct.pack("!i", 2) + b"junk")
        t, body = bad.read_message()
        assert t == b"E" and m.decode_fields(body)["C"] == "08P01"
        assert good.execute("select 1").fetchone() == (1,)
    assert "protocol error" in gw.log()


def test_large_bytea_round_trip(gw):
    blob = os.urandom(1024) * (200 * 1024)  # 200 MiB
    with connect(gw) as c:
        got = c.execute("select %b::bytea", (blob,), binary=True).fetchone()[0]
        assert len(got) == len(blob) and got == blob


def test_slow_client_keeps_gateway_memory_flat(gw, pg):
    r = RawClient(gw.port)
    r.login("dev", USERS["dev"][0], extra={"application_name": "slowpoke"})
    r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    r.send(m.query("select repeat('x', 10000) from generate_series(1, 50000)"))  # ~500 MB
    with psycopg.connect(pg.superuser_dsn("shop"), autocommit=True) as su:
        for _ in range(100):
            ev = su.execute("select wait_event from pg_stat_activity where application_name = 'slowpoke'").fetchone()
            if ev and ev[0] == "ClientWrite":
                break
            time.sleep(0.1)
        assert ev and ev[0] == "ClientWrite"  # the server is held back by TCP, not buffered by us
    assert gw.rss_kib() < 150 * 1024
    r.close()


def test_registry_counts_statements_and_bytes(gw):
    # the session registry is read by the control port; here through its log line on end
    with connect(gw) as c:
        c.execute("select 1")
    assert "ended: client terminate" in gw.log()


# --- other drivers -------------------------------------------------------------------------

def test_asyncpg_prepared_executemany_cursor_binary(gw):
    asyncpg = pytest.importorskip("asyncpg")

    async def run():
        conn = await asyncpg.connect(gw.url())
        try:
            await conn.execute("create temp table items(id int primary key, data bytea, price numeric, at timestamptz)")
            stmt = await conn.prepare("select $1::int * 2")
            assert await stmt.fetchval(21) == 42
            await conn.executemany("insert into items values ($1, $2, $3, now())",
                                   [(i, bytes([i % 256]) * 10, i / 3) for i in range(500)])
            async with conn.transaction():
                got = [r["id"] async for r in conn.cursor("select id from items order by id", prefetch=50)]
            assert got == list(range(500))
            row = await conn.fetchrow("select data, price, array[1,2,3] as arr, gen_random_uuid() as u "
                                      "from items where id = 7")
            assert row["data"] == b"\x07" * 10 and row["arr"] == [1, 2, 3]
            with pytest.raises(asyncpg.UniqueViolationError):  # a server error mid-batch is seen
                await conn.executemany("insert into items values ($1, null, 0, now())",
                                       [(i,) for i in range(1000, 60000)] + [(5,)] + [(i,) for i in range(60001, 61000)])
            assert await conn.fetchval("select count(*) from items") == 500
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("mode", ["simple", "prepared"])
def test_pgbench(gw, mode):
    env = gw.env()
    init = subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", str(gw.port), "-U", "dev",
                           "shop"], env=env, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    r = subprocess.run(["pgbench", "-S", "-t", "200", "-c", "2", "-M", mode, "-h", "127.0.0.1", "-p", str(gw.port),
                        "-U", "dev", "shop"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "number of transactions actually processed: 400/400" in r.stdout


def test_node_postgres_smoke(gw):
    node_dir = os.path.join(os.path.dirname(__file__), "node")
    if not shutil.which("node") or not os.path.isdir(os.path.join(node_dir, "node_modules", "pg")):
        pytest.fail("node-postgres is not installed: run scripts/install-deps.sh")
    script = """
const { Client } = require('pg');
(async () => {
  const c = new Client({ connectionString: process.argv[1] });
  await c.connect();
  const r = await c.query('select $1::int + 1 as n, current_user as u', [41]);
  console.log(JSON.stringify(r.rows[0]));
  await c.end();
})().catch(e => { console.error(e.message); process.exit(1); });
"""
    r = subprocess.run(["node", "-e", script, gw.url()], cwd=node_dir, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == '{"n":42,"u":"app_scram"}'
