"""``bench/run.py --workers``: how hoopd scales with ``[gateway] workers`` (issue 13).

Direct PostgreSQL, hoopd with workers = 1 and = 2 (policy on, no journal) and pgbouncer
(session pooling) in one run: ``pgbench -S`` simple at c=8 and c=32, the targets
rotated each round. Reports TPS and, for the proxies, CPU per transaction (hoopd: the
supervisor and its workers together). This machine has 2 cores shared with PostgreSQL
and pgbench, so the model in bench/README.md infers from CPU per transaction what more
cores would give; it does not measure it.
"""
from __future__ import annotations

import statistics
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from bench import measure
from bench.services import Hoopd, HoopdVariant, PgBouncer, Target, ensure_pgbouncer

CLIENTS = (8, 32)
TARGETS = ("direct", "workers-1", "workers-2", "pgbouncer")


def start(folder: Path, pg_port: int, password: str, stack: ExitStack) -> list[Target]:
    out = [Target("direct", pg_port, password)]
    for n in (1, 2):
        h = Hoopd(folder / f"w{n}", pg_port, password, HoopdVariant(f"workers-{n}", gateway={"workers": n}))
        stack.callback(h.stop)
        out.append(h.start())
    bouncer = PgBouncer(folder / "pgbouncer", pg_port, password)
    stack.callback(bouncer.stop)
    bouncer.start(ensure_pgbouncer())
    assert bouncer.proc is not None
    out.append(Target("pgbouncer", bouncer.port, password, bouncer.proc.pid))
    return out


def run(targets: list[Target], rounds: int, duration: int, say: Callable[[str], None]) -> dict[str, Any]:
    tps: dict[tuple[int, str], list[float]] = {(c, t.name): [] for c in CLIENTS for t in targets}
    cpu: dict[tuple[int, str], list[float]] = {(c, t.name): [] for c in CLIENTS for t in targets if t.pid}
    for t in targets:
        measure.pgbench(t, "simple", 8, 1)  # warm-up (the workers of a gateway are up after it)
    for r in range(rounds):
        for c in CLIENTS:
            for t in measure.rotated(targets, r):
                res, us = measure.pgbench_cpu(t, "simple", c, duration)
                extra = ""
                tps[(c, t.name)].append(res.tps)
                if us is not None:
                    cpu[(c, t.name)].append(us)
                    extra = f", CPU {us:.0f} us/txn"
                say(f"round {r + 1}/{rounds} pgbench -S c={c:<2} {t.name:10} {res.tps:8.0f} TPS{extra}")
    med = statistics.median
    return {f"c{c}": {name: {"tps": med(tps[(c, name)]),
                             **({"cpu_us_per_txn": med(cpu[(c, name)])} if (c, name) in cpu else {})}
                      for name in TARGETS}
            for c in CLIENTS}


def report(res: dict[str, Any]) -> str:
    lines = []
    for key, row in res.items():
        direct = row["direct"]["tps"]
        for name, v in row.items():
            cpu = f"  CPU {v['cpu_us_per_txn']:5.0f} us/txn" if "cpu_us_per_txn" in v else ""
            lines.append(f"pgbench -S {key:3} {name:10} {v['tps']:8.0f} TPS  {v['tps'] / direct:4.2f}x direct{cpu}")
        gain = row["workers-2"]["tps"] / row["workers-1"]["tps"]
        lines.append(f"pgbench -S {key:3} workers 2 / workers 1: {gain:.2f}x")
    return "\n".join(lines)
