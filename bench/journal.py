"""``bench/run.py --journal``: what recording costs (issue 13's recording targets).

Four gateways in front of one PostgreSQL, policy on in each: no journal, a journal with
fsync "interval", with fsync "always", and with every row of every result recorded
(``max_result_rows = -1``). ``pgbench -S`` c=8 simple through the first three, and a
1M-row SELECT through the first and the last, the targets alternated round-robin. Each
run reports TPS (or wall time) and the gateway's CPU per transaction (from /proc).

Targets: c=8 with the journal (interval) >= 0.85 of no journal; fsync always >= 0.5 of
interval; the 1M-row SELECT with all rows recorded <= 1.5x the time without a journal;
gateway CPU per transaction with policy + journal <= 90 us at c=8 simple.
"""
from __future__ import annotations

import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from bench import measure
from bench.services import Hoopd, HoopdVariant, Target

SELECT = "select g, md5(g::text) from generate_series(1, 1000000) g"
VARIANTS = (HoopdVariant("off"), HoopdVariant("interval", journal={"fsync": "interval"}),
            HoopdVariant("always", journal={"fsync": "always"}),
            HoopdVariant("all-rows", journal={"fsync": "interval", "max_result_rows": -1}))
PGBENCH = ("off", "interval", "always")
STREAM = ("off", "all-rows")


def start(folder: Path, pg_port: int, password: str, stack: ExitStack) -> list[Target]:
    out = []
    for v in VARIANTS:
        h = Hoopd(folder / v.name, pg_port, password, v)
        stack.callback(h.stop)
        out.append(h.start())
    return out


def run(targets: list[Target], rounds: int, duration: int, say: Callable[[str], None]) -> dict[str, Any]:
    by = {t.name: t for t in targets}
    tps: dict[str, list[float]] = {n: [] for n in PGBENCH}
    cpu: dict[str, list[float]] = {n: [] for n in PGBENCH}
    secs: dict[str, list[float]] = {n: [] for n in STREAM}
    scpu: dict[str, list[float]] = {n: [] for n in STREAM}
    for n in PGBENCH:
        measure.pgbench(by[n], "simple", 8, 1)  # warm-up
    for r in range(rounds):
        for t in measure.rotated([by[n] for n in PGBENCH], r):
            res, us = measure.pgbench_cpu(t, "simple", 8, duration)
            assert us is not None
            tps[t.name].append(res.tps)
            cpu[t.name].append(us)
            say(f"round {r + 1}/{rounds} pgbench -S c=8 {t.name:9} {res.tps:8.0f} TPS, CPU {us:.0f} us/txn")
        for t in measure.rotated([by[n] for n in STREAM], r):
            assert t.pid is not None
            c0 = measure.tree_cpu_seconds(t.pid)
            sec = measure.psql_seconds(t, SELECT)
            used = measure.tree_cpu_seconds(t.pid) - c0
            secs[t.name].append(sec)
            scpu[t.name].append(used)
            say(f"round {r + 1}/{rounds} 1M-row SELECT {t.name:9} {sec:.3f} s, CPU {used:.2f} s")
    med = statistics.median
    return {"pgbench_c8_simple": {n: {"tps": med(tps[n]), "cpu_us_per_txn": med(cpu[n])} for n in PGBENCH},
            "select_1m": {n: {"seconds": med(secs[n]), "cpu_seconds": med(scpu[n])} for n in STREAM}}


def checks(res: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """(what, measured, target, passed) for each recording target."""
    p, s = res["pgbench_c8_simple"], res["select_1m"]
    jnl = p["interval"]["tps"] / p["off"]["tps"]
    always = p["always"]["tps"] / p["interval"]["tps"]
    rows = s["all-rows"]["seconds"] / s["off"]["seconds"]
    us = p["interval"]["cpu_us_per_txn"]
    return [("c=8 simple, journal (interval) / no journal", jnl, ">= 0.85", jnl >= 0.85),
            ("c=8 simple, fsync always / interval", always, ">= 0.5", always >= 0.5),
            ("1M-row SELECT, all rows recorded / no journal", rows, "<= 1.5", rows <= 1.5),
            ("gateway CPU us/txn, policy + journal, c=8 simple", us, "<= 90", us <= 90)]


def report(res: dict[str, Any]) -> str:
    lines = [f"pgbench -S c=8 simple {n:9} {v['tps']:8.0f} TPS  CPU {v['cpu_us_per_txn']:5.0f} us/txn"
             for n, v in res["pgbench_c8_simple"].items()]
    lines += [f"1M-row SELECT        {n:9} {v['seconds']:8.3f} s    CPU {v['cpu_seconds']:5.2f} s"
              for n, v in res["select_1m"].items()]
    lines += [f"{what}: {got:.2f} (target {target}: {'PASS' if ok else 'MISS'})" for what, got, target, ok in checks(res)]
    return "\n".join(lines)
