"""Throwaway PostgreSQL 15 clusters made by ``initdb``, for the tests and ``make run``.

``Cluster`` is the generic part (a data directory, a unix socket beside it, start/stop,
SQL as the superuser over the socket). ``TestCluster`` adds what the integration tests
share: TLS for ``localhost``, one login role per upstream auth method, and the ``shop``
demo database. When we run as root, the server runs as the ``postgres`` OS user
(initdb refuses root).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.certs import write_self_signed

SUPERUSER = "postgres"
_DEBIAN_BINDIR = Path("/usr/lib/postgresql/15/bin")


def pg_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres; fails loudly when there is none."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    if (_DEBIAN_BINDIR / "initdb").exists():
        return _DEBIAN_BINDIR
    raise RuntimeError("PostgreSQL's initdb was not found in PATH or /usr/lib/postgresql/15/bin: "
                       "run scripts/install-deps.sh (make test does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *cmd] if os.geteuid() == 0 else cmd


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SUPERUSER, SUPERUSER)
        for sub in path.rglob("*"):
            shutil.chown(sub, SUPERUSER, SUPERUSER)


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def conninfo(parts: dict[str, str]) -> str:
    """A libpq conninfo string with every value quoted."""
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


class Cluster:
    """A cluster in ``root/data`` with its socket and log in ``root``; TCP on 127.0.0.1."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.port: int | None = None
        self.bindir = pg_bindir()
        self.log_path = self.root / "postgres.log"

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self, hba: list[str], settings: dict[str, str] | None = None) -> None:
        """initdb, then our postgresql.conf settings and pg_hba.conf (``hba``: its lines)."""
        self.root.mkdir(parents=True, exist_ok=True)
        _give_to_server_user(self.root)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8",
                   "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                   "--no-instructions"])
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": quote_literal(str(self.root)),
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "shared_buffers": "'16MB'", "max_connections": "200",
            "password_encryption": "'scram-sha-256'",
            **(settings or {}),
        }
        with open(self.data / "postgresql.conf", "a") as f:
            f.write("\n# hoopd test settings\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
        (self.data / "pg_hba.conf").write_text("".join(line + "\n" for line in hba))

    def start(self, port: int | None = None) -> None:
        """Start on ``port`` (a free one by default) and wait until it accepts connections."""
        self.port = port or free_port()
        try:
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path),
                       "-w", "-t", "60", "-o", f"-p {self.port}", "start"])
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n--- {self.log_path} ---\n{self.log_tail()}") from None

    def is_running(self) -> bool:
        status = subprocess.run(_as_server_user([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]),
                                capture_output=True, cwd=self.root)
        return status.returncode == 0

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server if it runs (also one left over by an earlier process)."""
        if self.initialized and self.is_running():
            self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])
        self.port = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run SQL (one or more statements) as the superuser over the unix socket; its output."""
        psql = self.bindir / "psql" if (self.bindir / "psql").exists() else "psql"
        proc = subprocess.run([str(psql), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", str(self.root),
                               "-p", str(self.port), "-U", SUPERUSER, "-d", dbname, "-f", "-"],
                              input=sql, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        """A libpq conninfo for the superuser over the unix socket."""
        return conninfo({"host": str(self.root), "port": str(self.port), "user": SUPERUSER, "dbname": dbname})

    def _run(self, cmd: list[str]) -> None:
        proc = subprocess.run(_as_server_user(cmd), capture_output=True, text=True, cwd=self.root)
        if proc.returncode:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()}")


def _password() -> str:
    return secrets.token_urlsafe(12)


_PREFIX = "hoopd-pg-"
_OWNER = "owner.pid"  # the test process a temporary cluster belongs to


@dataclass(frozen=True)
class Role:
    """A login role of the test cluster and the pg_hba method it authenticates with over TCP."""

    name: str
    password: str = field(repr=False)
    method: str


SHOP_SQL = """
CREATE TABLE customers (
    id integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    name text NOT NULL,
    email text NOT NULL UNIQUE,
    phone text
);
CREATE TABLE orders (
    id integer PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
    customer_id integer NOT NULL REFERENCES customers,
    item text NOT NULL,
    amount numeric(10, 2) NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT '2024-01-15 10:00:00+00'
);
INSERT INTO customers (name, email, phone) VALUES
    ('Ada Lovelace', 'ada@example.com', '+44 20 7946 0001'),
    ('Alan Turing', 'alan@example.com', '+44 20 7946 0002'),
    ('Grace Hopper', 'grace@example.com', '+1 202 555 0143');
INSERT INTO orders (customer_id, item, amount) VALUES
    (1, 'analytical engine', 1842.00),
    (2, 'bombe', 1939.50),
    (3, 'compiler', 1952.25),
    (3, 'nanosecond wire', 0.30);
"""
"""The ``shop`` demo schema: 3 customers (name, email, phone) and 4 orders."""


class TestCluster(Cluster):
    """The integration tests' cluster: roles per auth method, TLS, the shop database.

    Attributes: ``app_scram``, ``app_md5``, ``app_clear``, ``app_trust`` (Role), ``ca_file``
    (the CA that signed the server cert for ``localhost`` / 127.0.0.1), ``port``.
    ``app_scram`` owns ``shop``; the other roles may SELECT from its tables.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.app_scram = Role("app_scram", _password(), "scram-sha-256")
        self.app_md5 = Role("app_md5", _password(), "md5")
        self.app_clear = Role("app_clear", _password(), "password")
        self.app_trust = Role("app_trust", _password(), "trust")
        self.ca_file = self.root / "ca.crt"

    @property
    def roles(self) -> tuple[Role, ...]:
        return (self.app_scram, self.app_md5, self.app_clear, self.app_trust)

    @classmethod
    def create(cls) -> "TestCluster":
        """A started cluster in a new temporary folder (``destroy()`` removes both).

        Clusters left behind by test runs that were killed are removed first.
        """
        cls.remove_orphans()
        root = Path(tempfile.mkdtemp(prefix=_PREFIX))
        (root / _OWNER).write_text(str(os.getpid()))
        cluster = cls(root)
        try:
            cluster.setup()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @classmethod
    def remove_orphans(cls) -> None:
        """Stop and remove the temporary clusters whose owning process is gone."""
        for root in Path(tempfile.gettempdir()).glob(_PREFIX + "*"):
            try:
                os.kill(int((root / _OWNER).read_text()), 0)
            except ProcessLookupError:
                cls(root).destroy()
            except (OSError, ValueError):
                pass  # owner alive but not ours, or still being created

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        cert, key = write_self_signed(self.root, "server")
        hba = ["local all all trust"]
        hba += [f"host all {r.name} 127.0.0.1/32 {r.method}" for r in self.roles if r.method != "scram-sha-256"]
        hba += ["host all all 127.0.0.1/32 scram-sha-256"]
        self.init(hba, {"ssl": "on", "ssl_cert_file": quote_literal(str(cert)),
                        "ssl_key_file": quote_literal(str(key))})
        self.start()
        self.psql(self._roles_sql())
        self.psql(f"SET ROLE {self.app_scram.name};\n{SHOP_SQL}\nRESET ROLE;\n"
                  f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO "
                  f"{', '.join(r.name for r in self.roles[1:])};", dbname="shop")

    def _roles_sql(self) -> str:
        lines = []
        for r in self.roles:
            enc = "md5" if r.method == "md5" else "scram-sha-256"
            lines.append(f"SET password_encryption = '{enc}';\n"
                         f"CREATE ROLE {r.name} LOGIN PASSWORD {quote_literal(r.password)};")
        lines.append(f"CREATE DATABASE shop OWNER {self.app_scram.name};")
        return "\n".join(lines)

    def dsn(self, role: Role, dbname: str = "shop", **kw: str) -> str:
        """A libpq conninfo for ``role`` over TCP (sslmode=disable unless given)."""
        parts = {"host": "127.0.0.1", "port": str(self.port), "dbname": dbname, "user": role.name,
                 "password": role.password, "sslmode": "disable", "connect_timeout": "10", **kw}
        return conninfo(parts)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
