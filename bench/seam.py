"""``bench/run.py --seam REV``: hoopd's CPU per transaction, this checkout against REV, in one run.

The stage seam's target (issue 10): with the policy and the journal on, ``pgbench -S``
c=8 in the simple protocol must cost at least 25% less hoopd CPU per transaction than
at REV. Both checkouts run side by side (REV from a git worktree) in front of the same
PostgreSQL, with the policy off as well (the relay alone), the order rotated each round.
CPU time comes from /proc (steadier than TPS on a small shared machine).
"""
from __future__ import annotations

import statistics
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from bench import measure
from bench.services import Hoopd, HoopdVariant, Target

TARGET = 0.75  # this checkout's CPU/txn with policy + journal, as a fraction of REV's


def variants(rev: str, root: Path) -> list[HoopdVariant]:
    jnl = {"fsync": "interval"}
    return [HoopdVariant("hoopd-jnl", journal=jnl), HoopdVariant(f"hoopd-jnl@{rev}", journal=jnl, root=root),
            HoopdVariant("hoopd-relay", policy=False), HoopdVariant(f"hoopd-relay@{rev}", policy=False, root=root)]


def worktree(repo: Path, rev: str, where: Path, stack: ExitStack) -> Path:
    """A detached checkout of ``rev`` at ``where``, removed when ``stack`` unwinds."""
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", "-q", str(where), rev], check=True)
    stack.callback(lambda: subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(where)],
                                          check=False))
    return where


def run(targets: list[Target], rounds: int, duration: int, say: Callable[[str], None]) -> dict[str, Any]:
    """``rounds`` x pgbench -S c=8 simple per target; medians of TPS and CPU us/txn."""
    tps: dict[str, list[float]] = {t.name: [] for t in targets}
    cpu: dict[str, list[float]] = {t.name: [] for t in targets}
    for t in targets:
        measure.pgbench(t, "simple", 8, 1)  # warm-up
    for r in range(rounds):
        for t in targets[r % len(targets):] + targets[:r % len(targets)]:
            res, used = measure.pgbench_cpu(t, "simple", 8, duration)
            assert used is not None
            tps[t.name].append(res.tps)
            cpu[t.name].append(used)
            say(f"round {r + 1}/{rounds} {t.name:24} {res.tps:8.0f} TPS, CPU {used:.0f} us/txn")
    return {name: {"tps": statistics.median(tps[name]), "cpu_us_per_txn": statistics.median(cpu[name]),
                   "cpu_runs": [round(x, 1) for x in cpu[name]]} for name in tps}


def report(res: dict[str, Any], rev: str) -> tuple[str, bool]:
    """A table and the verdict: policy + journal CPU/txn here vs at ``rev``."""
    lines = [f"{'target':24} {'TPS':>9} {'CPU us/txn':>11}"]
    lines += [f"{name:24} {v['tps']:9.0f} {v['cpu_us_per_txn']:11.1f}" for name, v in res.items()]
    here, there = res["hoopd-jnl"], res[f"hoopd-jnl@{rev}"]
    ratio = here["cpu_us_per_txn"] / there["cpu_us_per_txn"]
    ok = ratio <= TARGET
    verdict = "PASS" if ok else "MISS"
    lines.append(f"policy + journal CPU/txn: {ratio:.2f}x of {rev} (target <= {TARGET:.2f}x: {verdict});"
                 f" TPS {here['tps'] / there['tps']:.2f}x")
    relay, relay_base = res["hoopd-relay"], res[f"hoopd-relay@{rev}"]
    lines.append(f"relay alone (policy off) CPU/txn: {relay['cpu_us_per_txn'] / relay_base['cpu_us_per_txn']:.2f}x"
                 f" of {rev}; TPS {relay['tps'] / relay_base['tps']:.2f}x")
    return "\n".join(lines), ok


def start(folder: Path, pg_port: int, password: str, vs: list[HoopdVariant], stack: ExitStack,
          say: Callable[[str], None]) -> list[Target]:
    targets = []
    for v in vs:
        h = Hoopd(folder / v.name.replace("@", "-at-"), pg_port, password, v)
        stack.callback(h.stop)
        targets.append(h.start())
        say(f"{v.name} on {targets[-1].port}, pid {targets[-1].pid}" + (f" (from {v.root})" if v.root else ""))
    return targets
