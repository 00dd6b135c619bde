"""The HTTP control port on a real port, with the gateway in-process and a real PostgreSQL.

The HTTP client is treq in the test's reactor; blocking PostgreSQL clients run in threads.
"""
from __future__ import annotations

import json
import ssl
import urllib.request

import psycopg
import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, threads

from hoopd.config import load
from hoopd.control.tokens import hash_token
from hoopd.journal.reader import Journal
from hoopd.tap import GatewayService
from tests.control_fakes import FakeJournal
from tests.gateway import USERS, _VERIFIERS, free_port
from tests.reactorwait import wait_for

pytestmark = pytest.mark.integration

ADMIN = "admin-token-0123456789abcdef0123456789"
VIEWER = "viewer-token-0123456789abcdef012345678"


def write_config(path, pg, http: str, *, down: bool = True, extra: str = "") -> None:
    down_conn = ('[connections.down]\nhost = "127.0.0.1"\nport = 1\ntls = "disable"\n'
                 '[connections.down.credentials.default]\nuser = "x"\n') if down else ""
    path.write_text(
        f'[gateway]\nnode = "ctl"\nstate_dir = "{path.parent}"\n'
        f'[listen]\npostgres = "tcp:{free_port()}:interface=127.0.0.1"\nhttp = "{http}"\n'
        f'[control]\nshutdown_grace = "1s"\n'
        f'[[control.tokens]]\nname = "ops"\nrole = "admin"\ntoken_hash = "{hash_token(ADMIN)}"\n'
        f'[[control.tokens]]\nname = "grafana"\nrole = "viewer"\ntoken_hash = "{hash_token(VIEWER)}"\n'
        f'[[users]]\nname = "dev"\npassword_hash = "{_VERIFIERS["dev"]}"\ngroups = ["dba"]\n'
        f'[[users]]\nname = "reader"\npassword_hash = "{_VERIFIERS["reader"]}"\ngroups = ["analysts"]\n'
        f'[connections.shop]\nhost = "127.0.0.1"\nport = {pg.port}\ntls = "disable"\n'
        f'[connections.shop.credentials.default]\nuser = "app_scram"\npassword = "{pg.app_scram.password}"\n'
        f'[connections.shop.access]\ndba = "admin"\nanalysts = "read_only"\n' + down_conn + extra)


@pytest.fixture
def gw(pg, tmp_path):
    port = free_port()
    cfg = tmp_path / "hoopd.toml"
    write_config(cfg, pg, f"tcp:{port}:interface=127.0.0.1")
    svc = GatewayService(load(cfg), reactor)
    svc.startService()
    svc.url = f"http://127.0.0.1:{port}"
    svc.cfg_file = cfg
    svc.pg = pg
    yield svc
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


def dsn(svc, user: str = "dev") -> str:
    return (f"host=127.0.0.1 port={svc.listeners()['postgres'].rsplit(':', 1)[1]} dbname=shop user={user} "
            f"password={USERS[user][0]} sslmode=disable application_name=victim")


@defer.inlineCallbacks
def call(svc, method: str, path: str, token: str | None = None, body: bytes | None = None):
    headers = {"Authorization": [f"Bearer {token}"]} if token else {}
    resp = yield treq.request(method, svc.url + path, headers=headers, data=body)
    text = yield resp.text()
    ctype = resp.headers.getRawHeaders("content-type", [""])[0]
    return resp.code, (json.loads(text) if ctype.startswith("application/json") else text), resp.headers



@pytest_twisted.inlineCallbacks
def test_health_open_and_readiness_reports_each_upstream(gw):
    code, body, _ = yield call(gw, "GET", "/healthz")
    assert (code, body) == (200, {"status": "ok", "node": "ctl"})
    code, body, _ = yield call(gw, "GET", "/readyz")
    assert code == 503 and body["ready"] is False
    checks = body["checks"]
    assert checks["listeners"]["ok"] and set(checks["listeners"]["bound"]) == {"postgres", "http"}
    assert checks["upstreams"]["connections"]["shop"]["ok"] is True
    assert checks["upstreams"]["connections"]["down"]["ok"] is False
    assert "refused" in checks["upstreams"]["connections"]["down"]["error"].lower()
    write_config(gw.cfg_file, gw.pg, gw.config.listen.http, down=False)
    code, body, _ = yield call(gw, "POST", "/api/v1/reload", ADMIN)
    assert (code, body) == (200, {"reloaded": True})
    code, body, _ = yield call(gw, "GET", "/readyz")
    assert code == 200 and body["ready"] is True
    gw.control.journal = journal = FakeJournal()
    journal.broken = "disk full"
    code, body, _ = yield call(gw, "GET", "/readyz")
    assert code == 503 and body["checks"]["journal"] == {"ok": False, "error": "disk full"}


@pytest_twisted.inlineCallbacks
def test_api_needs_a_valid_token(gw):
    for token in (None, "wrong-token", VIEWER[:-1]):
        code, body, headers = yield call(gw, "GET", "/api/v1/sessions", token)
        assert code == 401 and body["error"] == "unauthorized"
        assert headers.getRawHeaders("www-authenticate") == ['Bearer realm="hoopd"']
    code, body, _ = yield call(gw, "GET", "/metrics")
    assert code == 401 and body["error"] == "unauthorized"
    code, body, _ = yield call(gw, "POST", "/api/v1/reload", VIEWER)
    assert code == 403 and body == {"error": "forbidden", "message": "api:grafana has the viewer role; this needs admin"}
    code, body, _ = yield call(gw, "GET", "/api/v1/nothing", VIEWER)
    assert (code, body["error"]) == (404, "not_found")
    code, body, headers = yield call(gw, "DELETE", "/api/v1/sessions", VIEWER)
    assert code == 405 and headers.getRawHeaders("allow") == ["GET"]
    code, body, _ = yield call(gw, "GET", "/api/v1/openapi.json")  # public
    assert code == 200 and body["openapi"].startswith("3.1") and "/api/v1/sessions/{id}/kill" in body["paths"]


@pytest_twisted.inlineCallbacks
def test_sessions_kill_and_metrics(gw):
    conn = yield threads.deferToThread(psycopg.connect, dsn(gw), autocommit=True)
    reader = yield threads.deferToThread(psycopg.connect, dsn(gw, "reader"), autocommit=True)
    try:
        yield threads.deferToThread(lambda: conn.execute("select count(*) from customers").fetchone())
        code, body, _ = yield call(gw, "GET", "/api/v1/sessions", VIEWER)
        assert code == 200 and sorted(s["user"] for s in body["sessions"]) == ["dev", "reader"]
        code, body, _ = yield call(gw, "GET", "/api/v1/sessions?user=dev&connection=shop", VIEWER)
        (s,) = body["sessions"]
        assert (s["level"], s["application_name"], s["active"], s["statements"]) == ("admin", "victim", True, 1)
        code, body, _ = yield call(gw, "GET", "/api/v1/sessions?active=maybe", VIEWER)
        assert (code, body["error"]) == (400, "bad_parameter")
        code, one, _ = yield call(gw, "GET", f"/api/v1/sessions/{s['id']}", VIEWER)
        assert code == 200 and one["id"] == s["id"] and one["events"] is None  # no journal here

        code, text, headers = yield call(gw, "GET", "/metrics", VIEWER)
        assert code == 200 and headers.getRawHeaders("content-type")[0].startswith("text/plain")
        assert 'hoopd_sessions_active{connection="shop",level="admin"} 1.0' in text
        assert 'hoopd_sessions_active{connection="shop",level="read_only"} 1.0' in text
        assert 'hoopd_sessions_total{connection="shop",level="admin"} 1.0' in text
        assert 'hoopd_client_bytes_received_total{connection="shop"}' in text
        assert "process_resident_memory_bytes" in text

        code, body, _ = yield call(gw, "POST", f"/api/v1/sessions/{s['id']}/kill", VIEWER, b'{"reason": "x"}')
        assert code == 403
        code, body, _ = yield call(gw, "POST", f"/api/v1/sessions/{s['id']}/kill", ADMIN, b"{not json")
        assert (code, body["error"]) == (400, "bad_json")
        code, body, _ = yield call(gw, "POST", f"/api/v1/sessions/{s['id']}/kill", ADMIN,
                                   b'{"reason": "runaway report"}')
        assert (code, body) == (200, {"killed": s["id"], "reason": "runaway report"})
        with pytest.raises(psycopg.errors.AdminShutdown) as e:
            yield threads.deferToThread(lambda: conn.execute("select 1"))
        assert "administrator command" in str(e.value) and e.value.diag.message_detail == "runaway report"
        yield wait_for(lambda: len(gw.registry) == 1)
        code, body, _ = yield call(gw, "POST", f"/api/v1/sessions/{s['id']}/kill", ADMIN)
        assert code == 404
        code, body, _ = yield call(gw, "GET", "/api/v1/sessions?active=false", VIEWER)
        (ended,) = body["sessions"]
        assert ended["id"] == s["id"] and ended["end_reason"] == "killed by api:ops: runaway report"
        code, stats, _ = yield call(gw, "GET", "/api/v1/stats", VIEWER)
        assert (stats["sessions_active"], stats["sessions_total"]) == (1, 2)
        with pytest.raises(psycopg.OperationalError):
            yield threads.deferToThread(psycopg.connect, dsn(gw).replace("dev-password", "wrong"))
        gw.control.metrics.login_failed("no_access")  # what the core reports beyond the identity chain
        gw.control.metrics.policy_cache_stats = lambda: {"exact_hits": 5, "shape_hits": 2, "parses": 3}
        code, text, _ = yield call(gw, "GET", "/metrics", VIEWER)
        assert 'hoopd_login_failures_total{reason="bad_password"} 1.0' in text
        assert 'hoopd_login_failures_total{reason="no_access"} 1.0' in text
        assert 'hoopd_policy_cache_total{result="exact_hit"} 5.0' in text
        assert 'hoopd_policy_cache_total{result="miss"} 3.0' in text
        assert 'hoopd_sessions_active{connection="shop",level="admin"} 0.0' in text
        assert 'hoopd_admin_actions_total{action="kill",via="api"} 1.0' in text
    finally:
        yield threads.deferToThread(conn.close)
        yield threads.deferToThread(reader.close)


@pytest_twisted.inlineCallbacks
def test_session_events_come_from_the_journal(gw):
    gw.control.journal = journal = FakeJournal()
    conn = yield threads.deferToThread(psycopg.connect, dsn(gw), autocommit=True)
    try:
        (live,) = list(gw.registry)
        journal.write(session=live.info.id, user="dev", kind="statement", sql="select 1")
        journal.write(session="other", user="dev", kind="statement", sql="select 2")
        code, one, _ = yield call(gw, "GET", f"/api/v1/sessions/{live.info.id}", VIEWER)
        assert one["events"] == [{"session": live.info.id, "user": "dev", "kind": "statement", "sql": "select 1"}]
        code, _, _ = yield call(gw, "POST", f"/api/v1/sessions/{live.info.id}/kill", ADMIN)
        assert code == 200
        assert journal.actions == [("kill", "api:ops", {"session": live.info.id, "reason": ""})]
    finally:
        yield threads.deferToThread(conn.close)


@pytest_twisted.inlineCallbacks
def test_config_summary_and_reload_errors(gw):
    code, body, _ = yield call(gw, "GET", "/api/v1/config", VIEWER)
    text = json.dumps(body)
    assert code == 200 and body["connections"]["shop"]["credentials"]["default"]["user"] == "app_scram"
    for secret in (gw.pg.app_scram.password, hash_token(ADMIN), _VERIFIERS["dev"]):
        assert secret not in text
    gw.cfg_file.write_text(gw.cfg_file.read_text() + "\n[bogus]\n")
    code, body, _ = yield call(gw, "POST", "/api/v1/reload", ADMIN)
    assert code == 422 and body["error"] == "invalid_config" and "bogus: unknown key" in body["message"]
    code, body, _ = yield call(gw, "GET", "/healthz")
    assert code == 200


@pytest_twisted.inlineCallbacks
def test_control_port_over_tls(pg, tmp_path, tmp_tls):
    port = free_port()
    cfg = tmp_path / "hoopd.toml"
    write_config(cfg, pg, f"ssl:{port}:interface=127.0.0.1:privateKey={tmp_tls.key}:certKey={tmp_tls.cert}")
    svc = GatewayService(load(cfg), reactor)
    svc.startService()
    try:
        def get() -> tuple[int, dict]:
            ctx = ssl.create_default_context(cafile=str(tmp_tls.ca))
            req = urllib.request.Request(f"https://localhost:{port}/api/v1/stats",
                                         headers={"Authorization": f"Bearer {VIEWER}"})
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, json.load(r)
        code, body = yield threads.deferToThread(get)
        assert code == 200 and body["node"] == "ctl"
    finally:
        yield svc.stopService()


@pytest_twisted.inlineCallbacks
def test_real_journal_feeds_readiness_metrics_and_session_events(pg, tmp_path):
    port = free_port()
    cfg = tmp_path / "hoopd.toml"
    write_config(cfg, pg, f"tcp:{port}:interface=127.0.0.1", down=False,
                 extra=f'[journal]\ndir = "{tmp_path / "journal"}"\nfsync = "always"\n')
    svc = GatewayService(load(cfg), reactor)
    svc.startService()
    svc.url = f"http://127.0.0.1:{port}"
    try:
        code, body, _ = yield call(svc, "GET", "/readyz")
        assert code == 200 and body["checks"]["journal"] == {"ok": True}
        conn = yield threads.deferToThread(psycopg.connect, dsn(svc), autocommit=True)
        try:
            yield threads.deferToThread(lambda: conn.execute("select 'journaled' as x").fetchone())
            (live,) = list(svc.registry)
            code, one, _ = yield call(svc, "GET", f"/api/v1/sessions/{live.info.id}", VIEWER)
            assert code == 200 and any("journaled" in json.dumps(e) for e in one["events"])
            code, _, _ = yield call(svc, "POST", f"/api/v1/sessions/{live.info.id}/kill", ADMIN,
                                    b'{"reason": "audit"}')
            assert code == 200
        finally:
            yield threads.deferToThread(conn.close)
        code, text, _ = yield call(svc, "GET", "/metrics", VIEWER)
        written = [line for line in text.splitlines() if line.startswith("hoopd_journal_bytes_total ")]
        assert written and float(written[0].split()[1]) > 0
        assert "hoopd_journal_errors_total 0.0" in text
        assert 'hoopd_policy_cache_total{result="miss"}' in text
        admin = [e.rec for e in Journal(tmp_path / "journal").records() if e.rec["kind"] == "admin"]
        assert [(a["action"], a["by"], a["target_session"], a["reason"]) for a in admin] == [
            ("kill", "api:ops", live.info.id, "audit")]
    finally:
        yield svc.stopService()


@pytest_twisted.inlineCallbacks
def test_api_oidc_audience_tells_api_tokens_from_login_tokens(pg, tmp_path, idp):
    from hoopd.identity.base import AuthError

    port = free_port()
    cfg = tmp_path / "hoopd.toml"
    write_config(cfg, pg, f"tcp:{port}:interface=127.0.0.1", down=False,
                 extra=f'[identity]\norder = ["local", "oidc"]\n[identity.oidc]\nissuer = "{idp.issuer}"\n'
                       f'audience = "hoopd"\nca_file = "{idp.ca_file}"\n')
    cfg.write_text(cfg.read_text().replace("[control]\n", '[control]\nadmin_groups = ["dba"]\noidc_audience = "hoopd-api"\n'))
    svc = GatewayService(load(cfg), reactor)
    svc.startService()
    svc.url = f"http://127.0.0.1:{port}"
    try:
        api_token = idp.mint("carol", groups=["dba"], aud="hoopd-api")
        login_token = idp.mint("carol", groups=["dba"])  # aud "hoopd": the database login audience
        # the first call fetches the IdP's keys: the body waits unread until the token is verified
        code, body, _ = yield call(svc, "POST", "/api/v1/sessions/nope/kill", api_token, b'{"reason": "x"}')
        assert (code, body["message"]) == (404, "no live session nope")
        assert idp.requests.count("/jwks") == 1
        code, body, _ = yield call(svc, "GET", "/api/v1/stats", api_token)
        assert code == 200 and body["node"] == "ctl"
        for method, path in (("GET", "/api/v1/stats"), ("POST", "/api/v1/reload")):
            code, body, headers = yield call(svc, method, path, login_token, b"{}")
            assert (code, body["error"]) == (401, "unauthorized")
            assert headers.getRawHeaders("www-authenticate") == ['Bearer realm="hoopd"']
        with pytest.raises(AuthError) as e:  # and the API token is no database login
            yield svc.identity.authenticate("carol", api_token, "127.0.0.1")
        assert "audience is not hoopd" in str(e.value)
        user = yield svc.identity.authenticate("carol", login_token, "127.0.0.1")
        assert user.name == "carol"
    finally:
        yield svc.stopService()
