"""``bench/run.py --holds``: pgbench -S c=8 through one gateway with and without 100
statements held for review at the same time.

The gateway has a review rule for DELETE whose reviewers nobody is in; HELD client
sessions each send a DELETE (held, nothing runs upstream) and wait; pgbench runs beside
them; then the held statements are cancelled (withdrawn). Rounds alternate none held /
HELD held. Target (issue 12): TPS with the holds >= 0.95 of TPS without.
"""
from __future__ import annotations

import statistics
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

import psycopg

from bench import measure
from bench.services import DBNAME, USER, Hoopd, HoopdVariant, Target

HELD = 100
TARGET = 0.95
RULE = ('[[rules]]\nname = "bench-review"\naction = "review"\nkinds = ["delete"]\nreviewers = ["nobody-decides"]\n'
        'timeout = "30m"\n')


def start(folder: Path, pg_port: int, password: str, stack: ExitStack) -> list[Target]:
    h = Hoopd(folder / "hoopd", pg_port, password, HoopdVariant("hoopd"))
    h.gateway.config.write_text(h.gateway.config.read_text() + RULE)
    stack.callback(h.stop)
    return [h.start()]


def _hold(target: Target, n: int) -> tuple[list[psycopg.Connection], list[threading.Thread]]:
    """``n`` sessions, each with a DELETE held at the gateway (until cancelled)."""
    conns = [psycopg.connect(host="127.0.0.1", port=target.port, user=USER, password=target.password, dbname=DBNAME,
                             sslmode="disable", autocommit=True) for _ in range(n)]

    def wait(c: psycopg.Connection) -> None:
        try:
            c.execute("delete from pgbench_history where false")
        except psycopg.Error:
            pass  # cancelled: the request was withdrawn

    threads = [threading.Thread(target=wait, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    time.sleep(2)  # (all of them sent and held)
    waiting = sum(t.is_alive() for t in threads)
    if waiting != n:
        raise RuntimeError(f"only {waiting} of {n} statements are held (is the review rule in force?)")
    return conns, threads


def run(targets: list[Target], rounds: int, duration: int, say: Callable[[str], None]) -> dict[str, Any]:
    (t,) = targets
    tps: dict[str, list[float]] = {"none held": [], f"{HELD} held": []}
    measure.pgbench(t, "simple", 8, 1)  # warm-up
    for r in range(rounds):
        for held in ((0, HELD) if r % 2 == 0 else (HELD, 0)):
            conns, threads = _hold(t, held) if held else ([], [])
            try:
                got = measure.pgbench(t, "simple", 8, duration).tps
            finally:
                for c in conns:
                    c.cancel()
                for th in threads:
                    th.join(10)
                for c in conns:
                    c.close()
            tps["none held" if not held else f"{HELD} held"].append(got)
            say(f"round {r + 1}/{rounds} {held:3} held: pgbench -S c=8 {got:8.0f} TPS")
    return {k: statistics.median(v) for k, v in tps.items()}


def report(res: dict[str, Any]) -> str:
    ratio = res[f"{HELD} held"] / res["none held"]
    return (f"pgbench -S c=8: {res['none held']:.0f} TPS with none held, {res[f'{HELD} held']:.0f} with {HELD}"
            f" held: {ratio:.2f}x (target >= {TARGET}: {'PASS' if ratio >= TARGET else 'MISS'})")
