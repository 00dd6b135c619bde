"""Two gateway nodes sharing state through PostgreSQL ([state]), behind a real TCP load
balancer (HAProxy, round robin) on loopback: sessions spread over both and each node's
API lists them all; a cancel sent through the balancer reaches the query on the other
node; a statement held on one node is approved on the other; failed logins count on
both; a node whose state database is unreachable refuses held statements at once and
serves the rest."""
from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.gateway import (Gateway, api_call, cancel_until_passed_on, connection_toml, free_port, tokens_toml, until,
                           users_toml)

pytestmark = pytest.mark.integration

TOKENS = {"dev": "dev-nodes-token-0123456789", "reader": "reader-nodes-token-0123456789"}


def _body(pg, http: int, state_port: int, folder: Path) -> str:
    r = {role.name: role.password for role in pg.roles}
    return (f'http = "tcp:{http}:interface=127.0.0.1"\n[journal]\ndir = "{folder / "journal"}"\n'
            '[identity]\nmax_failed_logins_per_user = 3\n'
            + tokens_toml(TOKENS, role="admin")
            + '[[rules]]\nname = "deletes"\naction = "review"\nkinds = ["delete"]\nreviewers = ["dba"]\n'
              'allow_self_approval = true\ntimeout = "60s"\n'
            + f'[state]\nhost = "127.0.0.1"\nport = {state_port}\ndatabase = "hoopd_state"\ntls = "disable"\n'
              f'connect_timeout = "2s"\n[state.credentials.default]\nuser = "app_scram"\n'
              f'password = "{r["app_scram"]}"\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"],
                                             extra='grant_reviewers = ["dba"]\n'))


@pytest.fixture(scope="module")
def nodes(pg, tmp_path_factory):
    if not shutil.which("haproxy"):
        pytest.fail("haproxy is not installed: run scripts/install-deps.sh")
    pg.psql("DROP DATABASE IF EXISTS hoopd_state")
    pg.psql("CREATE DATABASE hoopd_state OWNER app_scram")
    pg.psql("DROP TABLE IF EXISTS nd_orders; CREATE TABLE nd_orders (id int PRIMARY KEY);"
            "INSERT INTO nd_orders SELECT g FROM generate_series(1, 10) g; GRANT SELECT, DELETE ON nd_orders TO PUBLIC;",
            dbname="shop")
    gws = {}
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(f"node-{name}")
        http = free_port()
        g = Gateway(folder, _body(pg, http, pg.port, folder))
        g.config.write_text(g.config.read_text().replace('node = "test"', f'node = "{name}"'))
        g.start()
        g.http_port = http
        gws[name] = g
    lb_port = free_port()
    cfg = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    cfg.write_text("defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
                   f"frontend fe\n  bind 127.0.0.1:{lb_port}\n  default_backend gw\n"
                   "backend gw\n  balance roundrobin\n"
                   + "".join(f"  server {n} 127.0.0.1:{g.port}\n" for n, g in gws.items()))
    lb = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            psycopg.connect(dsn(lb_port), connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            time.sleep(0.1)
    for g in gws.values():
        until(lambda g=g: "connected to the shared state database" in g.log(), "the node to reach the state db")
    yield gws, lb_port
    lb.terminate()
    lb.wait(10)
    for g in gws.values():
        g.stop()
        assert "Traceback" not in g.log()


def dsn(port: int, user: str = "dev", password: str | None = None) -> str:
    from tests.gateway import USERS
    return (f"host=127.0.0.1 port={port} dbname=shop user={user} password={password or USERS[user][0]}"
            " sslmode=disable connect_timeout=10")


def api(g, method: str, path: str, body: dict | None = None, who: str = "dev") -> tuple[int, dict]:
    return api_call(g.http_port, TOKENS[who], method, path, body)


def test_each_node_lists_the_sessions_of_both(nodes) -> None:
    gws, lb = nodes
    conns = [psycopg.connect(dsn(lb), autocommit=True) for _ in range(4)]
    try:
        for c in conns:
            c.execute("select 1")
        for g in gws.values():
            live = until(lambda g=g: (s := api(g, "GET", "/api/v1/sessions")[1]["sessions"]) and len(s) >= 4 and s,
                         "4 sessions on the node's API")
            assert len(live) == 4
            assert sum(1 for s in live if s.get("node")) == 2  # the other node's two, named
        # a kill given on node a of a session node b serves
        remote = next(s for s in api(gws["a"], "GET", "/api/v1/sessions")[1]["sessions"] if s.get("node") == "b")
        assert api(gws["a"], "POST", f"/api/v1/sessions/{remote['id']}/kill", {"reason": "nodes test"})[0] == 200
        until(lambda: all(s["id"] != remote["id"] for s in api(gws["b"], "GET", "/api/v1/sessions")[1]["sessions"]),
              "node b to end it")
    finally:
        for c in conns:
            c.close()


def test_a_cancel_through_the_balancer_reaches_the_other_node(nodes) -> None:
    gws, lb = nodes
    cancel_until_passed_on(lambda: psycopg.connect(dsn(lb), autocommit=True),
                           lambda: sum(g.log().count("cancel request passed on from node") for g in gws.values()))


def test_a_statement_held_on_one_node_is_approved_on_the_other(nodes) -> None:
    gws, lb = nodes
    c = psycopg.connect(dsn(lb), autocommit=True, application_name="held-here")
    done: list[object] = []
    t = threading.Thread(target=lambda: done.append(c.execute("delete from nd_orders where id = 1").rowcount))
    t.start()
    holder = until(lambda: next((n for n, g in gws.items() if any(
        s["application_name"] == "held-here" and not s.get("node")
        for s in api(g, "GET", "/api/v1/sessions")[1]["sessions"])), None), "the session's node")
    other = gws["b" if holder == "a" else "a"]
    req = until(lambda: api(other, "GET", "/api/v1/reviews?status=pending")[1]["reviews"], "the request elsewhere")[0]
    assert req["node"] == holder and req["statement"] == "delete from nd_orders where id = 1"
    code, got = api(other, "POST", f"/api/v1/reviews/{req['id']}/approve", {"comment": "from the other node"})
    assert code == 200 and got["forwarded_to"] == holder
    t.join(15)
    assert done == [1]
    c.close()
    ended = until(lambda: (r := api(other, "GET", f"/api/v1/reviews/{req['id']}")[1]) and r.get("status") == "approved"
                  and r, "the outcome to reach the other node")
    assert "from the other node" in (ended.get("why") or "")


def test_a_grant_approved_on_one_node_counts_on_both(nodes) -> None:
    gws, lb = nodes

    def levels() -> set[str]:
        seen = set()
        for _ in range(4):  # round robin: both nodes
            with psycopg.connect(dsn(lb, "reader"), autocommit=True) as c:
                seen.add(c.execute("show default_transaction_read_only").fetchone()[0])
        return seen
    assert levels() == {"on"}
    code, g = api(gws["a"], "POST", "/api/v1/grants", {"connection": "shop", "level": "read_write",
                                                      "duration": "10m", "reason": "fix"}, who="reader")
    assert code == 200
    until(lambda: any(x["id"] == g["id"] for x in api(gws["b"], "GET", "/api/v1/grants")[1]["grants"]),
          "node b to know the request")
    code, got = api(gws["b"], "POST", f"/api/v1/grants/{g['id']}/approve", {"comment": "ok"})
    assert code == 200 and got["status"] == "active"
    until(lambda: levels() == {"off"}, "both nodes to use the grant")
    conns = [psycopg.connect(dsn(lb, "reader"), autocommit=True) for _ in range(2)]  # one on each node
    code, _ = api(gws["a"], "POST", f"/api/v1/grants/{g['id']}/revoke", {"reason": "done"})
    assert code == 200

    def ended(c: psycopg.Connection) -> bool:
        try:
            c.execute("select 1")
            return False
        except psycopg.OperationalError:
            return True
    until(lambda: all(ended(c) for c in conns), "the sessions on both nodes to end")
    for c in conns:
        c.close()
    assert levels() == {"on"}


def test_failed_logins_count_on_both_nodes(nodes) -> None:
    gws, lb = nodes
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(dsn(lb, "writer", "wrong"))
    time.sleep(0.3)
    for _ in range(4):  # round robin: both nodes answer
        with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
            psycopg.connect(dsn(lb, "writer"))


def test_without_the_state_database_held_statements_are_refused_and_the_rest_serves(pg, tmp_path) -> None:
    g = Gateway(tmp_path, _body(pg, free_port(), free_port(), tmp_path)).start()  # nobody listens on that port
    try:
        with psycopg.connect(g.dsn("dev"), autocommit=True) as c:
            assert c.execute("select 1").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="shared state database is unavailable"):
                c.execute("delete from nd_orders where id = 2")
            assert c.execute("select count(*) from nd_orders where id = 2").fetchone() == (1,)
        until(lambda: "cannot use the shared state database" in g.log(), "the node to say why")
    finally:
        g.stop()
