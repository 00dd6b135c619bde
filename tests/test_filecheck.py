"""Files that grant access or hold secrets: a keys file others could write is refused
(check-config, start-up, reload, and at each SSH login); secret files others may read
are warned about (check-config, start-up), naming the key and file, never the content."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from hoopd.config import load
from hoopd.confkit import ConfigError
from hoopd.filecheck import access_file_problem, secret_file_warning
from tests.certs import write_self_signed
from tests.gateway import BIN, Gateway, free_port
from tests.test_control_ssh import make_key

SECRET = "s3cret-upstream-pw"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a file to another user")


def keys_file(folder: Path, mode: int = 0o600) -> Path:
    p = folder / "admins"
    p.write_text(f"alice {make_key(folder / 'alice.key')}\n")
    p.chmod(mode)
    return p


def test_access_file_problems(tmp_path: Path) -> None:
    f = keys_file(tmp_path, 0o644)
    tmp_path.chmod(0o755)
    assert access_file_problem(str(f)) is None
    assert access_file_problem(str(tmp_path / "missing")) is None
    for mode in (0o664, 0o646, 0o666):
        f.chmod(mode)
        assert access_file_problem(str(f)) == (f"{f} is writable by group or others (mode 0{mode:o}); chmod go-w it")
    f.chmod(0o600)
    tmp_path.chmod(0o777)  # others could replace the file
    assert "which group or others may write (mode 0777)" in access_file_problem(str(f))
    tmp_path.chmod(0o1777)  # sticky, like /tmp: they cannot
    assert access_file_problem(str(f)) is None
    tmp_path.chmod(0o700)


@root_only
def test_a_keys_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    f = keys_file(tmp_path)
    os.chown(f, 65534, 65534)
    assert "is owned by uid 65534" in access_file_problem(str(f))


def test_secret_file_warnings(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(SECRET)
    f.chmod(0o600)
    assert secret_file_warning("k", str(f)) is None
    f.chmod(0o604)
    w = secret_file_warning("connections.shop.credentials.default.password_file", str(f))
    assert w.startswith(f"connections.shop.credentials.default.password_file: {f} has group or world access (mode 0604)")
    assert SECRET not in w
    f.chmod(0o640)  # group read: fine for a root-owned file (a secrets group), not for others
    assert (secret_file_warning("k", str(f)) is None) == (f.stat().st_uid == 0)


def config_body(folder: Path, listen: str = "") -> str:
    """What follows [listen] postgres (tests.gateway.Gateway's layout): more listeners, then
    every kind of secret file and the SSH keys file."""
    cert, key = write_self_signed(folder)
    (folder / "hmac.key").write_text("k" * 32)
    (folder / "ldap.pw").write_text("ldap-" + SECRET)
    (folder / "shop.pw").write_text(SECRET)
    for name in ("hmac.key", "ldap.pw", "shop.pw"):
        (folder / name).chmod(0o600)
    return (f'{listen}[tls]\nmode = "allow"\ncert = "{cert}"\nkey = "{key}"\n'
            f'[journal]\ndir = "{folder / "journal"}"\nhmac_key_file = "hmac.key"\n'
            f'[control]\nssh_authorized_keys = "admins"\n'
            f'[identity.ldap]\nurl = "ldap://127.0.0.1:1"\nuser_base = "dc=x"\nbind_dn = "cn=svc"\n'
            f'bind_password_file = "ldap.pw"\n'
            f'[connections.shop]\nhost = "127.0.0.1"\nport = 1\ntls = "disable"\n'
            f'[connections.shop.credentials.default]\nuser = "app"\n'
            f'[connections.shop.credentials.read_only]\nuser = "ro"\npassword_file = "shop.pw"\n')


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "hoopd"), "check-config", str(path)], capture_output=True, text=True, timeout=60)


def test_check_config_refuses_a_writable_keys_file_and_warns_about_readable_secrets(tmp_path: Path) -> None:
    cfg = tmp_path / "hoopd.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n[listen]\npostgres = "tcp:6432"\n' + config_body(tmp_path))
    keys = keys_file(tmp_path, 0o644)
    ok = check_config(cfg)
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr

    for name in ("server.key", "hmac.key", "ldap.pw", "shop.pw"):
        (tmp_path / name).chmod(0o644)
    r = check_config(cfg)
    assert r.returncode == 0 and r.stdout.startswith(f"{cfg}: OK")
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("hoopd: warning: ")]
    assert [w.split(": ")[2] for w in warned] == ["tls.key", "journal.hmac_key_file", "identity.ldap.bind_password_file",
                                                  "connections.shop.credentials.read_only.password_file"]
    for w, name in zip(warned, ("server.key", "hmac.key", "ldap.pw", "shop.pw")):
        assert f"{tmp_path / name} has group or world access (mode 0644)" in w
    assert SECRET not in r.stderr + r.stdout

    (tmp_path / "journal").mkdir(mode=0o755)
    (tmp_path / "journal").chmod(0o755)
    r = check_config(cfg)
    assert (f"hoopd: warning: journal.dir: {tmp_path / 'journal'} has group or world access (mode 0755)"
            in r.stderr), r.stderr
    (tmp_path / "journal").chmod(0o700)
    assert "journal.dir" not in check_config(cfg).stderr

    keys.chmod(0o666)
    r = check_config(cfg)
    assert r.returncode == 1 and r.stderr.startswith(
        f"hoopd: control.ssh_authorized_keys: refused: {keys} is writable by group or others (mode 0666)")
    assert "Traceback" not in r.stderr


def test_start_up_warns_and_a_loosened_keys_file_is_refused_at_login_and_reload(tmp_path: Path) -> None:
    ssh_port = free_port()
    gw = Gateway(tmp_path, config_body(tmp_path, f'ssh = "tcp:{ssh_port}:interface=127.0.0.1"\n'))
    keys = keys_file(tmp_path)
    (tmp_path / "shop.pw").chmod(0o644)
    gw.start()
    try:
        assert f"connections.shop.credentials.read_only.password_file: {tmp_path / 'shop.pw'} has group or world" \
               in gw.log()

        def login() -> None:
            c = paramiko.SSHClient()
            c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            c.connect("127.0.0.1", ssh_port, username="alice", look_for_keys=False, allow_agent=False, timeout=10,
                      pkey=paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "alice.key")))
            c.close()

        login()
        keys.chmod(0o664)  # loosened while running: no key in it counts any more
        with pytest.raises(paramiko.AuthenticationException):
            login()
        assert f"SSH console: no key accepted: {keys} is writable by group or others (mode 0664)" in gw.log()

        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload (SIGHUP) rejected" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        assert "rejected, keeping the running config: control.ssh_authorized_keys: refused:" in gw.log()
    finally:
        gw.stop()
    assert SECRET not in gw.log() and "Traceback" not in gw.log()


def test_load_refuses_a_group_writable_keys_file(tmp_path: Path) -> None:
    cfg = tmp_path / "hoopd.toml"
    cfg.write_text('[control]\nssh_authorized_keys = "admins"\n')
    keys_file(tmp_path, 0o620)
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert e.value.path == "control.ssh_authorized_keys" and "mode 0620" in str(e.value)
