"""Write hoopd/policy/pg_builtins.tsv from a real PostgreSQL server's catalog.

Usage: python scripts/gen_pg_builtins.py CONNINFO   (a libpq conninfo for psql, any database)

One line per built-in function name in pg_catalog (oid below FirstNormalObjectId, 16384):
``name<TAB>volatility``, where volatility is the most volatile of its overloads
(v > s > i, as pg_proc.provolatile). tests/test_policy_functions.py checks the file
against the test cluster, so a PostgreSQL upgrade that changes the catalog fails there.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hoopd.policy.functions import BUILTINS_FILE, BUILTINS_QUERY  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} CONNINFO", file=sys.stderr)
        return 2
    psql = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    out = subprocess.run([psql, "-X", "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                          "-d", argv[1], "-c", BUILTINS_QUERY], check=True, capture_output=True, text=True).stdout
    version = subprocess.run([psql, "-X", "-At", "-d", argv[1], "-c", "show server_version"],
                             check=True, capture_output=True, text=True).stdout.strip()
    BUILTINS_FILE.write_text(f"# pg_catalog functions of PostgreSQL {version} (scripts/gen_pg_builtins.py)\n" + out)
    print(f"{BUILTINS_FILE}: {len(out.splitlines())} functions")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
