"""Control plane without sockets: [control] config, tokens, redaction, console, auth, OpenAPI,
sd_notify (over a real AF_UNIX datagram socket), the watchdog and the journald observer."""
from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import Logger, LogPublisher

from hoopd.config import load, parse
from hoopd.confkit import ConfigError
from hoopd.control.auth import ApiError, authenticate, bearer
from hoopd.control.console import Console
from hoopd.control.http import ROUTES, ControlResource, ControlSite
from hoopd.control.openapi import DOCUMENT
from hoopd.control.plane import ControlPlane
from hoopd.control.summary import REDACTED
from hoopd.control.tokens import hash_token, new_token
from hoopd.identity.base import AuthError, Identity
from hoopd.logobserver import observer
from hoopd.sdnotify import Notifier, watchdog_service
from hoopd.tap import GatewayService
from tests.control_fakes import FakeGateway, FakeJournal

ADMIN_TOKEN = "admin-token-0123456789abcdef0123456789"
VIEWER_TOKEN = "viewer-token-0123456789abcdef012345678"
UPSTREAM_PASSWORD = "upstream-secret-pw"


def config(**control):
    return parse({
        "users": [{"name": "alice", "password_hash": "SCRAM-SHA-256$4096:c2FsdA==$a2V5:c2Vy", "groups": ["dba"]}],
        "connections": {"shop": {"host": "127.0.0.1", "port": 1, "tls": "disable",
                                 "credentials": {"default": {"user": "app", "password": UPSTREAM_PASSWORD}},
                                 "access": {"dba": "admin"}}},
        "control": {"tokens": [{"name": "ops", "role": "admin", "token_hash": hash_token(ADMIN_TOKEN)},
                               {"name": "grafana", "role": "viewer", "token_hash": hash_token(VIEWER_TOKEN)}],
                    **control},
    })


def fired(d: defer.Deferred):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


# --- [control] config ---------------------------------------------------------------------

def test_control_config_defaults_and_values(tmp_path):
    c = config(admin_groups=["dba"], ssh_authorized_keys="admins", shutdown_grace="5s").control
    assert [(t.name, t.role) for t in c.tokens] == [("ops", "admin"), ("grafana", "viewer")]
    assert c.admin_groups == {"dba"} and c.shutdown_grace == 5.0
    assert c.ssh_authorized_keys == str(Path(".") / "admins")
    assert c.open_health and not c.open_metrics
    assert (c.oidc_audience, c.http_idle_timeout, c.http_request_timeout, c.http_max_connections) == ((), 60, 10, 64)
    assert ADMIN_TOKEN not in repr(c) and hash_token(ADMIN_TOKEN) not in repr(c)


@pytest.mark.parametrize("control,message", [
    ({"tokens": [{"name": "x", "role": "root", "token_hash": "sha256:" + "0" * 64}]},
     "control.tokens[0].role: expected one of caller | viewer | admin"),
    ({"tokens": [{"name": "x", "role": "caller", "token_hash": "sha256:" + "0" * 64}]},
     'control.tokens[0].user: a "caller" token'),
    ({"tokens": [{"name": "x", "role": "admin", "token_hash": "plain"}]}, "control.tokens[0].token_hash:"),
    ({"tokens": [{"name": "x", "role": "admin", "token_hash": "sha256:" + "0" * 64}] * 2},
     "control.tokens[1].name: duplicate token name"),
    ({"tokenz": []}, "control.tokenz: unknown key"),
    ({"shutdown_grace": "soon"}, "control.shutdown_grace: expected a duration"),
    ({"ready_timeout": 0}, "control.ready_timeout: must be more than 0"),
    ({"http_request_timeout": 0}, "control.http_request_timeout: must be more than 0"),
    ({"http_idle_timeout": "soon"}, "control.http_idle_timeout: expected a duration"),
    ({"http_max_connections": 0}, "control.http_max_connections: expected an integer >= 1"),
    ({"oidc_audience": "hoopd-api"}, "control.oidc_audience: needs [identity.oidc]"),
    ({"web": {"client_id": "c", "client_secret_file": "/nonexistent/secret",
              "redirect_url": "https://gw/ui/oidc/callback"}}, "control.web.client_secret_file: cannot read"),
    ({"web": {"client_id": "c", "client_secret_file": "/etc/hostname", "redirect_url": "https://gw/ui"}},
     "control.web.redirect_url: expected this gateway's URL of /ui/oidc/callback"),
    ({"web": {"client_id": "c", "client_secret_file": "/etc/hostname",
              "redirect_url": "https://gw/ui/oidc/callback"}}, "control.web: needs [identity.oidc]"),
])
def test_control_config_errors(control, message):
    with pytest.raises(ConfigError) as e:
        parse({"control": control})
    assert str(e.value).startswith(message)


def test_api_audience_must_differ_from_the_login_audience():
    oidc = {"oidc": {"issuer": "https://idp.example.com", "audience": ["hoopd", "shared"]}}
    ok = parse({"identity": oidc, "control": {"oidc_audience": ["hoopd-api"]}})
    assert ok.control.oidc_audience == ("hoopd-api",)
    with pytest.raises(ConfigError) as e:
        parse({"identity": oidc, "control": {"oidc_audience": ["hoopd-api", "shared"]}})
    assert str(e.value).startswith("control.oidc_audience: shared is also in identity.oidc.audience")


def test_hash_token_cli():
    hoopd = [sys.executable, "-m", "hoopd.cli"]
    out = subprocess.run([*hoopd, "hash-token"], input=ADMIN_TOKEN + "\n", capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == hash_token(ADMIN_TOKEN)
    short = subprocess.run([*hoopd, "hash-token"], input="short\n", capture_output=True, text=True)
    assert short.returncode == 1 and "at least 32" in short.stderr
    new = subprocess.run([*hoopd, "hash-token", "--new"], capture_output=True, text=True)
    token = re.search(r"^token: (\S+)$", new.stdout, re.M).group(1)
    assert f"token_hash: {hash_token(token)}" in new.stdout
    assert new_token() != new_token()


# --- the control plane and the redacted config ---------------------------------------------

def test_config_summary_has_no_secrets():
    cfg = config()
    text = json.dumps(ControlPlane(FakeGateway(cfg), Clock()).config_summary())
    for secret in (UPSTREAM_PASSWORD, hash_token(ADMIN_TOKEN), cfg.users["alice"].password_hash):
        assert secret not in text
    summary = json.loads(text)
    assert summary["connections"]["shop"]["credentials"]["default"] == {"user": "app", "password": {"secret": "inline"}}
    assert summary["control"]["tokens"][0] == {"name": "ops", "role": "admin", "token_hash": REDACTED, "user": None}


def test_plane_lists_filters_kills_and_remembers_ended_sessions():
    gw, journal = FakeGateway(config()), FakeJournal()
    plane = ControlPlane(gw, Clock(), journal=journal)
    a = gw.add("a1", "alice", started=1)
    gw.add("b1", "bob", connection="crm", started=2)
    assert [s["id"] for s in plane.sessions()] == ["a1", "b1"]
    assert [s["id"] for s in plane.sessions(user="bob")] == ["b1"]
    assert [s["id"] for s in plane.sessions(connection="shop")] == ["a1"]
    assert plane.kill("a1", "runaway query", "ssh:root")
    assert a.killed == ("runaway query", "ssh:root")
    assert journal.actions == [("kill", "ssh:root", {"session": "a1", "reason": "runaway query"})]
    assert not plane.kill("a1", "again", "ssh:root")
    plane.tracker.session_ended(a.info, "killed by ssh:root: runaway query")
    ended = plane.session("a1")
    assert ended["active"] is False and ended["end_reason"].startswith("killed by ssh:root")
    assert [s["id"] for s in plane.sessions(active=False)] == ["a1"]
    assert [s["id"] for s in plane.sessions(active=None)] == ["a1", "b1"]
    assert plane.reload("api:ops") is None and gw.reloads == ["api:ops"]
    assert journal.actions[-1] == ("reload", "api:ops", {"ok": True, "error": None})


# --- console ------------------------------------------------------------------------------

class Screen:
    def __init__(self, plane: ControlPlane) -> None:
        self.out: list[str] = []
        self.err: list[str] = []
        self.console = Console(plane, "ssh:root", "root (test)", self.out.append, self.err.append)

    def run(self, line: str) -> tuple[int, str, str]:
        self.out.clear()
        self.err.clear()
        status = fired(self.console.run(line))
        return status, "".join(self.out), "".join(self.err)


@pytest.fixture
def console():
    gw = FakeGateway(config())
    gw.add("a1", "alice", started=0, statements=3, bytes_in=100, bytes_out=2000)
    journal = FakeJournal()
    return Screen(ControlPlane(gw, Clock(), journal=journal)), gw, journal


@pytest.mark.parametrize("line,status,error", [
    ("frobnicate", 2, "error: unknown command 'frobnicate' (try help)\n"),
    ("show", 2, "error: usage: show ID\n"),
    ("show nope", 1, "error: no session nope\n"),
    ("kill", 2, "error: usage: kill ID [REASON...]\n"),
    ("kill nope", 1, "error: no live session nope\n"),
    ("sessions --bogus", 2, "error: unknown option --bogus\n"),
    ("sessions --user", 2, "error: --user needs a value\n"),
    ("tail -n x", 2, "error: -n needs a number\n"),
    ("kill 'unbalanced", 2, "error: cannot parse the line: No closing quotation\n"),
])
def test_console_bad_input_is_one_line(console, line, status, error):
    screen, _, _ = console
    assert screen.run(line) == (status, "", error)


def test_console_commands(console):
    screen, gw, journal = console
    status, out, _ = screen.run("help")
    assert status == 0 and all(c in out for c in ("whoami", "sessions", "kill ID", "tail", "reload", "quit"))
    assert screen.run("whoami") == (0, "root (test)\n", "")
    status, out, _ = screen.run("sessions")
    header, row = out.splitlines()
    assert header.split() == ["ID", "USER", "CONNECTION", "LEVEL", "PEER", "AGE", "STMTS", "IN", "OUT", "STATE"]
    assert row.split() == ["a1", "alice", "shop", "read_only", "127.0.0.1:50000", "0m00s", "3", "100", "2000", "idle"]
    assert screen.run("sessions --user nobody")[1] == "no sessions\n"
    status, out, _ = screen.run("show a1")
    assert status == 0 and "user:                alice\n" in out and "groups:              g\n" in out
    status, out, _ = screen.run("stats")
    assert "sessions_active:     1\n" in out and "bytes_out:           2000\n" in out
    assert screen.run("kill a1 too many rows") == (0, "killed session a1\n", "")
    assert gw.registry.get("a1") is None and journal.actions[0][2]["reason"] == "too many rows"
    assert screen.run("reload") == (0, "reloaded: new sessions use the new config\n", "")
    gw.reload_error = "connections.shop.port: expected an integer"
    status, _, err = screen.run("reload")
    assert status == 1 and err == ("error: reload rejected, the running config stays: "
                                   "connections.shop.port: expected an integer\n")
    assert gw.reloads == ["ssh:root", "ssh:root"]
    assert not screen.console.finished
    assert screen.run("quit")[0] == 0 and screen.console.finished


def test_console_tail_and_follow(console):
    screen, _, journal = console
    journal.write(session="a1", user="alice", kind="statement", sql="select 1")
    journal.write(session="b2", user="bob", kind="statement", sql="select 2")
    assert screen.run("tail --user alice") == (0, "a1 alice statement select 1\n", "")
    screen.out.clear()
    d = screen.console.run("tail -f -n 0 --session b2")
    assert not d.called and len(journal.followers) == 1
    journal.write(session="a1", user="alice", kind="statement", sql="not this one")
    journal.write(session="b2", user="bob", kind="statement", sql="select 3")
    assert screen.out == ["b2 bob statement select 3\n"]
    assert screen.console.interrupt() and fired(d) == 0 and journal.followers == []
    assert not screen.console.interrupt()


def test_console_without_journal():
    screen = Screen(ControlPlane(FakeGateway(config()), Clock()))
    assert screen.run("tail -f") == (1, "", "error: tail is not available: this gateway has no journal\n")


def test_console_internal_error_is_one_line(console, monkeypatch):
    screen, _, _ = console
    monkeypatch.setattr(screen.console.plane, "stats", lambda: 1 / 0)
    assert screen.run("stats") == (1, "", "error: internal error (details in the gateway log)\n")


# --- API authentication --------------------------------------------------------------------

class Verifier:
    def verify(self, token: str, audience: tuple[str, ...] | None = None) -> defer.Deferred:
        if token == "a.valid.jwt":
            return defer.succeed(Identity("carol", frozenset({"dba"}), "oidc"))
        if token == "a.viewer.jwt":
            return defer.succeed(Identity("dave", frozenset({"analysts"}), "oidc"))
        if token == "a.nogroup.jwt":
            return defer.succeed(Identity("eve", frozenset(), "oidc"))
        return defer.fail(AuthError("bad token", reason="bad_signature"))


def test_bearer_header():
    assert bearer(b"Bearer abc") == "abc" and bearer(b"bearer  abc ") == "abc"
    assert bearer(b"Basic abc") is None and bearer(None) is None and bearer(b"Bearer ") is None


def test_authenticate_tokens_and_oidc():
    cfg = config(admin_groups=["dba"], viewer_groups=["analysts"]).control

    def auth(header, verifier=Verifier()):
        return fired(authenticate(cfg, verifier, header))

    assert auth(f"Bearer {ADMIN_TOKEN}".encode()).name == "api:ops"
    assert auth(f"Bearer {VIEWER_TOKEN}".encode()).role == "viewer"
    assert auth(b"Bearer a.valid.jwt").name == "oidc:carol" and auth(b"Bearer a.valid.jwt").role == "admin"
    assert auth(b"Bearer a.viewer.jwt").role == "viewer"
    for header, status in ((None, 401), (b"Bearer wrong", 401), (b"Bearer a.forged.jwt", 401),
                           (b"Bearer a.nogroup.jwt", 403)):
        with pytest.raises(ApiError) as e:
            auth(header)
        assert e.value.status == status
    with pytest.raises(ApiError) as e:
        auth(b"Bearer a.valid.jwt", verifier=None)
    assert e.value.status == 401
    with pytest.raises(ApiError) as e:
        auth(f"Bearer {VIEWER_TOKEN}".encode()).require("admin")
    assert e.value.status == 403


# --- the HTTP channel, without sockets -------------------------------------------------------

class PendingVerifier:
    """OIDC checks that wait until the test fires them."""

    def __init__(self) -> None:
        self.pending: list[defer.Deferred] = []

    def verify(self, token: str, audience: tuple[str, ...] | None = None) -> defer.Deferred:
        self.pending.append(defer.Deferred())
        return self.pending[-1]


def channel(verifier=None, **control):
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    clock = Clock()
    site = ControlSite(ControlPlane(FakeGateway(config(admin_groups=["dba"], **control)), clock,
                                    token_verifier=verifier))
    site.reactor = clock
    proto = site.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    return proto, transport, clock


def test_an_oidc_check_holds_the_body_unread_until_it_is_done():
    verifier = PendingVerifier()
    proto, transport, clock = channel(verifier)
    proto.dataReceived(b"POST /api/v1/sessions/x/kill HTTP/1.1\r\nHost: h\r\nContent-Length: 17\r\n"
                       b"Authorization: Bearer aaa.bbb.ccc\r\n\r\n")
    assert transport.producerState == "paused" and transport.value() == b""
    verifier.pending[0].callback(Identity("carol", frozenset({"dba"}), "oidc"))
    assert transport.producerState == "producing"
    proto.dataReceived(b'{"reason": "why"}')
    assert transport.value().startswith(b"HTTP/1.1 404 ") and b"no live session x" in transport.value()

    proto, transport, clock = channel(verifier)  # a refused token: answered at once, the body never read
    proto.dataReceived(b"POST /api/v1/reload HTTP/1.1\r\nHost: h\r\nContent-Length: 60000\r\n"
                       b"Authorization: Bearer aaa.bbb.ccc\r\n\r\n")
    verifier.pending[1].errback(AuthError("bad token", reason="token_signature"))
    assert transport.value().startswith(b"HTTP/1.1 401 Unauthorized\r\n") and transport.disconnecting


def test_a_request_must_arrive_within_the_request_timeout():
    proto, transport, clock = channel(http_request_timeout="3s", http_idle_timeout="60s")
    clock.advance(2)
    proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost:")
    clock.advance(0.9)
    assert transport.value() == b""
    clock.advance(0.2)  # 3 s after the connection was made, whatever trickled in
    assert transport.value().startswith(b"HTTP/1.1 408 ") and transport.disconnecting

    proto, transport, clock = channel(http_request_timeout="3s", http_idle_timeout="60s")
    proto.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
    assert b"200 OK" in transport.value()
    clock.advance(30)  # between requests only the idle timeout counts
    assert not transport.disconnecting
    clock.advance(31)
    assert transport.disconnecting


def test_the_resource_checks_callers_on_any_site():
    from treq.testing import StubTreq

    client = StubTreq(ControlResource(ControlPlane(FakeGateway(config()), Clock())))
    ok = fired(client.get("http://h/api/v1/stats", headers={"Authorization": f"Bearer {VIEWER_TOKEN}"}))
    assert ok.code == 200
    assert fired(client.get("http://h/api/v1/stats")).code == 401


# --- OpenAPI --------------------------------------------------------------------------------

def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_openapi_document_matches_routes():
    doc = json.loads(json.dumps(DOCUMENT))  # plain JSON
    assert doc["openapi"].startswith("3.1") and doc["info"]["title"] and doc["info"]["version"]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, "/" + "/".join(r.path)) for r in ROUTES if r.path[0] != "ui"}  # (the console: HTML)
    assert documented == served
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))
    for path, ops in doc["paths"].items():
        params = re.findall(r"{(\w+)}", path)
        for op in ops.values():
            assert "200" in op["responses"]
            assert sorted(p["name"] for p in op.get("parameters", []) if p["in"] == "path") == sorted(params)
    for ref in _refs(doc):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # KeyError: a dangling $ref


def test_openapi_document_passes_the_official_validator():
    validator = pytest.importorskip("openapi_spec_validator", reason="openapi-spec-validator is not installed")
    validator.validate(json.loads(json.dumps(DOCUMENT)))


# --- sd_notify, watchdog, reload ---------------------------------------------------------------

@pytest.fixture
def notify_socket(tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()


def test_notifier_sends_datagrams(notify_socket):
    path, sock = notify_socket
    n = Notifier(path)
    n.ready("up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"
    n.reloading()
    assert re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=\d+", sock.recv(4096))
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert not Notifier(None).notify("READY=1") and not Notifier(path + ".gone").notify("READY=1")


def test_notifier_abstract_namespace():
    name = f"hoopd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).notify("READY=1")
        assert s.recv(100) == b"READY=1"


def test_watchdog_pings_at_half_the_interval(notify_socket):
    path, sock = notify_socket
    clock = Clock()
    n = Notifier(path)
    assert watchdog_service(n, clock, {}) is None
    assert watchdog_service(n, clock, {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2) is None
    svc = watchdog_service(n, clock, {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "7"}, pid=7)
    svc.startService()
    assert sock.recv(100) == b"WATCHDOG=1"  # right away
    sock.settimeout(0.05)
    clock.advance(0.4)
    with pytest.raises(TimeoutError):
        sock.recv(100)
    clock.advance(0.1)
    assert sock.recv(100) == b"WATCHDOG=1"
    svc.stopService()


def _write_config(path: Path, access: str) -> None:
    path.write_text(f'[listen]\npostgres = "tcp:0:interface=127.0.0.1"\n'
                    f'[connections.shop]\nhost = "127.0.0.1"\ntls = "disable"\n'
                    f'[connections.shop.credentials.default]\nuser = "app"\n'
                    f'[connections.shop.access]\n{access}\n')


def test_reload_applies_a_valid_config_and_keeps_the_old_on_error(tmp_path, notify_socket):
    path, sock = notify_socket
    cfg_file = tmp_path / "hoopd.toml"
    _write_config(cfg_file, 'dba = "admin"')
    gw = GatewayService(load(cfg_file), Clock(), Notifier(path))
    _write_config(cfg_file, 'dba = "admin"\nanalysts = "read_only"')
    assert gw.reload("test") is None
    assert gw.factory.config.connections["shop"].access == {"dba": "admin", "analysts": "read_only"}
    assert sock.recv(4096).startswith(b"RELOADING=1\n") and sock.recv(4096).startswith(b"READY=1")
    cfg_file.write_text("[connections.shop\n")
    err = gw.reload("test")
    assert "not valid TOML" in err
    assert gw.config.connections["shop"].access["analysts"] == "read_only"
    assert gw.factory.config is gw.config
    assert sock.recv(4096).startswith(b"RELOADING=1\n") and sock.recv(4096).startswith(b"READY=1")


# --- journald observer -----------------------------------------------------------------------

def test_journald_observer_prefixes_every_line():
    out = io.StringIO()
    log = Logger(namespace="hoopd.test", observer=LogPublisher(observer(out)))
    log.info("hello {who}", who="world")
    log.warn("careful")
    log.error("bad\nsecond line")
    log.debug("detail")
    assert out.getvalue().splitlines() == [
        "<6>[hoopd.test] hello world", "<4>[hoopd.test] careful",
        "<3>[hoopd.test] bad", "<3>[hoopd.test] second line", "<7>[hoopd.test] detail"]
