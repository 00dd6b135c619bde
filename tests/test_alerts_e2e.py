"""Webhooks from a real ``twistd hoopd`` to a real local HTTP server: a held statement's
request and decision arrive as signed JSON events, a 500 is retried, a Slack-format hook
gets a one-line text."""
from __future__ import annotations

import hmac
import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest

from hoopd.alerts import signature
from hoopd.control.tokens import hash_token
from tests.gateway import Gateway, connection_toml, free_port, users_toml

pytestmark = pytest.mark.integration
SECRET = b"webhook-secret-0123456789abcdef"
TOKEN = "dev-alerts-token-0123456789"


class Receiver:
    """An HTTP server that records each POST and answers 500 to the first one to /hook."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"] or 0))
                status = 500 if self.path == "/hook" and not any(p == "/hook" for p, _, _ in outer.got) else 200
                outer.statuses.append(status)
                outer.got.append((self.path, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int) -> None:
        for _ in range(300):
            if self.statuses.count(200) >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"only {len(self.got)} webhook posts: {self.got}")


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("alerts")
    (folder / "hook.key").write_bytes(SECRET)
    (folder / "hook.key").chmod(0o600)
    rx = Receiver()
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\n'
            f'[[control.tokens]]\nname = "dev"\nrole = "viewer"\ntoken_hash = "{hash_token(TOKEN)}"\nuser = "dev"\n'
            '[alerts]\nlogin_failure_burst = 2\n'
            f'[[alerts.webhooks]]\nname = "siem"\nurl = "http://127.0.0.1:{rx.port}/hook"\n'
            f'secret_file = "{folder / "hook.key"}"\nevents = ["review.*", "logins.burst"]\n'
            f'[[alerts.webhooks]]\nname = "chat"\nurl = "http://127.0.0.1:{rx.port}/slack"\nformat = "slack"\n'
            'events = ["review.requested"]\n'
            '[[rules]]\nname = "deletes"\naction = "review"\nkinds = ["delete"]\nreviewers = ["dba"]\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"]))
    g = Gateway(folder, body).start()
    g.http_port = http
    yield g, rx
    g.stop()
    rx.server.shutdown()
    assert "Traceback" not in g.log()


def test_signed_events_with_a_retry_and_a_slack_line(gw):
    g, rx = gw
    with psycopg.connect(g.dsn("writer"), autocommit=True) as c:
        c.execute("create temp table t (id int)")
        out: dict = {}
        t = threading.Thread(target=lambda: out.update(n=c.execute("delete from t").rowcount))
        t.start()
        rid = None
        for _ in range(200):
            req = urllib.request.Request(f"http://127.0.0.1:{g.http_port}/api/v1/reviews?status=pending",
                                         headers={"Authorization": f"Bearer {TOKEN}"})
            found = json.loads(urllib.request.urlopen(req, timeout=10).read())["reviews"]
            if found:
                rid = found[0]["id"]
                break
            time.sleep(0.05)
        assert rid is not None
        req = urllib.request.Request(f"http://127.0.0.1:{g.http_port}/api/v1/reviews/{rid}/approve", method="POST",
                                     data=b"{}", headers={"Authorization": f"Bearer {TOKEN}"})
        urllib.request.urlopen(req, timeout=10).read()
        t.join(10)
        assert out == {"n": 0}
    rx.wait(3)  # siem: requested (after a 500 and a retry), approved; chat: requested
    siem = [(h, b) for p, h, b in rx.got if p == "/hook"]
    events = []
    for headers, body in siem:
        ts = int(headers["X-Hoopd-Timestamp"])
        assert hmac.compare_digest(headers["X-Hoopd-Signature"], signature(SECRET, ts, body))
        events.append(json.loads(body)["event"])
    assert events[0] == events[1] == "review.requested" and "review.approved" in events  # the 500 was retried
    assert json.loads(siem[-1][1])["data"]["id"] == rid and json.loads(siem[-1][1])["node"] == "test"
    (chat,) = [json.loads(b) for p, _, b in rx.got if p == "/slack"]
    assert chat["text"].startswith(f"hoopd: review #{rid} requested: writer on shop (deletes): delete from t")
    assert "X-Hoopd-Signature" not in [h for p, h, _ in rx.got if p == "/slack"][0]


def test_a_burst_of_failed_logins_is_an_event(gw):
    g, rx = gw
    before = len(rx.got)
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(g.dsn("writer", password="wrong")).close()
    for _ in range(200):
        bursts = [json.loads(b) for p, _, b in rx.got[before:] if p == "/hook" and b"logins.burst" in b]
        if bursts:
            break
        time.sleep(0.05)
    assert bursts and bursts[0]["data"]["peer"] == "127.0.0.1" and bursts[0]["data"]["count"] == 2
    assert "wrong" not in json.dumps(bursts)  # no password in an event
