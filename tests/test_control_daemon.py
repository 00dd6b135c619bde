"""``twistd hoopd`` as systemd runs it: sd_notify, the watchdog, SIGHUP reload, graceful
shutdown, socket activation and the journald log observer."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from hoopd.journal.reader import Journal
from tests.gateway import BIN, Gateway, connection_toml, free_port, users_toml

pytestmark = pytest.mark.integration


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; collects the messages."""

    def __init__(self, folder: Path) -> None:
        self.path = str(folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(30)
        self.seen: list[str] = []

    def expect(self, prefix: str) -> str:
        """The next message (skipping watchdog pings) starting with prefix; fails on any other."""
        while True:
            msg = self.sock.recv(4096).decode()
            self.seen.append(msg)
            if msg != "WATCHDOG=1":
                assert msg.startswith(prefix), f"expected {prefix!r}, got {msg!r} after {self.seen}"
                return msg

    def close(self) -> None:
        self.sock.close()


def body(pg, *, access: str, grace: str = "20s") -> str:
    return (f'[control]\nshutdown_grace = "{grace}"\n' + users_toml()
            + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", pg.app_scram.password)
            .replace('analysts = "read_only"\n', access))


def stopped_cleanly(status: int, log: str) -> bool:
    """twistd re-raises the SIGTERM it stopped for (systemd counts that as a clean exit)."""
    return status in (0, -signal.SIGTERM) and "Server Shut Down." in log


def can_read(gw: Gateway, user: str) -> bool | str:
    try:
        with psycopg.connect(gw.dsn(user), autocommit=True) as c:
            return c.execute("select count(*) from customers").fetchone()[0] == 3
    except psycopg.OperationalError as e:
        return str(e)


def test_notify_watchdog_and_sighup_reload(pg, tmp_path):
    notify = NotifySocket(tmp_path)
    gw = Gateway(tmp_path, body(pg, access=""))
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"}
    try:
        gw.start(env)
        assert notify.expect("READY=1").startswith("READY=1\nSTATUS=serving postgres on 127.0.0.1:")
        while notify.seen.count("WATCHDOG=1") < 2:  # pings come every 0.1 s
            notify.seen.append(notify.sock.recv(100).decode())
        assert 'has no access to connection "shop"' in can_read(gw, "reader")

        gw.config.write_text(gw.config.read_text().replace('apps = "read_write"\n',
                                                           'apps = "read_write"\nanalysts = "read_only"\n'))
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as live:  # lives through the reload
            gw.signal(signal.SIGHUP)
            assert notify.expect("RELOADING=1\nMONOTONIC_USEC=")
            assert notify.expect("READY=1") == "READY=1\nSTATUS=config reloaded"
            assert can_read(gw, "reader") is True
            assert live.execute("select 1").fetchone() == (1,)

        good = gw.config.read_text()
        gw.config.write_text(good.replace(f"port = {pg.port}\n", 'port = "x"\n'))
        gw.signal(signal.SIGHUP)
        notify.expect("RELOADING=1")
        assert "reload rejected" in notify.expect("READY=1")
        assert can_read(gw, "reader") is True  # the old config stays
        assert "reload (SIGHUP) rejected, keeping the running config: connections.shop.port:" in gw.log()

        gw.stop()
        notify.expect("STOPPING=1")
        assert stopped_cleanly(gw.proc.returncode, gw.log())
    finally:
        gw.stop()
        notify.close()


def test_graceful_shutdown_waits_then_ends_sessions_with_57P01(pg, tmp_path):
    gw = Gateway(tmp_path, f'[journal]\ndir = "{tmp_path / "journal"}"\n' + body(pg, access="", grace="1s"))
    gw.start()
    try:
        stays = psycopg.connect(gw.dsn("dev"))  # psycopg opens a transaction: idle in transaction
        stays.execute("select 1")
        gw.signal(signal.SIGTERM)
        assert stopped_cleanly(gw.proc.wait(30), gw.log())
        with pytest.raises(psycopg.errors.AdminShutdown) as e:
            stays.execute("select 2")
        assert "terminating connection due to administrator command" in str(e.value)
        log = gw.log()
        assert "shutdown: waiting up to 1s for 1 live sessions" in log
        assert "shutdown: ending 1 sessions still open after the grace period" in log
        stays.close()
        journal = Journal(tmp_path / "journal")
        ends = [e.rec["reason"] for e in journal.records() if e.rec["kind"] == "session_end"]
        assert ends == ["killed by shutdown: the gateway is shutting down"]
        assert journal.segments() and not [seg for seg in journal.segments() if seg.open]  # closed cleanly
    finally:
        gw.stop()


def test_shutdown_lets_a_running_statement_finish(pg, tmp_path):
    gw = Gateway(tmp_path, body(pg, access=""))
    gw.start()
    result: list[object] = []
    try:
        conn = psycopg.connect(gw.dsn("dev"), autocommit=True)

        def run() -> None:
            try:
                result.append(conn.execute("select pg_sleep(1), 42").fetchone()[1])
            finally:
                conn.close()  # the client leaves: the gateway has nothing left to wait for
        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        while pg.psql("select count(*) from pg_stat_activity where query = 'select pg_sleep(1), 42'").strip() != "1":
            assert time.monotonic() < deadline, "the statement never reached PostgreSQL"
            time.sleep(0.02)
        gw.signal(signal.SIGTERM)
        worker.join(30)
        assert result == [42]
        assert stopped_cleanly(gw.proc.wait(30), gw.log())
        assert "shutdown: waiting up to 20s for 1 live sessions" in gw.log()
        assert "ending 1 sessions" not in gw.log()
    finally:
        gw.stop()


def _get(url: str) -> dict:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.skipif(not shutil.which("systemd-socket-activate"), reason="systemd-socket-activate not installed")
def test_socket_activation_and_journald_logger(pg, tmp_path):
    ports = [free_port() for _ in range(3)]
    cfg = tmp_path / "hoopd.toml"
    cfg.write_text(f'[gateway]\nnode = "sa"\nstate_dir = "{tmp_path}"\n[listen]\n'
                   'postgres = "systemd:domain=INET:index=0"\nhttp = "systemd:domain=INET:index=1"\n'
                   'ssh = "systemd:domain=INET:index=2"\n' + body(pg, access=""))
    cmd = ["systemd-socket-activate", *(f"--listen=127.0.0.1:{p}" for p in ports), "--fdname=hoopd:hoopd:hoopd",
           str(BIN / "twistd"), "--nodaemon", "--pidfile=", "--logger=hoopd.logobserver.observer",
           "hoopd", "--config", str(cfg)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        ready = _get(f"http://127.0.0.1:{ports[1]}/readyz")  # the first connection starts hoopd
        assert ready["ready"] and ready["checks"]["listeners"]["bound"] == {
            "postgres": f"127.0.0.1:{ports[0]}", "http": f"127.0.0.1:{ports[1]}", "ssh": f"127.0.0.1:{ports[2]}"}
        with psycopg.connect(f"host=127.0.0.1 port={ports[0]} dbname=shop user=dev password=dev-password "
                             "sslmode=disable", autocommit=True) as c:
            assert c.execute("select 1").fetchone() == (1,)
        with socket.create_connection(("127.0.0.1", ports[2]), timeout=10) as s:
            assert s.recv(100).startswith(b"SSH-2.0-")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert stopped_cleanly(proc.returncode, out)
    lines = out.split("Execing", 1)[1].splitlines()[1:]  # what hoopd wrote, after systemd-socket-activate's lines
    assert "<6>[hoopd.tap] hoopd starting: node sa, 1 connections, postgres on systemd:domain=INET:index=0" in lines
    assert any(line.startswith("<6>[hoopd.proxy] session ") for line in lines)
    assert all(re.match(r"<[0-7]>", line) for line in lines)
