"""OIDC tokens and LDAP passwords through ``twistd hoopd`` with psql, a real IdP and a real slapd."""
from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.certs import write_self_signed
from tests.gateway import BIN, Gateway, connection_toml, free_port, users_toml
from tests.ldap_server import PASSWORDS, SERVICE_DN, SERVICE_PW, SUFFIX
from tests.oidc_server import AUDIENCE

pytestmark = pytest.mark.integration


@pytest.fixture
def gw(pg, slapd, idp, tmp_path):
    cert, key = write_self_signed(tmp_path)
    (tmp_path / "ldap.pw").write_text(SERVICE_PW)
    shop = connection_toml("shop", "127.0.0.1", pg.port, "shop", pg.app_scram.name, pg.app_scram.password,
                           extra='require_auth = ["scram-sha-256", "md5"]\nallow_plaintext_password = true\n')
    shop += (f'[connections.shop.credentials.read_only]\nuser = "{pg.app_md5.name}"\n'
             f'password = "{pg.app_md5.password}"\n')
    body = (f'http = "tcp:{free_port()}:interface=127.0.0.1"\n'  # still inside [listen]
            f'[control]\nadmin_groups = ["dba"]\nviewer_groups = ["oncall"]\n'
            f'[journal]\ndir = "journal"\n'
            f'[tls]\nmode = "allow"\ncert = "{cert}"\nkey = "{key}"\n'
            f'[identity.oidc]\nissuer = "{idp.issuer}"\naudience = "{AUDIENCE}"\nca_file = "{idp.ca_file}"\n'
            f'[identity.ldap]\nurl = "{slapd.url}"\nstart_tls = true\nca_file = "{slapd.ca_file}"\n'
            f'bind_dn = "{SERVICE_DN}"\nbind_password_file = "ldap.pw"\nuser_base = "ou=people,{SUFFIX}"\n'
            f'group_base = "ou=groups,{SUFFIX}"\n'
            + users_toml() + shop.replace('analysts = "read_only"\n', 'analysts = "read_only"\ndev = "read_only"\n'))
    g = Gateway(tmp_path, body).start()
    yield g
    g.stop()
    assert SERVICE_PW not in g.log()
    assert "Traceback" not in g.log()
    assert "shutdown: waiting" not in g.log()  # every session ended and left the registry


def psql(gw, user: str, password: str, sql: str, sslmode: str = "require"):
    import subprocess

    return subprocess.run(["psql", "-X", "-At", "-c", sql,
                           f"host=127.0.0.1 port={gw.port} dbname=shop user={user} sslmode={sslmode}"],
                          env={**os.environ, "PGPASSWORD": password}, capture_output=True, text=True, timeout=60)


def in_thread(*args, **kw):
    return threads.deferToThread(psql, *args, **kw)


@pytest_twisted.inlineCallbacks
def test_oidc_token_as_password(gw, idp):
    token = idp.mint("alice", groups=["dev"])
    r = yield in_thread(gw, "alice", token, "select current_user; show default_transaction_read_only")
    assert r.returncode == 0, r.stderr
    # group dev -> read_only -> the read_only credential, and the session is read-only upstream
    assert r.stdout.split() == ["app_md5", "on"]
    assert token not in gw.log()
    r = yield in_thread(gw, "bob", token, "select 1")
    assert r.returncode != 0 and "bob" in r.stderr  # token for alice, user name bob: refused, saying so
    r = yield in_thread(gw, "alice", idp.mint("alice", exp=1), "select 1")
    assert r.returncode != 0 and "28P01" not in r.stdout and "expired" in r.stderr.lower()


@pytest_twisted.inlineCallbacks
def test_token_needs_tls(gw, idp):
    r = yield in_thread(gw, "alice", idp.mint("alice"), "select 1", sslmode="disable")
    assert r.returncode != 0 and "needs TLS" in r.stderr


@pytest_twisted.inlineCallbacks
def test_ldap_passwords_map_groups_to_levels(gw):
    r = yield in_thread(gw, "alice", PASSWORDS["alice"], "select current_user")  # dba -> admin
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "app_scram"
    r = yield in_thread(gw, "bob", PASSWORDS["bob"], "select current_user")  # analysts -> read_only
    assert r.stdout.strip() == "app_md5"
    r = yield in_thread(gw, "bob", "wrong", "select 1")
    assert r.returncode != 0 and 'password authentication failed for user "bob"' in r.stderr
    assert PASSWORDS["bob"] not in gw.log()


@pytest_twisted.inlineCallbacks
def test_a_name_typed_another_way_is_the_same_person(gw):
    # the directory matches uid ignoring case and spaces; the session is bob's (his level,
    # his rules, his journal), and the journal also keeps what was typed
    r = yield in_thread(gw, "BOB", PASSWORDS["bob"], "select current_user")
    assert (r.returncode, r.stdout.strip()) == (0, "app_md5"), r.stderr
    import json
    import subprocess

    out = subprocess.run([str(BIN / "hoopd"), "journal", "export", "--dir", str(gw.folder / "journal"),
                          "--format", "jsonl"], capture_output=True, text=True, timeout=60)
    starts = [e for e in map(json.loads, out.stdout.splitlines()) if e["kind"] == "session_start"]
    assert [(e["user"], e.get("user_typed")) for e in starts] == [("bob", "BOB")], out.stderr
    out = subprocess.run([str(BIN / "hoopd"), "journal", "sessions", "--dir", str(gw.folder / "journal"),
                          "--user", "Bob"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "bob" in out.stdout


def api(gw, path: str, token: str, method: str = "GET") -> tuple[int, dict]:
    import json
    import urllib.error
    import urllib.request

    port = gw.config.read_text().split('http = "tcp:')[1].split(":")[0]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 headers={"Authorization": f"Bearer {token}"}, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest_twisted.inlineCallbacks
def test_oidc_bearer_tokens_on_the_control_api(gw, idp):
    viewer = idp.mint("carol", groups=["oncall"])
    admin = idp.mint("dana", groups=["dba"])
    outsider = idp.mint("erin", groups=["dev"])
    status, body = yield threads.deferToThread(api, gw, "/api/v1/sessions", viewer)
    assert status == 200 and "sessions" in body
    status, body = yield threads.deferToThread(api, gw, "/api/v1/sessions/nope/kill", viewer, "POST")
    assert status == 403
    status, body = yield threads.deferToThread(api, gw, "/api/v1/sessions/nope/kill", admin, "POST")
    assert status == 404  # allowed to kill; there is no such session
    status, _ = yield threads.deferToThread(api, gw, "/api/v1/sessions", outsider)
    assert status in (401, 403)
    status, _ = yield threads.deferToThread(api, gw, "/api/v1/sessions", idp.mint("dana", groups=["dba"], exp=1))
    assert status == 401
