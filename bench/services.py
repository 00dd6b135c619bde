"""The processes a bench run measures: a throwaway PostgreSQL 15 cluster with pgbench data,
hoopd (``twistd -n hoopd``, in several configurations) and pgbouncer in front of it.

Every target is reached over TCP on 127.0.0.1 as the role ``bench`` with SCRAM-SHA-256,
so the targets differ only in what sits between the client and the server.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hoopd.pgwire.scram import make_verifier
from tests.gateway import Gateway, connection_toml
from tests.pgcluster import SUPERUSER, Cluster, free_port, quote_literal

ROOT = Path(__file__).resolve().parent.parent
USER = DBNAME = "bench"


@dataclass(frozen=True)
class Target:
    """Where a client connects: the same role and database everywhere, a different port."""

    name: str
    port: int
    password: str = field(repr=False)
    pid: int | None = None  # the proxy process in between (its CPU time is measured), None for direct

    def env(self) -> dict[str, str]:
        """The environment for pgbench/psql (password out of argv)."""
        return {**os.environ, "PGPASSWORD": self.password, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}

    def pg_args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER]


def new_password() -> str:
    return secrets.token_urlsafe(18)


def start_postgres(cluster: Cluster, password: str, scale: int) -> None:
    """initdb, start, create role and database ``bench``, ``pgbench -i -s scale`` as that role.

    The caller owns stopping it (``cluster.stop()``), also when this raises part-way."""
    cluster.init(["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"],
                 {"shared_buffers": "'256MB'", "max_connections": "150"})
    cluster.start()
    cluster.psql(f"CREATE ROLE {USER} LOGIN PASSWORD {quote_literal(password)};\n"
                 f"CREATE DATABASE {DBNAME} OWNER {USER};")
    direct = Target("direct", cluster.port, password)  # type: ignore[arg-type]
    proc = subprocess.run(["pgbench", "-i", "-s", str(scale), "-q", *direct.pg_args(), DBNAME],
                          env=direct.env(), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pgbench -i failed ({proc.returncode}): {proc.stderr.strip()}")


@dataclass(frozen=True)
class HoopdVariant:
    """One hoopd configuration a bench run starts, and what it joins.

    ``journal``: the ``[journal]`` keys besides ``dir`` (None: no journal); ``configs``:
    the pgbench configs it joins (None: all); ``streams``: whether it joins the 1M-row
    streams; ``root``: another checkout to run hoopd from (a baseline; None: this one).
    Every variant gets the same user and connection, so they differ only in this."""

    name: str
    policy: bool = True
    journal: dict[str, str | int] | None = None
    configs: tuple[str, ...] | None = None
    streams: bool = True
    root: Path | None = None
    gateway: dict[str, int] | None = None  # [gateway] keys (e.g. workers)


class Hoopd:
    """A hoopd variant's gateway process (``twistd -n hoopd``), its control port (``/metrics``
    open, scraped between measurements) and its journal folder; no TLS."""

    def __init__(self, folder: Path, pg_port: int, password: str, variant: HoopdVariant) -> None:
        folder.mkdir(mode=0o700)
        self.variant = variant
        self.http_port = free_port()
        self.journal_dir = folder / "journal" if variant.journal is not None else None
        journal = "" if self.journal_dir is None else (
            f'[journal]\ndir = "{self.journal_dir}"\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in variant.journal.items()))  # type: ignore[union-attr]
        body = (f'http = "tcp:{self.http_port}:interface=127.0.0.1"\n'  # still in the [listen] Gateway writes
                '[control]\nopen_metrics = true\n[logging]\nlevel = "warn"\n'
                + ("" if variant.policy else "[policy]\nenabled = false\n") + journal
                + f'[[users]]\nname = "{USER}"\npassword_hash = "{make_verifier(password)}"\ngroups = ["dba"]\n'
                + connection_toml(DBNAME, "127.0.0.1", pg_port, DBNAME, USER, password))
        self.gateway = Gateway(folder, body, gateway="".join(f"{k} = {json.dumps(v)}\n"
                                                             for k, v in (variant.gateway or {}).items()))
        self.password = password

    @property
    def name(self) -> str:
        return self.variant.name

    def start(self) -> Target:
        root = self.variant.root
        self.gateway.start(None if root is None else {**os.environ, "PYTHONPATH": str(root)})
        assert self.gateway.proc is not None
        return Target(self.name, self.gateway.port, self.password, self.gateway.proc.pid)

    def stop(self) -> None:
        self.gateway.stop()

    def policy_cache(self) -> Counter[str]:
        """hoopd_policy_cache_total by result (exact_hit, shape_hit, miss), from /metrics."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        out: Counter[str] = Counter()
        for fam in text_string_to_metric_families(text):
            if fam.name == "hoopd_policy_cache":
                for s in fam.samples:
                    if s.name == "hoopd_policy_cache_total":
                        out[s.labels["result"]] = int(s.value)
        return out

    def journal_bytes(self) -> int:
        """The size of every file in the journal folder (0 without a journal)."""
        if self.journal_dir is None or not self.journal_dir.exists():
            return 0
        return sum(p.stat().st_size for p in self.journal_dir.rglob("*") if p.is_file())


def ensure_pgbouncer() -> str:
    """The pgbouncer binary; installs the Debian package via the project's script if missing."""
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if found:
        return found
    subprocess.run(["bash", str(ROOT / "scripts" / "install-deps.sh")], check=True)  # never starts services
    found = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(found):
        raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer)")
    return found


class PgBouncer:
    """Our own pgbouncer (session pooling, SCRAM both ways) from a generated ini in ``folder``.

    Session pooling: pgbouncer 1.18 cannot keep ``pgbench -M prepared`` statements in
    transaction mode, and session mode is the 1:1 shape hoopd has."""

    def __init__(self, folder: Path, pg_port: int, password: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.log_path = folder / "pgbouncer.log"
        self.proc: subprocess.Popen | None = None
        folder.mkdir(mode=0o700)
        (folder / "userlist.txt").write_text(f'"{USER}" "{password}"\n')
        (folder / "pgbouncer.ini").write_text(
            f"[databases]\n{DBNAME} = host=127.0.0.1 port={pg_port} dbname={DBNAME}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = scram-sha-256\nauth_file = {folder / 'userlist.txt'}\n"
            "pool_mode = session\nmax_client_conn = 100\ndefault_pool_size = 40\n"
            f"logfile = {self.log_path}\nlog_connections = 0\nlog_disconnections = 0\n")
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            for p in (folder, *folder.iterdir()):
                shutil.chown(p, SUPERUSER, SUPERUSER)

    def start(self, binary: str) -> "PgBouncer":
        as_user = {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if os.geteuid() == 0 else {}
        # own process group: a Ctrl-C reaches us, and we stop it (SIGINT would make it wait for clients)
        self.proc = subprocess.Popen([binary, str(self.folder / "pgbouncer.ini")], cwd=self.folder,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     process_group=0, **as_user)
        wait_listening(self.port, self.proc, "pgbouncer", self.log_path)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_listening(port: int, proc: subprocess.Popen, what: str, log_path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{_tail(log_path)}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}:\n{_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"
