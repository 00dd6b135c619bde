"""``[gateway] workers = 2`` through ``twistd hoopd`` with a real PostgreSQL and real clients:
sessions spread over both workers and the control plane shows them as one gateway
(list, kill, metrics, max_sessions); a cancel that lands on the other worker still
cancels; failed logins count across workers; a statement held in a worker is approved
over the supervisor's API; each worker writes its own journal stream and `journal
verify` checks them all; a worker killed with SIGKILL is restarted while the other one
carries on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

from hoopd.journal.records import list_segments
from tests.gateway import (BIN, Gateway, api_call, cancel_until_passed_on, connection_toml, free_port, tokens_toml,
                           until, users_toml)
from tests.test_control_ssh import Console, _read_until

pytestmark = pytest.mark.integration

TOKENS = {"dev": "dev-workers-token-0123456789", "reader": "reader-workers-token-0123456789"}
MAX_SESSIONS = 24


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    pg.psql("DROP TABLE IF EXISTS wk_orders; CREATE TABLE wk_orders (id int PRIMARY KEY);"
            "INSERT INTO wk_orders SELECT g FROM generate_series(1, 10) g;"
            "GRANT SELECT, DELETE ON wk_orders TO PUBLIC;", dbname="shop")
    folder = tmp_path_factory.mktemp("workers")
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    console = Console(folder, names=("dev",))
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\nssh = "tcp:{console.port}:interface=127.0.0.1"\n'
            f'[journal]\ndir = "{folder / "journal"}"\n'
            '[identity]\nmax_failed_logins_per_user = 3\n[mcp]\nenabled = true\n'
            f'[control]\nopen_metrics = true\nssh_authorized_keys = "{console.keys_file}"\n' + tokens_toml(TOKENS, role="admin")
            + '[[rules]]\nname = "deletes"\naction = "review"\nkinds = ["delete"]\nreviewers = ["dba"]\n'
              'allow_self_approval = true\ntimeout = "60s"\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"],
                                             extra='grant_reviewers = ["dba"]\n'))
    g = Gateway(folder, body, gateway=f"workers = 2\nmax_sessions = {MAX_SESSIONS}\n").start()
    g.http_port = http
    g.journal = folder / "journal"
    g.console = console
    wait_ready(g)
    yield g
    g.stop()
    assert "Traceback" not in g.log()


def api(g, method: str, path: str, body: dict | None = None, who: str = "dev") -> tuple[int, dict]:
    return api_call(g.http_port, TOKENS[who], method, path, body)


def wait_ready(g, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{g.http_port}/readyz", timeout=5) as resp:
                if json.loads(resp.read())["ready"]:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the workers did not get ready:\n{g.log()}")


def connect(g, user: str = "dev", **kw) -> psycopg.Connection:
    return psycopg.connect(g.dsn(user), autocommit=True, **kw)


def sessions(g) -> list[dict]:
    return api(g, "GET", "/api/v1/sessions")[1]["sessions"]


def at_least(g, n: int) -> list[dict] | None:
    found = sessions(g)
    return found if len(found) >= n else None


def open_spread(g, n: int) -> list[psycopg.Connection]:
    """``n`` sessions opened at once (each from its own thread)."""
    conns: list[psycopg.Connection] = []
    lock = threading.Lock()

    def one() -> None:
        c = connect(g)
        c.execute("select pg_sleep(0.2)")
        with lock:
            conns.append(c)
    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(conns) == n
    return conns


def worker_pids(g) -> dict[int, int]:
    """worker index -> pid, from the supervisor's log ("worker N serving (pid P)")."""
    found = {}
    for line in g.log().splitlines():
        if "serving (pid" in line and "worker " in line:
            i = int(line.split("worker ", 1)[1].split()[0])
            found[i] = int(line.rsplit("(pid ", 1)[1].rstrip(")"))
    return found


def test_sessions_spread_and_the_control_plane_sees_one_gateway(gw) -> None:
    conns = open_spread(gw, 12)
    try:
        live = until(lambda: at_least(gw, 12), "12 sessions in the API")
        assert {s["worker"] for s in live} == {1, 2}, [s["worker"] for s in live]
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in conns}
        assert len(pids) == 12
        # kill one of worker 2's sessions from the supervisor's API
        victim = next(s for s in live if s["worker"] == 2)
        code, _ = api(gw, "POST", f"/api/v1/sessions/{victim['id']}/kill", {"reason": "workers test"})
        assert code == 200
        until(lambda: all(s["id"] != victim["id"] for s in sessions(gw)), "the killed session to end")
        broken = [c for c in conns if c.closed or _dead(c)]
        assert len(broken) == 1
        status, text = _metrics(gw)
        assert status == 200
        active = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("hoopd_sessions_active{"))
        assert active == 11
        assert 'worker="1"' in text and 'worker="2"' in text
        assert not [line for line in text.splitlines()
                    if line.startswith("hoopd_sessions_active{") and "worker=" in line]  # counted once
    finally:
        for c in conns:
            c.close()


def _dead(c: psycopg.Connection) -> bool:
    try:
        c.execute("select 1")
        return False
    except psycopg.OperationalError as e:
        assert "administrator command" in str(e)
        return True


def _metrics(g) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{g.http_port}/metrics", timeout=10) as resp:
        return resp.status, resp.read().decode()


def test_max_sessions_holds_for_all_workers_together(gw) -> None:
    until(lambda: not sessions(gw), "no live sessions")
    conns = [connect(gw) for _ in range(MAX_SESSIONS)]
    try:
        assert {s["worker"] for s in sessions(gw)} == {1, 2}
        time.sleep(0.3)  # (the workers hear of each other's counts)
        for _ in range(4):  # whichever worker takes it
            with pytest.raises(psycopg.OperationalError, match="too many sessions"):
                connect(gw)
    finally:
        for c in conns:
            c.close()


def test_a_cancel_reaches_the_session_on_the_other_worker(gw) -> None:
    until(lambda: not sessions(gw), "no live sessions")
    cancel_until_passed_on(lambda: connect(gw), lambda: gw.log().count("cancel request passed on by another worker"))


def test_failed_logins_count_on_every_worker(gw) -> None:
    for _ in range(3):
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(gw.dsn("writer", password="wrong"))
    time.sleep(0.3)
    for _ in range(4):  # each lands on either worker: both refuse
        with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
            psycopg.connect(gw.dsn("writer"))


def test_a_statement_held_in_a_worker_is_approved_in_the_supervisor(gw) -> None:
    c = connect(gw)
    notices: list[str] = []
    c.add_notice_handler(lambda d: notices.append(d.message_primary))
    done: list[object] = []

    def run() -> None:
        try:
            done.append(c.execute("delete from wk_orders where id = 1").rowcount)
        except psycopg.Error as e:
            done.append(e)
    t = threading.Thread(target=run)
    t.start()
    req = until(lambda: api(gw, "GET", "/api/v1/reviews?status=pending")[1]["reviews"], "a pending request")[0]
    assert req["statement"] == "delete from wk_orders where id = 1" and req["user"] == "dev"
    assert not done
    code, got = api(gw, "POST", f"/api/v1/reviews/{req['id']}/approve", {"comment": "ok"})
    assert code == 200 and got["status"] == "approved"
    t.join(10)
    assert done == [1] and any(f"#{req['id']}" in n for n in notices)
    c.close()


def test_a_grant_approved_in_the_supervisor_counts_on_every_worker(gw) -> None:
    def read_only() -> tuple[str, int]:
        with psycopg.connect(gw.dsn("reader"), autocommit=True, application_name="grant-check") as c:
            (worker,) = [s["worker"] for s in sessions(gw) if s["application_name"] == "grant-check"]
            return c.execute("show default_transaction_read_only").fetchone()[0], worker
    assert read_only()[0] == "on"
    code, g = api(gw, "POST", "/api/v1/grants", {"connection": "shop", "level": "read_write", "duration": "10m",
                                                 "reason": "fix order 7"}, who="reader")
    assert code == 200, g
    code, g = api(gw, "POST", f"/api/v1/grants/{g['id']}/approve", {"comment": "go"})
    assert code == 200 and g["status"] == "active"
    seen = {}
    for _ in range(30):  # logins land on both workers: each reads the grant
        value, worker = read_only()
        seen[worker] = value
        if len(seen) == 2:
            break
    assert seen == {1: "off", 2: "off"}
    c = psycopg.connect(gw.dsn("reader"), autocommit=True)
    code, _ = api(gw, "POST", f"/api/v1/grants/{g['id']}/revoke", {"reason": "done"})
    assert code == 200
    with pytest.raises(psycopg.OperationalError, match="administrator command"):
        for _ in range(50):
            c.execute("select 1")
            time.sleep(0.1)
    c.close()
    assert read_only()[0] == "on"


def test_mcp_calls_run_on_the_workers(gw) -> None:
    import json as _json

    def rpc(payload: dict, sid: str | None = None) -> tuple[dict, dict]:
        headers = {"Authorization": f"Bearer {TOKENS['dev']}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        if sid:
            headers["Mcp-Session-Id"] = sid
        req = urllib.request.Request(f"http://127.0.0.1:{gw.http_port}/mcp", data=_json.dumps(payload).encode(),
                                     headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return dict(resp.headers), _json.loads(resp.read())
    headers, _ = rpc({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "wk", "version": "1"}}})
    sid = headers["Mcp-Session-Id"]
    for i in range(4):  # calls land on either worker: each redeems its ticket in the supervisor
        _, got = rpc({"jsonrpc": "2.0", "id": 2 + i, "method": "tools/call", "params": {
            "name": "query", "arguments": {"connection": "shop", "sql": "select count(*) from wk_orders"}}}, sid)
        assert got["result"]["structuredContent"]["rows"][0][0] >= 9, got
    from hoopd.journal.reader import Journal
    starts = [e for e in Journal(gw.journal).records() if e.rec.get("kind") == "session_start"
              and e.rec.get("application_name") == "mcp:wk"]
    assert len(starts) == 4 and {e.seg.node for e in starts} <= {"test-w1", "test-w2"}  # served by the workers


def test_each_worker_journals_its_own_stream_and_verify_checks_all(gw) -> None:
    with connect(gw) as c:
        c.execute("select 'journaled'")
    streams = {seg.node for seg in list_segments(gw.journal)}
    assert {"test-w1", "test-w2", "test"} <= streams, streams
    out = subprocess.run([str(BIN / "hoopd"), "journal", "verify", "--dir", str(gw.journal)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    for node in ("test-w1", "test-w2"):
        assert node in out.stdout
    tail = subprocess.run([str(BIN / "hoopd"), "journal", "tail", "-n", "200", "--dir", str(gw.journal)],
                          capture_output=True, text=True, timeout=60).stdout
    assert "select 'journaled'" in tail  # the streams merged in time order


def test_the_console_follows_the_sessions_of_every_worker(gw) -> None:
    with gw.console.client("dev") as ssh:
        chan = ssh.invoke_shell(term="xterm", width=250, height=40)
        _read_until(chan, b"hoopd> ")
        chan.send(b"tail -f -n 0\r")
        time.sleep(0.5)  # (the workers hear that someone follows)
        seen, shown = b"", set()
        for i in range(40):  # sessions land on either worker: until both were shown live
            with connect(gw, application_name=f"live-{i}") as c:
                (worker,) = [s["worker"] for s in sessions(gw) if s["application_name"] == f"live-{i}"]
                c.execute(f"select 'live-{i}'")
            seen += _read_until(chan, f"'live-{i}'".encode(), wait=3, must=False)
            if f"'live-{i}'".encode() in seen:
                shown.add(worker)
            if shown == {1, 2}:
                break
        chan.send(b"\x03")
        _read_until(chan, b"hoopd> ")
    assert shown == {1, 2}, seen[-2000:]


def test_a_killed_worker_is_restarted_and_the_other_carries_on(gw) -> None:
    until(lambda: not sessions(gw), "no live sessions")
    conns = open_spread(gw, 8)
    try:
        live = until(lambda: at_least(gw, 8), "8 sessions")
        pids = worker_pids(gw)
        os.kill(pids[1], signal.SIGKILL)
        until(lambda: all(s["worker"] == 2 for s in sessions(gw)), "worker 1's sessions to end")
        survivors = [c for c in conns if not _gone(c)]
        assert len(survivors) == sum(1 for s in live if s["worker"] == 2) > 0
        until(lambda: worker_pids(gw).get(1, pids[1]) != pids[1], "worker 1 to be restarted", timeout=20)
        wait_ready(gw)
        with connect(gw) as c:
            assert c.execute("select 1").fetchone() == (1,)
        assert "worker 1 exited" in gw.log()
    finally:
        for c in conns:
            c.close()


def _gone(c: psycopg.Connection) -> bool:
    try:
        c.execute("select 1")
        return False
    except psycopg.OperationalError:
        return True


def test_sighup_reloads_every_worker(gw) -> None:
    before = gw.log().count("config reloaded (SIGHUP)")
    gw.signal(signal.SIGHUP)
    until(lambda: gw.log().count("config reloaded (SIGHUP)") >= before + 3, "three reloads (supervisor + 2)")


def test_bad_workers_value_is_refused_with_its_key(tmp_path: Path) -> None:
    cfg = tmp_path / "hoopd.toml"
    cfg.write_text('[gateway]\nworkers = 0\n')
    out = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "hoopd", "--config",
                          str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "gateway.workers" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


def test_stopping_the_supervisor_stops_the_workers_after_the_grace(pg, tmp_path: Path) -> None:
    r = {role.name: role.password for role in pg.roles}
    g = Gateway(tmp_path, '[control]\nshutdown_grace = "1s"\n' + users_toml()
                + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]),
                gateway="workers = 2\n").start()
    try:
        c = until(lambda: _try_connect(g), "a session")
        until(lambda: len(worker_pids(g)) == 2, "two workers")
        pids = list(worker_pids(g).values())
        g.signal(signal.SIGTERM)
        with pytest.raises(psycopg.OperationalError, match="administrator command|shutting down|closed"):
            for _ in range(100):
                c.execute("select 1")
                time.sleep(0.05)
        assert g.proc.wait(20) in (0, -signal.SIGTERM)  # (twistd exits by the signal it got)
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        assert "Traceback" not in g.log()
    finally:
        g.stop()


def test_workers_stop_when_the_supervisor_is_killed(pg, tmp_path: Path) -> None:
    r = {role.name: role.password for role in pg.roles}
    g = Gateway(tmp_path, users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram",
                                                         r["app_scram"]), gateway="workers = 2\n").start()
    try:
        until(lambda: len(worker_pids(g)) == 2, "two workers")
        pids = list(worker_pids(g).values())
        g.proc.kill()
        g.proc.wait(10)
        until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), "the workers to exit", timeout=20)
        assert "the supervisor is gone" in g.log()
    finally:
        g.stop()


def _try_connect(g) -> psycopg.Connection | None:
    try:
        return psycopg.connect(g.dsn("dev"), autocommit=True)
    except psycopg.OperationalError:
        return None
