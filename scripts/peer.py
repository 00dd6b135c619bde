"""Run psycopg's and asyncpg's own test suites against PostgreSQL directly and through
hoopd; list the tests that fail only through the gateway (``make peer``; not part of CI:
~10 minutes).

psycopg's suite is ../shared/peer/psycopg-tests-*.tar.gz (or --tarball); asyncpg's comes
from its sdist on the package registry (the tests are not in the wheel). Both run in a
venv of their own (--venv, created on first use). Every run uses a superuser: directly,
and through a connection named ``postgres`` whose held credential is that superuser,
the gateway user mapped to admin, login limits off (the suites make deliberate bad
logins), and a ``"*"`` connection for the databases the suites create.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoopd.pgwire.scram import make_verifier  # noqa: E402
from tests.gateway import Gateway, connection_toml  # noqa: E402
from tests.pgcluster import SUPERUSER, Cluster, quote_literal  # noqa: E402

ASYNCPG = "asyncpg==0.32.0"
PACKAGES = ["psycopg[binary]==3.3.5", "psycopg-pool", "pytest", "anyio", "pproxy", "dnspython", "Faker", "numpy",
            "pytest-cov", "mypy", ASYNCPG, "distro"]
_UNITTEST_LINE = re.compile(r"^(test\w*) \(([\w.]+)\)(?:\n.*?)? \.\.\. (ok|FAIL|ERROR|skipped.*|expected failure"
                            r"|unexpected success)$", re.M)
USER = "peer"


def say(msg: str) -> None:
    print(f"peer: {msg}", flush=True)


def suite_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        say(f"creating {venv} for the suite")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES], check=True)
    return py


def run_suite(py: Path, suite: Path, dsn: str, out: Path, extra: list[str]) -> tuple[set[str], int, float]:
    """(failing test ids, tests run, seconds) of one run, from its JUnit XML."""
    t0 = time.monotonic()
    cmd = [str(py), "-m", "pytest", "tests", "--test-dsn", dsn, "-m", "not slow", "--ignore", "tests/pool",
           "--ignore", "tests/crdb", "-p", "no:randomly", "-o", f"cache_dir={suite / '.cache'}", "-q",
           f"--junitxml={out}", *extra]
    proc = subprocess.run(cmd, cwd=suite, capture_output=True, text=True)
    seconds = time.monotonic() - t0
    if not out.exists():
        raise SystemExit(f"peer: the suite did not run ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    failed, total = set(), 0
    for case in ET.parse(out).iter("testcase"):
        total += 1
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(f"{case.get('classname')}::{case.get('name')}")
    return failed, total, seconds


def asyncpg_tests(py: Path, into: Path) -> Path:
    """asyncpg's tests/ from its sdist, alone in ``into`` (beside the sdist's sources the
    uncompiled package would shadow the installed one)."""
    subprocess.run([str(py), "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                    "--no-binary", ":all:", ASYNCPG, "-d", str(into)], check=True)
    (sdist,) = into.glob("asyncpg-*.tar.gz")
    with tarfile.open(sdist) as t:
        t.extractall(into, filter="data")
    suite = into / "asyncpg-suite"
    suite.mkdir()
    shutil.copytree(next(into.glob("asyncpg-*/tests")), suite / "tests")
    return suite


def run_asyncpg(py: Path, suite: Path, port: int, user: str, password: str, log: Path) -> tuple[set[str], int, float]:
    """(failing test ids, tests run, seconds) of one run of asyncpg's suite (unittest);
    its output goes to ``log``."""
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user, "PGPASSWORD": password,
           "PGDATABASE": "postgres", "PGSSLMODE": "disable"}
    t0 = time.monotonic()
    proc = subprocess.run([str(py), "-m", "unittest", "discover", "-v", "-s", "tests", "-t", "."], cwd=suite, env=env,
                          capture_output=True, text=True, timeout=3600)
    seconds = time.monotonic() - t0
    log.write_text(proc.stderr)
    results = _UNITTEST_LINE.findall(proc.stderr)
    if not results:
        raise SystemExit(f"peer: asyncpg's suite did not run ({proc.returncode}):\n{proc.stderr[-3000:]}")
    failed = {test for _, test, outcome in results if outcome in ("FAIL", "ERROR", "unexpected success")}
    return failed, len(results), seconds


def compare(name: str, direct: tuple[set[str], int, float], via: tuple[set[str], int, float]) -> list[str]:
    say(f"{name} directly: {len(direct[0])} failed of {direct[1]} in {direct[2]:.0f} s;"
        f" through hoopd: {len(via[0])} failed of {via[1]} in {via[2]:.0f} s")
    only = sorted(via[0] - direct[0])
    say(f"{name}: {len(only)} fail only through hoopd" + (":" if only else ""))
    for t in only:
        print(f"  {t}")
    return only


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/peer.py", description=__doc__.split("\n\n")[0])
    found = sorted((ROOT.parent / "shared" / "peer").glob("psycopg-tests-*.tar.gz"))
    p.add_argument("--tarball", type=Path, default=found[-1] if found else None, help="psycopg's tests")
    p.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "hoopd-peer-venv")
    p.add_argument("--suite", choices=("psycopg", "asyncpg", "all"), default="all")
    p.add_argument("pytest_args", nargs="*", help="more pytest arguments for psycopg's runs (e.g. -k copy)")
    args = p.parse_args(argv)
    if args.tarball is None or not args.tarball.exists():
        p.error("no psycopg test tarball: give --tarball FILE")
    py = suite_venv(args.venv)
    base = Path(tempfile.mkdtemp(prefix="hoopd-peer-"))
    os.chmod(base, 0o711)  # the postgres OS user must reach its folder inside
    cluster = Cluster(base / "pg")
    gw: Gateway | None = None
    try:
        with tarfile.open(args.tarball) as t:
            t.extractall(base / "suite", filter="data")
        suite = base / "suite"
        password = secrets.token_urlsafe(18)
        cluster.init(["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"],
                     {"max_connections": "200", "max_prepared_transactions": "10"})
        cluster.start()
        cluster.psql(f"ALTER ROLE {SUPERUSER} PASSWORD {quote_literal(password)};")
        body = ('[identity]\nmax_failed_logins_per_user = 0\nmax_failed_logins_per_address = 0\n'
                'max_failed_logins_per_user_total = 0\n[logging]\nlevel = "warn"\n'
                f'[[users]]\nname = "{USER}"\npassword_hash = "{make_verifier(password)}"\ngroups = ["dba"]\n'
                + connection_toml("postgres", "127.0.0.1", cluster.port, "postgres", SUPERUSER, password)
                # the databases the suites create, like pgbouncer's "*"
                + f'[connections."*"]\nhost = "127.0.0.1"\nport = {cluster.port}\ntls = "disable"\n'
                f'[connections."*".credentials.default]\nuser = "{SUPERUSER}"\npassword = "{password}"\n'
                '[connections."*".access]\ndba = "admin"\n')
        (base / "gw").mkdir(mode=0o700)
        gw = Gateway(base / "gw", body).start()
        dsn = "host=127.0.0.1 dbname=postgres sslmode=disable password=" + password
        if args.suite in ("psycopg", "all"):
            say("psycopg's suite directly against PostgreSQL 15, then through hoopd")
            direct = run_suite(py, suite, f"{dsn} port={cluster.port} user={SUPERUSER}", base / "direct.xml",
                               args.pytest_args)
            via = run_suite(py, suite, f"{dsn} port={gw.port} user={USER}", base / "hoopd.xml", args.pytest_args)
            compare("psycopg", direct, via)
        if args.suite in ("asyncpg", "all"):
            apg = asyncpg_tests(py, base / "asyncpg")
            say("asyncpg's suite directly against PostgreSQL 15, then through hoopd")
            logs = Path(tempfile.gettempdir())
            direct = run_asyncpg(py, apg, cluster.port, SUPERUSER, password, logs / "hoopd-peer-asyncpg-direct.log")
            via = run_asyncpg(py, apg, gw.port, USER, password, logs / "hoopd-peer-asyncpg-hoopd.log")
            compare("asyncpg", direct, via)
            say(f"their output: {logs}/hoopd-peer-asyncpg-{{direct,hoopd}}.log")
        if "Traceback" in gw.log():
            say("the gateway logged a traceback:\n" + gw.log()[-4000:])
            return 1
        return 0
    finally:
        if gw is not None:
            gw.stop()
        cluster.stop("fast")
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
