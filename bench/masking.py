"""``bench/run.py --masking``: a 1M-row SELECT through hoopd without and with masking rules.

Two gateways in front of one PostgreSQL: one without rules, one whose rules (a column
rule on ``bench_people.email``, email and card detectors) apply to the bench user. Each
runs a 1M-row result of ``bench_people`` that no rule matches (an id and an md5) and one
with two masked columns: ``email`` (the column rule) and ``note`` (a detector finds an
email in it). Reports wall time and hoopd's
CPU (from /proc) per run, and the ratios of the issue's targets: throughput with masking
>= 0.7 of without when every row is masked; rows that match no rule cost < 5% more; and
``pgbench -S`` c=8 through both (the rule applies to the bench user but matches nothing
in pgbench's tables): >= 0.95 of the TPS without rules.
"""
from __future__ import annotations

import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from bench import measure
from bench.services import Hoopd, HoopdVariant, Target

SQL = {"no match": "select g, h from bench_people",
       "all masked": "select g, email, note from bench_people"}
TABLE = ("drop table if exists bench_people; create table bench_people as select g, 'user' || g || '@example.com'"
         " as email, 'write to user' || g || '@example.com' as note, md5(g::text) as h"
         " from generate_series(1, 1000000) g; analyze bench_people")
RULES = ('[[masking.rules]]\nname = "bench-column"\ncolumns = ["bench_people.email"]\nlevels = ["admin"]\n'
         '[[masking.rules]]\nname = "bench"\ndetectors = ["email", "card"]\nlevels = ["admin"]\n')


def start(folder: Path, pg_port: int, password: str, stack: ExitStack) -> list[Target]:
    measure.psql_seconds(Target("direct", pg_port, password), TABLE)
    targets = []
    for name, extra in (("hoopd", ""), ("hoopd-masking", RULES)):
        h = Hoopd(folder / name, pg_port, password, HoopdVariant(name))
        h.gateway.config.write_text(h.gateway.config.read_text() + extra)
        stack.callback(h.stop)
        targets.append(h.start())
    return targets


def run(targets: list[Target], rounds: int, duration: int, say: Callable[[str], None]) -> dict[str, Any]:
    got: dict[str, dict[str, list[tuple[float, float]]]] = {t.name: {k: [] for k in SQL} for t in targets}
    tps: dict[str, list[float]] = {t.name: [] for t in targets}
    for r in range(rounds):
        for t in targets[r % 2:] + targets[:r % 2]:
            assert t.pid is not None
            tps[t.name].append(measure.pgbench(t, "simple", 8, duration).tps)
            say(f"round {r + 1}/{rounds} {t.name:14} pgbench -S c=8 {tps[t.name][-1]:8.0f} TPS")
            for kind, sql in SQL.items():
                cpu0 = measure.cpu_seconds(t.pid)
                sec = measure.psql_seconds(t, sql)
                got[t.name][kind].append((sec, measure.cpu_seconds(t.pid) - cpu0))
                cpu = got[t.name][kind][-1][1]
                say(f"round {r + 1}/{rounds} {t.name:14} {kind:10} {sec:6.2f} s, hoopd CPU {cpu:.2f} s")
    med = statistics.median
    return {name: {**{kind: {"seconds": med(x for x, _ in runs), "cpu": med(y for _, y in runs)}
                      for kind, runs in kinds.items()}, "pgbench_tps": med(tps[name])} for name, kinds in got.items()}


def report(res: dict[str, Any]) -> str:
    plain, masked = res["hoopd"], res["hoopd-masking"]
    lines = [f"{'':14} {'no match':>18} {'all masked':>18}"]
    for name, v in res.items():
        lines.append(f"{name:14} " + " ".join(f"{v[k]['seconds']:7.2f} s ({v[k]['cpu']:5.2f} CPU)" for k in SQL)
                     + f"  pgbench {v['pgbench_tps']:.0f} TPS")
    through = plain["all masked"]["seconds"] / masked["all masked"]["seconds"]
    extra = masked["no match"]["seconds"] / plain["no match"]["seconds"] - 1
    lines.append(f"throughput with every row masked: {through:.2f}x of no masking (target >= 0.70:"
                 f" {'PASS' if through >= 0.7 else 'MISS'})")
    lines.append(f"rows that match no rule: +{extra:.0%} time over no masking (target < 5%:"
                 f" {'PASS' if extra < 0.05 else 'MISS'})")
    bench = masked["pgbench_tps"] / plain["pgbench_tps"]
    lines.append(f"pgbench -S c=8 with a rule that matches nothing: {bench:.2f}x the TPS without rules"
                 f" (target >= 0.95: {'PASS' if bench >= 0.95 else 'MISS'})")
    return "\n".join(lines)
