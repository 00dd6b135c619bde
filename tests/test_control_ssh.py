"""The SSH admin console of a real ``twistd hoopd``, through paramiko and the OpenSSH client."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from tests.gateway import Gateway, connection_toml, free_port, users_toml

pytestmark = pytest.mark.integration


def make_key(path: Path) -> str:
    """Write an Ed25519 private key (OpenSSH format, 0600); return its public line."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    path.chmod(0o600)
    return key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


class Console:
    """SSH access to one gateway's console."""

    def __init__(self, folder: Path, names: tuple[str, ...] = ("alice", "bob", "mallory")) -> None:
        self.folder = folder
        self.port = free_port()
        self.keys_file = folder / "admins"
        self.pub = {name: make_key(folder / f"{name}.key") for name in names}
        self.authorize(*names[:2])

    def authorize(self, *names: str) -> None:
        self.keys_file.write_text("# NAME KEYTYPE KEY [comment]\n\n"
                                  + "".join(f"{n} {self.pub[n]} {n}@laptop\n" for n in names))

    def client(self, name: str = "alice", key: str | None = None) -> paramiko.SSHClient:
        c = paramiko.SSHClient()
        c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        c.connect("127.0.0.1", self.port, username=name,
                  pkey=paramiko.Ed25519Key.from_private_key_file(str(self.folder / f"{key or name}.key")),
                  look_for_keys=False, allow_agent=False, timeout=10, auth_timeout=10)
        return c

    def exec(self, command: str, name: str = "alice") -> tuple[int, str, str]:
        with self.client(name) as c:
            _, out, err = c.exec_command(command, timeout=30)
            text, error = out.read().decode(), err.read().decode()
            return out.channel.recv_exit_status(), text, error


def start_with_console(pg, folder: Path) -> Gateway:
    """A started gateway with the SSH console (keys in ``folder``, driven by ``g.console``)
    and a journal in ``folder / "journal"``."""
    console = Console(folder)
    body = (f'ssh = "tcp:{console.port}:interface=127.0.0.1"\n'
            f'[control]\nssh_authorized_keys = "{console.keys_file}"\n[journal]\ndir = "{folder / "journal"}"\n'
            + users_toml() + connection_toml("shop", "127.0.0.1", pg.port, "shop", "app_scram", pg.app_scram.password))
    g = Gateway(folder, body).start()
    g.console = console
    return g


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    g = start_with_console(pg, tmp_path_factory.mktemp("ssh"))
    yield g
    g.stop()


def test_exec_mode_prints_and_exits_with_a_status(gw):
    status, out, err = gw.console.exec("whoami")
    assert status == 0 and err == "" and out.startswith("alice (ssh key SHA256:") and "from 127.0.0.1" in out
    assert gw.console.exec("sessions") == (0, "no sessions\n", "")
    status, out, err = gw.console.exec("stats")
    assert status == 0 and "sessions_active:     0\n" in out and "connections:         shop\n" in out
    assert gw.console.exec("frobnicate now") == (2, "", "error: unknown command 'frobnicate' (try help)\n")
    assert gw.console.exec("kill nope") == (1, "", "error: no live session nope\n")


def test_host_key_is_made_once_and_private(gw):
    key_file = gw.folder / "ssh_host_ed25519_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    with gw.console.client() as c:
        served = c.get_transport().get_remote_server_key()
    assert served.get_base64() == paramiko.Ed25519Key.from_private_key_file(str(key_file)).get_base64()


def _read_until(chan: paramiko.Channel, marker: bytes, wait: float = 20, must: bool = True) -> bytes:
    buf = b""
    deadline = time.monotonic() + wait
    while marker not in buf:
        if time.monotonic() > deadline:
            assert not must, f"never saw {marker!r} in {buf!r}"
            break
        if chan.recv_ready():
            buf += chan.recv(65536)
        elif chan.exit_status_ready():
            break
        else:
            time.sleep(0.01)
    return buf


def test_interactive_shell_with_pty(gw):
    with gw.console.client() as c:
        chan = c.invoke_shell(term="xterm", width=120, height=40)
        banner = _read_until(chan, b"hoopd> ")
        assert b"hoopd console on test; you are ssh:alice" in banner
        chan.send(b"whoami\r")
        assert b"alice (ssh key SHA256:" in _read_until(chan, b"hoopd> ")
        chan.send(b"show\r")
        assert b"error: usage: show ID" in _read_until(chan, b"hoopd> ")
        chan.send(b"\x1b[A\r")  # up arrow: history brings back "show"
        assert b"error: usage: show ID" in _read_until(chan, b"hoopd> ")
        chan.send(b"sessions --all\r")
        assert b"no sessions" in _read_until(chan, b"hoopd> ")
        chan.send(b"bogus 'quote\r")
        out = _read_until(chan, b"hoopd> ")
        assert b"error: cannot parse the line" in out and b"Traceback" not in out
        chan.send(b"partial line\x03")  # Ctrl-C drops the line
        assert b"^C" in _read_until(chan, b"hoopd> ")
        chan.send(b"quit\r")
        assert chan.recv_exit_status() == 0


def test_wrong_key_or_name_is_refused(gw):
    with pytest.raises(paramiko.AuthenticationException):
        gw.console.client("mallory")
    with pytest.raises(paramiko.AuthenticationException):
        gw.console.client("alice", key="bob")  # bob's key is not alice's


def test_removing_a_key_line_revokes_it_without_restart(gw):
    assert gw.console.exec("whoami", "bob")[0] == 0
    gw.console.authorize("alice")
    try:
        with pytest.raises(paramiko.AuthenticationException):
            gw.console.client("bob")
        assert gw.console.exec("whoami", "alice")[0] == 0
    finally:
        gw.console.authorize("alice", "bob")


def test_kill_ends_a_live_psql_session(gw):
    psql = subprocess.Popen(["psql", "-X", "-At", f"host=127.0.0.1 port={gw.port} dbname=shop user=dev sslmode=disable",
                             "-c", "select pg_sleep(60)"], env=gw.env("dev"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        rows: list[list[str]] = []
        while not rows:
            assert time.monotonic() < deadline, "the psql session never showed up"
            status, out, _ = gw.console.exec("sessions --user dev")
            rows = [line.split() for line in out.splitlines()[1:] if line.split()[1:2] == ["dev"]]
            rows = [r for r in rows if r[6] == "1"]  # its statement has reached the gateway
        sid = rows[0][0]
        status, out, err = gw.console.exec(f"show {sid}")
        assert status == 0 and "connection:          shop\n" in out
        assert gw.console.exec(f"kill {sid} maintenance window") == (0, f"killed session {sid}\n", "")
        _, stderr = psql.communicate(timeout=30)
        assert psql.returncode != 0 and "terminating connection due to administrator command" in stderr
    finally:
        if psql.poll() is None:
            psql.kill()
            psql.wait()
    assert f"admin ssh:alice: kill session {sid} (maintenance window)" in gw.log()
    assert gw.console.exec(f"kill {sid}")[0] == 1


@pytest.mark.skipif(not shutil.which("ssh"), reason="OpenSSH client not installed (scripts/install-deps.sh)")
def test_openssh_client(gw):
    base = ["ssh", "-F", "/dev/null", "-p", str(gw.console.port), "-i", str(gw.folder / "alice.key"),
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={gw.folder / 'known_hosts'}",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]
    r = subprocess.run([*base, "alice@127.0.0.1", "stats"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "sessions_active:" in r.stdout, r.stderr
    r = subprocess.run([*base, "alice@127.0.0.1", "show"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stderr.strip() == "error: usage: show ID"
    r = subprocess.run([*base, "-tt", "alice@127.0.0.1"], input="whoami\rquit\r", capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "alice (ssh key SHA256:" in r.stdout, r.stderr
    r = subprocess.run([*base, "mallory@127.0.0.1", "whoami"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "Permission denied (publickey)" in r.stderr


def test_reload_from_the_console(gw):
    assert gw.console.exec("reload") == (0, "reloaded: new sessions use the new config\n", "")
    good = gw.config.read_text()
    gw.config.write_text(good + "\n[gateway]\n")
    try:
        status, out, err = gw.console.exec("reload")
        assert status == 1 and err.startswith("error: reload rejected, the running config stays:")
    finally:
        gw.config.write_text(good)
    assert gw.console.exec("whoami")[0] == 0
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5):
        pass  # still serving


def psql(gw, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run(["psql", "-X", "-At", f"host=127.0.0.1 port={gw.port} dbname=shop user=dev sslmode=disable",
                           "-c", sql], env=gw.env("dev"), capture_output=True, text=True, timeout=30)


def test_tail_follows_what_a_client_just_ran(gw):
    with gw.console.client() as c:
        chan = c.invoke_shell(term="xterm", width=200, height=40)
        _read_until(chan, b"hoopd> ")
        chan.send(b"tail -f -n 0 --user dev\r")
        seen = b""
        for _ in range(10):  # a statement run before the follow began is not shown: run it until one is
            r = psql(gw, "select 'tail-me-' || 42")
            assert r.returncode == 0 and r.stdout.strip() == "tail-me-42"
            seen += _read_until(chan, b"tail-me-", wait=2, must=False)
            if b"tail-me-" in seen:
                break
        chan.send(b"\x03")  # Ctrl-C ends the follow, the prompt comes back
        seen += _read_until(chan, b"hoopd> ")
        assert b"select 'tail-me-' || 42" in seen
        chan.send(b"quit\r")
        assert chan.recv_exit_status() == 0
    status, out, _ = gw.console.exec("tail -n 50 --user dev")
    assert status == 0 and "select 'tail-me-' || 42" in out
