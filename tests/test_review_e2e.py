"""Approvals through ``twistd hoopd`` with a real PostgreSQL and real clients: a statement
a review rule matches waits at the gateway (a notice says so; nothing reaches the
server), runs in the same session once reviewers approve over the HTTP API, and is
refused on denial, expiry or cancel; reviewers outside the rule's groups and
self-approval are refused; pipelines keep their order behind a held statement."""
from __future__ import annotations

import json
import os
import subprocess
import socket
import threading
import time
import urllib.error
import urllib.request

from pathlib import Path

import psycopg
import pytest

from tests.gateway import USERS, Gateway, api_call, connection_toml, free_port, tokens_toml, users_toml
from tests.test_control_ssh import Console

pytestmark = pytest.mark.integration

TOKENS = {"dev": "dev-review-token-0123456789", "writer": "writer-review-token-0123456789",
          "reader": "reader-review-token-0123456789"}


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql("DROP TABLE IF EXISTS rv_orders; CREATE TABLE rv_orders (id int PRIMARY KEY, amount int);"
            "INSERT INTO rv_orders SELECT g, g * 10 FROM generate_series(1, 20) g;"
            "GRANT SELECT, INSERT, UPDATE, DELETE ON rv_orders TO PUBLIC;", dbname="shop")
    folder = tmp_path_factory.mktemp("review")
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    console = Console(folder, names=("dev", "writer"))
    tokens = tokens_toml(TOKENS)
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\nssh = "tcp:{console.port}:interface=127.0.0.1"\n'
            f'[journal]\ndir = "{folder / "journal"}"\n[control]\nopen_metrics = true\n'
            f'ssh_authorized_keys = "{console.keys_file}"\n'
            + tokens +
            '[[rules]]\nname = "deletes"\naction = "review"\nkinds = ["delete"]\nreviewers = ["dba", "apps"]\n'
            'timeout = "60s"\nmessage = "deletes are reviewed"\nbreak_glass = ["dba"]\n'
            '[[rules]]\nname = "two-eyes"\naction = "review"\nkinds = ["update"]\nreviewers = ["dba", "apps"]\n'
            'min_approvals = 2\ntimeout = "3s"\n'
            '[[rules]]\nname = "tx-refused"\naction = "review"\nkinds = ["insert"]\nreviewers = ["dba"]\n'
            'in_transaction = "refuse"\n'
            '[[masking.rules]]\nname = "emails"\ndetectors = ["email"]\ngroups = ["apps"]\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]))
    g = Gateway(folder, body).start()
    g.http_port = http
    g.journal = folder / "journal"
    g.console = console
    yield g, pg
    g.stop()
    assert "Traceback" not in g.log()


def api(g, method: str, path: str, who: str = "dev", body: dict | None = None) -> tuple[int, dict]:
    return api_call(g.http_port, TOKENS[who], method, path, body)


def pending(g, n: int = 1) -> list[dict]:
    for _ in range(200):
        _, got = api(g, "GET", "/api/v1/reviews?status=pending")
        if len(got["reviews"]) >= n:
            return got["reviews"]
        time.sleep(0.05)
    raise AssertionError("no pending review request appeared")


def count(pg, where: str) -> int:
    return int(pg.psql(f"SELECT count(*) FROM rv_orders WHERE {where}", dbname="shop").strip())


def in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as e:  # (handed to the test thread)
            out["error"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_held_delete_runs_after_approval_in_the_same_session(gw):
    g, pg = gw
    notices: list[str] = []
    with psycopg.connect(g.dsn("writer", application_name="agent-x"), autocommit=True) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 1").rowcount)
        (req,) = pending(g)
        assert req["user"] == "writer" and req["rule"] == "deletes" and "rv_orders" in req["statement"]
        assert req["application"] == "agent-x"
        assert count(pg, "id = 1") == 1  # nothing reached the server while held
        code, body = api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "writer", {"comment": "me"})
        assert code == 403 and "own statements" in body["message"]  # self-approval
        code, body = api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "reader")
        assert code == 403 and "reviewer groups" in body["message"]
        code, body = api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev", {"comment": "ok"})
        assert code == 200 and body["status"] == "approved" and body["decided_by"] == "api:dev"
        t.join(10)
        assert out == {"value": 1} and count(pg, "id = 1") == 0
        assert notices and f"request #{req['id']}" in notices[0] and "dba" in notices[0]
        assert c.execute("select count(*) from rv_orders where id = 2").fetchone() == (1,)  # session goes on
    code, body = api(g, "POST", f"/api/v1/reviews/{req['id']}/deny", "dev", {"reason": "late"})
    assert code == 409


def test_denied_and_expired_statements_are_refused_and_never_run(gw):
    g, pg = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 3"))
        (req,) = pending(g)
        assert api(g, "POST", f"/api/v1/reviews/{req['id']}/deny", "dev", {})[0] == 400  # a reason is needed
        assert api(g, "POST", f"/api/v1/reviews/{req['id']}/deny", "dev", {"reason": "not today"})[0] == 200
        t.join(10)
        assert isinstance(out["error"], psycopg.errors.InsufficientPrivilege)
        assert "denied by api:dev: not today" in str(out["error"])
        assert c.execute("select 1").fetchone() == (1,)  # the session is still usable
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="expired"):
            c.execute("update rv_orders set amount = 0 where id = 4")  # two-eyes: 3 s, nobody decides
    assert count(pg, "id = 3") == 1 and count(pg, "id = 4 and amount = 40") == 1
    _, done = api(g, "GET", "/api/v1/reviews")
    assert {r["status"] for r in done["reviews"]} >= {"approved", "denied", "expired"}


def test_two_approvals_and_a_pipeline_waiting_behind_the_hold(gw):
    g, pg = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        def work():
            with c.pipeline():
                a = c.execute("select 1")
                b = c.execute("update rv_orders set amount = 7 where id = 5")
                d = c.execute("select amount from rv_orders where id = 5")
            return a.fetchone(), b.rowcount, d.fetchone()

        t, out = in_thread(work)
        (req,) = pending(g)
        code, body = api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev")
        assert code == 200 and body["status"] == "pending" and len(body["approvals"]) == 1
        assert api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev")[0] == 409  # not twice by one
        assert count(pg, "id = 5 and amount = 50") == 1
        api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "writer")  # (refused: its own) ...
        assert api(g, "GET", f"/api/v1/reviews/{req['id']}")[1]["status"] == "pending"
        t.join(10)  # ... so it expires: the statements after it in the pipeline still answer in order
    assert isinstance(out.get("error"), psycopg.errors.InsufficientPrivilege), out


def test_cancel_and_disconnect_withdraw_the_request(gw):
    g, pg = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 6"))
        (req,) = pending(g)
        c.cancel()
        t.join(10)
        assert isinstance(out["error"], psycopg.errors.QueryCanceled)
        assert api(g, "GET", f"/api/v1/reviews/{req['id']}")[1]["status"] == "withdrawn"
        assert c.execute("select 1").fetchone() == (1,)
    c = psycopg.connect(g.dsn("writer"), autocommit=True)
    t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 7"))
    (req,) = pending(g)
    with socket.socket(fileno=os.dup(c.pgconn.socket)) as raw:
        raw.shutdown(socket.SHUT_RDWR)  # the client goes away while its statement waits
    for _ in range(100):
        if api(g, "GET", f"/api/v1/reviews/{req['id']}")[1]["status"] == "withdrawn":
            break
        time.sleep(0.05)
    assert api(g, "GET", f"/api/v1/reviews/{req['id']}")[1]["status"] == "withdrawn"
    assert api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev")[0] == 409
    t.join(10)
    assert count(pg, "id in (6, 7)") == 2


def test_review_inside_a_transaction_can_be_refused(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("writer")) as c:
        c.execute("select 1")  # (psycopg opened a transaction)
        with pytest.raises(psycopg.errors.ActiveSqlTransaction, match="open transaction"):
            c.execute("insert into rv_orders values (100, 1)")


def test_requests_are_journaled_and_counted(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 20"))
        (req,) = pending(g)
        api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev", {"comment": "journal me"})
        t.join(10)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{g.http_port}/metrics", timeout=10).read().decode()
    assert 'hoopd_review_requests_total{event="approved"}' in metrics and "hoopd_review_requests_pending 0.0" in metrics
    exported = subprocess.run([str(Path(".venv/bin/hoopd").resolve()), "journal", "export", "--dir", str(g.journal),
                               "--format", "jsonl"], capture_output=True, text=True, check=True).stdout
    mine = [json.loads(line) for line in exported.splitlines() if req["id"] in line]
    assert [r.get("event") for r in mine if r.get("kind") == "review"] == ["requested", "approved"]
    assert any(r.get("why") == "journal me" for r in mine)


def test_psql_waits_with_a_notice_and_is_approved_from_the_ssh_console(gw):
    g, pg = gw
    env = {"PGPASSWORD": USERS["writer"][0], "PATH": "/usr/bin:/bin", "PGSSLMODE": "disable"}
    psql = subprocess.Popen(["psql", "-X", "-h", "127.0.0.1", "-p", str(g.port), "-U", "writer", "-d", "shop",
                             "-c", "delete from rv_orders where id = 11"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        (req,) = pending(g)
        status, out, _ = g.console.exec("reviews", "dev")
        assert status == 0 and req["id"] in out and "delete from rv_orders" in out
        status, _, err = g.console.exec(f"approve {req['id']} mine", "writer")
        assert status == 1 and "own statements" in err
        status, out, _ = g.console.exec(f"show-review {req['id']}", "dev")
        assert status == 0 and "status:" in out and "pending" in out
        assert g.console.exec(f"approve {req['id']} looks right", "dev")[:2] == (0, f"request {req['id']}: approved\n")
        stdout, stderr = psql.communicate(timeout=20)
    finally:
        psql.kill()
    assert psql.returncode == 0 and "DELETE 1" in stdout
    assert f"waiting for approval of request #{req['id']}" in stderr and "approve" in stderr  # psql shows the notice
    assert count(pg, "id = 11") == 0


def test_a_prepared_statement_is_approved_for_one_execution(gw):
    g, pg = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        sql = "delete from rv_orders where id = %s"
        t, out = in_thread(lambda: c.execute(sql, (12,), prepare=True).rowcount)  # Parse (named), Bind, Execute
        (req,) = pending(g)
        assert "with parameters: '12'" in req["statement"]  # the Bind is held: its values are shown
        api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev")
        t.join(10)
        assert out == {"value": 1}
        t, out = in_thread(lambda: c.execute(sql, (13,), prepare=True).rowcount)  # the prepared one: Bind only
        (again,) = pending(g)
        assert again["id"] != req["id"] and "with parameters: '13'" in again["statement"]
        api(g, "POST", f"/api/v1/reviews/{again['id']}/deny", "dev", {"reason": "not 13"})
        t.join(10)
        assert isinstance(out["error"], psycopg.errors.InsufficientPrivilege)
    assert count(pg, "id = 12") == 0 and count(pg, "id = 13") == 1


def test_the_review_cli(gw, tmp_path):
    g, pg = gw
    hoopd = str(Path(".venv/bin/hoopd").resolve())
    token = tmp_path / "token"
    token.write_text(TOKENS["dev"] + "\n")
    base = ["--url", f"http://127.0.0.1:{g.http_port}", "--token-file", str(token)]
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 14"))
        (req,) = pending(g)
        listed = subprocess.run([hoopd, "review", "list", *base], capture_output=True, text=True)
        assert listed.returncode == 0 and req["id"] in listed.stdout and "delete from rv_orders" in listed.stdout
        deny = subprocess.run([hoopd, "review", "deny", req["id"], "wrong", "row", *base], capture_output=True,
                              text=True)
        assert deny.returncode == 0 and deny.stdout.strip() == f"request {req['id']}: denied"
        t.join(10)
    again = subprocess.run([hoopd, "review", "approve", req["id"], *base], capture_output=True, text=True)
    assert again.returncode == 1 and "already denied" in again.stderr
    bare = subprocess.run([hoopd, "review", "list"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "HOOPD_TOKEN"})
    assert bare.returncode == 2 and "HOOPD_TOKEN" in bare.stderr and "Traceback" not in bare.stderr
    assert count(pg, "id = 14") == 1


def test_reviewers_see_requests_live_in_the_ssh_console(gw):
    g, _ = gw
    with g.console.client("dev") as ssh:
        shell = ssh.invoke_shell()
        shell.settimeout(10)

        def read_until(text: str) -> str:
            got = ""
            deadline = time.monotonic() + 10
            while text not in got and time.monotonic() < deadline:
                got += shell.recv(4096).decode("utf-8", "replace")
            return got

        assert "Type help" in read_until("hoopd> ")
        with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
            t, out = in_thread(lambda: c.execute("delete from rv_orders where id = 15").rowcount)
            (req,) = pending(g)
            seen = read_until(f"(approve {req['id']}")
            assert f"[review] #{req['id']} from writer on shop" in seen and "delete from rv_orders" in seen
            shell.send(f"approve {req['id']} seen live\r")
            assert f"#{req['id']} approved by ssh:dev" in read_until("approved by")
            t.join(10)
        assert out == {"value": 1}


def test_break_glass_runs_at_once_and_is_flagged(gw):
    g, pg = gw
    with psycopg.connect(g.dsn("dev"), autocommit=True) as c:
        assert c.execute("delete from rv_orders where id = 16").rowcount == 1  # no wait
    assert count(pg, "id = 16") == 0
    _, got = api(g, "GET", "/api/v1/reviews?status=break_glass")
    (req,) = [r for r in got["reviews"] if "id = 16" in r["statement"]]
    assert req["user"] == "dev" and req["decided_by"] == "dev" and "break-glass" in req["why"]


def test_reviewers_see_the_statement_with_detected_values_redacted(gw):
    g, _ = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        t, out = in_thread(lambda: c.execute("delete from rv_orders where amount::text = 'ada@example.com'"))
        (req,) = pending(g)
        assert "ada@example.com" not in req["statement"] and "****" in req["statement"]
        api(g, "POST", f"/api/v1/reviews/{req['id']}/deny", "dev", {"reason": "no"})
        t.join(10)


def test_asyncpg_prepared_statement_is_held_at_its_execution(gw):
    import asyncio

    import asyncpg

    g, pg = gw

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=g.port, user="writer", password=USERS["writer"][0],
                                     database="shop", ssl=False)
        try:
            stmt = await conn.prepare("delete from rv_orders where id = $1")  # prepared: nothing held yet
            task = asyncio.ensure_future(stmt.fetch(17))
            req = await asyncio.get_running_loop().run_in_executor(None, lambda: pending(g)[0])
            assert "with parameters: '17'" in req["statement"]  # a binary int4, decoded for the reviewer
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: api(g, "POST", f"/api/v1/reviews/{req['id']}/approve", "dev"))
            await task
        finally:
            await conn.close()

    asyncio.run(run())
    assert count(pg, "id = 17") == 0
