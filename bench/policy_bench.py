"""Micro benchmark of SQL classification (not a test): per-statement cost in microseconds.

    .venv/bin/python bench/policy_bench.py [--seconds S]

For a few statement shapes it prints the cost of
  uncached   a fresh Classifier every call (normalize + parse_sql_json + json + tree walk)
  same-shape the same statement with a new constant each call (normalize, then a shape hit)
  exact      the same text again (one dict lookup)
  stage      PolicyStage.client_message on a Query body with new constants (decode,
             classify, level and three rules), i.e. what a pgbench -S simple query pays
and, for the record, the raw pglast calls: parse_sql_json (+ json.loads), parse_sql
(Python node objects), fingerprint, normalize.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pglast  # noqa: E402
from pglast import parser as pg  # noqa: E402

from hoopd.identity.base import Identity  # noqa: E402
from hoopd.pgwire import messages as m  # noqa: E402
from hoopd.policy.classify import Classifier  # noqa: E402
from hoopd.policy.decide import Policy  # noqa: E402
from hoopd.policy.rules import Rule  # noqa: E402
from hoopd.policy.stage import PolicyStage  # noqa: E402
from hoopd.session import SessionInfo  # noqa: E402

SHAPES = {
    "pgbench -S": "SELECT abalance FROM pgbench_accounts WHERE aid = {n};",
    "pgbench update": "UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = 42;",
    "psql \\d NAME": "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN "
                     "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname OPERATOR(pg_catalog.~) "
                     "'^(t{n})$' COLLATE pg_catalog.default AND pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3;",
    "CTE + join": "WITH big AS (SELECT customer_id, sum(amount) s FROM orders WHERE amount > {n} GROUP BY 1) "
                  "SELECT c.name, b.s FROM customers c JOIN big b ON b.customer_id = c.id ORDER BY b.s DESC LIMIT 10",
    "SET (exact only)": "SET statement_timeout = {n}",
}


def per_call(fn: Callable[[int], object], seconds: float, rounds: int = 5) -> float:
    """Microseconds per call of fn(i), i counting up: the best of ``rounds`` runs that
    share ``seconds`` (the minimum is the least disturbed by other load on the machine)."""
    counter = itertools.count(1)
    best = float("inf")
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / rounds
        while True:
            for _ in range(100):
                fn(next(counter))
            n += 100
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - start) / n * 1e6)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1)")
    t = ap.parse_args().seconds

    policy = Policy([Rule("no-mass-delete", "deny", without_where=True),
                     Rule("no-secrets", "deny", relations=("*.secret*",)),
                     Rule("review-ddl", "review", kinds=frozenset({"ddl"}))])
    print(f"pglast {pglast.__version__}, PostgreSQL grammar {pg.get_postgresql_version()}; microseconds per call\n")
    print(f"{'statement':18} {'uncached':>9} {'same-shape':>11} {'exact':>7} {'stage':>7}")
    for label, tmpl in SHAPES.items():
        fixed = tmpl.format(n=7)
        warm = Classifier()
        warm.classify(fixed)
        uncached = per_call(lambda i: Classifier().classify(tmpl.format(n=i)), t)
        shape_c = Classifier()
        same_shape = per_call(lambda i: shape_c.classify(tmpl.format(n=i)), t)
        exact = per_call(lambda i: warm.classify(fixed), t)
        stage = PolicyStage(policy, Classifier())
        session = SessionInfo("b", "bench", 0.0, Identity("bench", frozenset({"dev"})), "shop", "read_write",
                              application_name="pgbench")
        stage.session_started(session)
        staged = per_call(lambda i: stage.client_message(session, b"Q", m.query(tmpl.format(n=i))[5:]), t)
        stats = shape_c.stats()
        print(f"{label:18} {uncached:9.1f} {same_shape:11.1f} {exact:7.1f} {staged:7.1f}"
              f"   (same-shape run: {stats['shape_hits']} shape hits, {stats['parses']} parses)")

    print("\nraw pglast calls on the pgbench -S and psql \\d statements:")
    for label in ("pgbench -S", "psql \\d NAME"):
        sql = SHAPES[label].format(n=7)
        rows = {
            "parse_sql_json+loads": per_call(lambda i: json.loads(pg.parse_sql_json(sql)), t),
            "parse_sql (objects)": per_call(lambda i: pg.parse_sql(sql), t),
            "fingerprint": per_call(lambda i: pg.fingerprint(sql), t),
            "normalize": per_call(lambda i: pg.normalize(sql), t),
        }
        print(f"  {label:14} " + "  ".join(f"{k} {v:.1f}" for k, v in rows.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
