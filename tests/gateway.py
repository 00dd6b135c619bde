"""Run the real gateway (``twistd -n hoopd``) in a subprocess for end-to-end tests."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable
from pathlib import Path

from hoopd.pgwire.scram import make_verifier

BIN = Path(sys.executable).parent
USERS = {  # name -> (password, groups)
    "dev": ("dev-password", ["dba"]),
    "reader": ("reader-password", ["analysts"]),
    "writer": ("writer-password", ["apps"]),
    "nobody": ("nobody-password", ["strangers"]),
}
_VERIFIERS = {name: make_verifier(pw) for name, (pw, _) in USERS.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def users_toml() -> str:
    return "".join(f'[[users]]\nname = "{n}"\npassword_hash = "{_VERIFIERS[n]}"\ngroups = {g!r}\n'.replace("'", '"')
                   for n, (_, g) in USERS.items())


def tokens_toml(tokens: dict[str, str], role: str = "viewer") -> str:
    """``[[control.tokens]]`` for each user -> bearer token, bound to that user (reviews, grants)."""
    from hoopd.control.tokens import hash_token

    return "".join(f'[[control.tokens]]\nname = "{u}"\nrole = "{role}"\ntoken_hash = "{hash_token(t)}"\n'
                   f'user = "{u}"\n' for u, t in tokens.items())


def connection_toml(name: str, host: str, port: int, database: str, user: str, password: str | None,
                    tls: str = "disable", ca_file: str | None = None, extra: str = "") -> str:
    cred = f'password = "{password}"\n' if password is not None else ""
    ca = f'ca_file = "{ca_file}"\n' if ca_file else ""
    return (f'[connections.{name}]\nhost = "{host}"\nport = {port}\ndatabase = "{database}"\ntls = "{tls}"\n{ca}{extra}'
            f'[connections.{name}.credentials.default]\nuser = "{user}"\n{cred}'
            f'[connections.{name}.access]\ndba = "admin"\napps = "read_write"\nanalysts = "read_only"\n')


class Gateway:
    """A ``twistd -n hoopd`` process with a config written into ``folder``."""

    def __init__(self, folder: Path, body: str, *, port: int | None = None, gateway: str = "") -> None:
        self.folder = folder
        self.port = port or free_port()
        self.config = folder / "hoopd.toml"
        self.config.write_text(f'[gateway]\nnode = "test"\nstate_dir = "{folder}"\n{gateway}'
                               f'[listen]\npostgres = "tcp:{self.port}:interface=127.0.0.1"\n' + body)
        self.log_path = folder / "gateway.log"
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict[str, str] | None = None) -> "Gateway":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(BIN / "twistd"), "-n", "--pidfile=", "hoopd", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.folder, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not listen:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def dsn(self, user: str = "dev", dbname: str = "shop", password: str | None = None, **kw: str) -> str:
        pw = USERS[user][0] if password is None else password
        parts = {"host": "127.0.0.1", "port": str(self.port), "dbname": dbname, "user": user, "password": pw,
                 "sslmode": "disable", "connect_timeout": "10", **kw}
        return " ".join(f"{k}='{v}'" for k, v in parts.items())

    def url(self, user: str = "dev", dbname: str = "shop") -> str:
        return f"postgresql://{user}:{USERS[user][0]}@127.0.0.1:{self.port}/{dbname}"

    def env(self, user: str = "dev") -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": USERS[user][0]}


def cancel_until_passed_on(connect: Any, passed_on: Callable[[], int], tries: int = 20) -> None:
    """Cancel a running ``pg_sleep`` (each cancel a new connection, wherever it lands) until
    ``passed_on()`` (a count in the gateways' logs) grows: a cancel that reached a session
    another process or node serves. Each cancel must end its query with 57014."""
    import threading

    import psycopg
    before = passed_on()
    for _ in range(tries):
        c = connect()
        errors: list[Exception] = []

        def run() -> None:
            try:
                c.execute("select pg_sleep(30)")
            except psycopg.Error as e:
                errors.append(e)
        t = threading.Thread(target=run)
        t.start()
        time.sleep(0.3)
        c.cancel()
        t.join(10)
        assert not t.is_alive() and isinstance(errors[0], psycopg.errors.QueryCanceled)
        c.close()
        if passed_on() > before:
            return
    raise AssertionError(f"no cancel was passed on in {tries} tries")


def until(check: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    """Poll ``check`` until it answers something true; that answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def api_call(port: int, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """A JSON request to a gateway's control port: (status, answer)."""
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
