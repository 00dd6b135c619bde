"""Time-boxed access grants through ``twistd hoopd`` with a real PostgreSQL: a read_only
user asks for read_write (the CLI), a grant reviewer approves it (the SSH console), the
user's new sessions get the level, a revoke ends the live session that uses it, and an
active grant survives a restart of the gateway."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.gateway import Gateway, connection_toml, free_port, tokens_toml, users_toml
from tests.test_control_ssh import Console

pytestmark = pytest.mark.integration

TOKENS = {"dev": "dev-grant-token-0123456789", "reader": "reader-grant-token-0123456789"}
HOOPD = str(Path(".venv/bin/hoopd").resolve())


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grants")
    r = {role.name: role.password for role in pg.roles}
    http = free_port()
    console = Console(folder, names=("dev", "reader"))
    tokens = tokens_toml(TOKENS)
    body = (f'http = "tcp:{http}:interface=127.0.0.1"\nssh = "tcp:{console.port}:interface=127.0.0.1"\n'
            f'[journal]\ndir = "{folder / "journal"}"\n'
            f'[control]\nssh_authorized_keys = "{console.keys_file}"\n' + tokens + users_toml()
            + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", r["app_scram"],
                              extra='grant_reviewers = ["dba"]\nmax_grant = "2h"\n'))
    g = Gateway(folder, body).start()
    g.http_port, g.console, g.body = http, console, body
    for u, t in TOKENS.items():
        (folder / f"{u}.token").write_text(t)
    yield g
    g.stop()
    assert "Traceback" not in g.log()


def cli(g, who: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HOOPD, *args, "--url", f"http://127.0.0.1:{g.http_port}",
                           "--token-file", str(g.folder / f"{who}.token")], capture_output=True, text=True)


def read_only_upstream(g) -> str:
    with psycopg.connect(g.dsn("reader"), autocommit=True) as c:
        return c.execute("show default_transaction_read_only").fetchone()[0]


def test_request_approve_use_revoke_and_restart(gw):
    g = gw
    assert read_only_upstream(g) == "on"  # reader is read_only on shop
    too_long = cli(g, "reader", "grant", "request", "--connection", "shop", "--level", "read_write", "--for", "3h",
                   "--reason", "fix order 7")
    assert too_long.returncode == 1 and "at most 7200s" in too_long.stderr
    asked = cli(g, "reader", "grant", "request", "--connection", "shop", "--level", "read_write", "--for", "30m",
                "--reason", "fix order 7", "--json")
    assert asked.returncode == 0, asked.stderr
    gid = json.loads(asked.stdout)["id"]
    assert read_only_upstream(g) == "on"  # pending: nothing changes
    status, _, err = g.console.exec(f"approve-grant {gid}", "reader")
    assert status == 1 and "grant_reviewers" in err  # reader is not a grant reviewer (nor may approve its own)
    assert g.console.exec(f"approve-grant {gid} ok for 30m", "dev")[:2] == (0, f"grant {gid}: active\n")
    assert gid in g.console.exec("grants", "dev")[1]
    assert read_only_upstream(g) == "off"  # a new session gets read_write

    g.stop()  # the grant survives a restart
    g2 = Gateway(g.folder, g.body, port=g.port)
    g2.config.write_text(g.config.read_text())
    g2.start()
    g.proc = g2.proc
    g._log = g2._log
    assert read_only_upstream(g) == "off"

    with psycopg.connect(g.dsn("reader"), autocommit=True) as live:
        assert live.execute("select 1").fetchone() == (1,)
        revoked = cli(g, "dev", "grant", "revoke", gid, "done")
        assert revoked.returncode == 0 and f"grant {gid}: revoked" in revoked.stdout
        time.sleep(0.5)
        with pytest.raises(psycopg.OperationalError) as e:
            live.execute("select 1")
        assert "revoked" in str(e.value)
    assert read_only_upstream(g) == "on"
    listed = cli(g, "dev", "grant", "list", "--all")
    assert gid in listed.stdout and "revoked" in listed.stdout
    exported = subprocess.run([HOOPD, "journal", "export", "--dir", str(g.folder / "journal"), "--format", "jsonl"],
                              capture_output=True, text=True, check=True).stdout
    steps = [r for r in map(json.loads, exported.splitlines()) if r.get("grant") == gid and r["kind"] == "admin"]
    assert [(s["action"], s["by"]) for s in steps] == [("grant_requested", "user:reader"),
                                                       ("grant_approved", "ssh:dev"), ("grant_revoked", "api:dev")]
