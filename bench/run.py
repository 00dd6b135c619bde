"""hoopd benchmark: direct PostgreSQL vs hoopd vs pgbouncer, in one run, on one machine.

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--duration S]
    .venv/bin/python bench/run.py --profile DIR [--duration S]   # hoopd hot spots (py-spy)
    .venv/bin/python bench/run.py --seam REV [--rounds N]        # CPU/txn of this checkout vs REV
    .venv/bin/python bench/run.py --masking [--rounds N]         # a 1M-row result with and without masking
    .venv/bin/python bench/run.py --holds [--rounds N]           # pgbench beside 100 statements held for review
    .venv/bin/python bench/run.py --journal [--rounds N]         # what recording costs (fsync modes, all rows)
    .venv/bin/python bench/run.py --workers [--rounds N]         # workers = 1 and 2 at c=8 and c=32

Makes a throwaway PostgreSQL 15 cluster (``pgbench -i -s 10``), starts hoopd in the
configurations of VARIANTS (no TLS, a local SCRAM user: as configured by default, without
the policy stage, and with a journal in three ways) and pgbouncer (session pooling, SCRAM)
in front of it: ``pgbench -S`` at c=1 and c=8, simple and prepared, the targets alternated
round-robin so machine noise hits all of them; a 1M-row result through psql (COPY and
SELECT); a slow raw-socket client reading 1 GiB through hoopd while its RSS is sampled.
Prints a table with PASS/MISS against the targets and writes bench/results/latest.json.
Everything it started is stopped and its temporary folder removed on exit, Ctrl-C too.
Exit status: 0 when it ran (a missed target shows as MISS), 1 when one is missed and
``--strict`` is given, 2 on error, 130 when interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import holds, journal, masking, measure, report, seam, workers  # noqa: E402
from bench.report import CONFIGS, STREAMS, config_key  # noqa: E402
from bench.services import (Hoopd, HoopdVariant, PgBouncer, Target, ensure_pgbouncer, new_password,  # noqa: E402
                            start_postgres, version_of)
from bench.profile import profile_hoopd  # noqa: E402
from tests.pgcluster import Cluster  # noqa: E402

STREAM_SQL = {
    "copy": "copy (select g, md5(g::text) from generate_series(1, 1000000) g) to stdout",
    "select": "select g, md5(g::text) from generate_series(1, 1000000) g",
}
MiB = 1 << 20
# "hoopd" is what the gateway targets are judged on and the "off" of the journal targets;
# "hoopd-relay" is the "off" of the policy targets. The journal variants join only what their
# targets need, to keep a default run under ~8 minutes on 2 cores.
VARIANTS = (
    HoopdVariant("hoopd"),
    HoopdVariant("hoopd-relay", policy=False),
    HoopdVariant("hoopd-jnl", journal={"fsync": "interval"}, configs=("simple_c8",), streams=False),
    HoopdVariant("hoopd-jnl-always", journal={"fsync": "always"}, configs=("simple_c8",), streams=False),
    HoopdVariant("hoopd-jnl-allrows", journal={"fsync": "interval", "max_result_rows": -1}, configs=()),
)
LEGEND = {"direct": "PostgreSQL", "hoopd": "policy on, no journal", "hoopd-relay": "[policy] enabled = false",
          "hoopd-jnl": "policy + journal, fsync interval", "hoopd-jnl-always": "policy + journal, fsync always",
          "hoopd-jnl-allrows": "policy + journal, fsync interval, max_result_rows = -1",
          "pgbouncer": "session pooling"}
R = TypeVar("R")


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round x 2 s, a 128 MiB slow stream")
    p.add_argument("--rounds", type=int, help="pgbench/stream rounds (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 5; quick 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--slow-mib", type=int, help="MiB the slow client reads (default 1024; quick 128)")
    p.add_argument("--slow-rate", type=float, help="slow client's read rate in MiB/s (default 20; quick 64)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="instead of measuring: profile hoopd with py-spy under each workload, into DIR")
    p.add_argument("--seam", metavar="REV",
                   help="only pgbench -S c=8 through policy + journal and policy off, this checkout vs git REV"
                        " (bench/seam.py)")
    p.add_argument("--masking", action="store_true",
                   help="only a 1M-row SELECT through hoopd without and with masking rules (bench/masking.py)")
    p.add_argument("--workers", action="store_true",
                   help="only pgbench -S c=8 and c=32 through hoopd with workers = 1 and 2, direct and pgbouncer"
                        " (bench/workers.py)")
    p.add_argument("--journal", action="store_true",
                   help="only what recording costs: pgbench -S c=8 and a 1M-row SELECT without and with a journal"
                        " (bench/journal.py)")
    p.add_argument("--holds", action="store_true",
                   help="only pgbench -S through hoopd with and without 100 statements held for review (bench/holds.py)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json",
                   help="where to write the results (default bench/results/latest.json)")
    a = p.parse_args(argv)
    quick = a.quick
    a.rounds = a.rounds or (1 if quick else 3)
    a.duration = a.duration or (2 if quick else 5)
    a.slow_mib = a.slow_mib or (128 if quick else 1024)
    a.slow_rate = a.slow_rate or (64.0 if quick else 20.0)
    if min(a.rounds, a.duration, a.scale, a.slow_mib) < 1 or a.slow_rate <= 0:
        p.error("--rounds, --duration, --scale, --slow-mib and --slow-rate must be positive")
    return a


def _quietly(what: str, fn: Callable[[], object]) -> Callable[[], None]:
    """A cleanup step that reports its failure instead of hiding the others."""
    def step() -> None:
        try:
            fn()
        except Exception as e:  # cleanup must go on
            say(f"cleanup: {what} failed: {e}")
    return step


def _with_cpu(t: Target, work: Callable[[], R]) -> tuple[R, float | None]:
    """work()'s result and the CPU seconds the target's proxy process used meanwhile (None: direct)."""
    cpu0 = measure.cpu_seconds(t.pid) if t.pid else 0.0
    out = work()
    return out, (measure.cpu_seconds(t.pid) - cpu0 if t.pid else None)


@dataclass
class PgbenchRuns:
    summary: dict[str, Any]  # report.summarize_pgbench
    transactions: Counter[str]  # per target, warm-up included
    cache: dict[str, Any]  # report.summarize_cache: per mode, per hoopd with policy on


def run_pgbench(targets: list[Target], hoopds: dict[str, Hoopd], rounds: int, duration: int) -> PgbenchRuns:
    """Every config x the targets that join it, ``rounds`` times, the target order rotated each round.

    For the proxies, also their CPU time per transaction (from /proc: steadier than TPS
    when other work shares the machine); for hoopd with policy on, its classification
    cache counters (scraped from /metrics around each run, outside the CPU window)."""
    say("warm-up: 1 s of pgbench -S per target")
    txns: Counter[str] = Counter()
    for t in targets:
        txns[t.name] += measure.pgbench(t, "simple", 1, 1).transactions
    plan = {config_key(mode, c): [t for t in targets if t.name not in hoopds or _joins(hoopds[t.name], mode, c)]
            for mode, c in CONFIGS}
    runs = {key: {t.name: [] for t in ts} for key, ts in plan.items()}
    cpu = {key: {t.name: [] for t in ts if t.pid} for key, ts in plan.items()}
    cache: dict[str, dict[str, Counter[str]]] = {mode: {} for mode in dict.fromkeys(m for m, _ in CONFIGS)}
    for r in range(rounds):
        for mode, c in CONFIGS:
            key = config_key(mode, c)
            for t in measure.rotated(plan[key], r):
                h = hoopds.get(t.name)
                counted = h is not None and h.variant.policy
                before = h.policy_cache() if counted else None
                res, used = _with_cpu(t, lambda: measure.pgbench(t, mode, c, duration))
                if counted:
                    cache[mode].setdefault(t.name, Counter()).update(h.policy_cache() - before)
                txns[t.name] += res.transactions
                runs[key][t.name].append((res.tps, res.latency_ms))
                extra = ""
                if used is not None:
                    cpu[key][t.name].append(used * 1e6 / res.transactions)
                    extra = f", CPU {used * 1e6 / res.transactions:.0f} us/txn"
                say(f"round {r + 1}/{rounds} {mode:8} c={c} {t.name:17} {res.tps:9.0f} TPS "
                    f"{res.latency_ms:.3f} ms{extra}")
    return PgbenchRuns(report.summarize_pgbench(runs, cpu), txns, report.summarize_cache(cache))


def _joins(h: Hoopd, mode: str, clients: int) -> bool:
    return h.variant.configs is None or config_key(mode, clients) in h.variant.configs


def journal_sizes(hoopds: dict[str, Hoopd], txns: Counter[str]) -> dict[str, Any]:
    """Journal folder size / pgbench transactions processed, for the journal variants that joined pgbench."""
    out = {}
    for name, h in hoopds.items():
        if h.journal_dir is not None and h.variant.configs != ():
            size = h.journal_bytes()
            out[name] = {"bytes": size, "transactions": txns[name], "bytes_per_txn": round(size / txns[name], 1)}
    return out


def run_streams(targets: list[Target], hoopds: dict[str, Hoopd], rounds: int) -> dict[str, Any]:
    targets = [t for t in targets if t.name not in hoopds or hoopds[t.name].variant.streams]
    runs: dict[str, dict[str, list[float]]] = {k: {t.name: [] for t in targets} for k in STREAMS}
    cpu: dict[str, dict[str, list[float]]] = {k: {t.name: [] for t in targets if t.pid} for k in STREAMS}
    for r in range(rounds):
        for kind in STREAMS:
            for t in measure.rotated(targets, r):
                sec, used = _with_cpu(t, lambda: measure.psql_seconds(t, STREAM_SQL[kind]))
                runs[kind][t.name].append(sec)
                extra = ""
                if used is not None:
                    cpu[kind][t.name].append(used)
                    extra = f", CPU {used:.2f} s"
                say(f"round {r + 1}/{rounds} 1M-row {kind:6} {t.name:17} {sec:.3f} s{extra}")
    return report.summarize_streams(runs, cpu)


def run_slow_stream(hoopd: Target, mib: int, rate_mib: float) -> dict[str, Any]:
    assert hoopd.pid is not None
    pid = hoopd.pid
    expected = mib / rate_mib
    say(f"slow client: {mib} MiB through hoopd at {rate_mib:g} MiB/s (~{expected:.0f} s)")
    before = measure.proc_status_kib(pid)["VmRSS"]
    reset = measure.reset_peak_rss(pid)
    chunk = 8192
    with measure.RssSampler(pid) as sampler:
        got = measure.slow_read(hoopd, mib * MiB, rate_mib * MiB, max_seconds=2 * expected + 10, chunk=chunk)
    hwm = measure.proc_status_kib(pid)["VmHWM"]
    mb = lambda kib: kib * 1024 / 1e6  # noqa: E731
    return {"mib_read": got.bytes_read / MiB, "seconds": round(got.seconds, 2), "complete": got.complete,
            "recv_bytes": chunk, "rss_before_mb": round(mb(before), 1),
            "sampled_peak_mb": round(mb(sampler.peak_kib), 1), "samples": sampler.samples,
            "hwm_mb": round(mb(hwm), 1), "hwm_reset": reset, "peak_rss_mb": round(mb(max(hwm, sampler.peak_kib)), 1)}


def run_copy_cancel(targets: list[Target], rounds: int) -> dict[str, Any]:
    """Median bytes read after cancelling a large COPY TO STDOUT, per target."""
    got: dict[str, list[int]] = {t.name: [] for t in targets}
    for r in range(rounds):
        for t in measure.rotated(targets, r):
            got[t.name].append(measure.copy_cancel_overread(t))
            say(f"round {r + 1}/{rounds} copy cancel {t.name:17} {got[t.name][-1] / MiB:7.2f} MiB read after cancel")
    return report.summarize_copy_cancel(got)


@dataclass
class Setup:
    cluster: Cluster
    targets: list[Target]  # direct, the hoopd variants, pgbouncer
    hoopds: dict[str, Hoopd]
    pgbouncer_bin: str

    def target(self, name: str) -> Target:
        return next(t for t in self.targets if t.name == name)


def _scratch(stack: ExitStack) -> Path:
    """A temporary folder for one run, removed when ``stack`` unwinds."""
    base = Path(tempfile.mkdtemp(prefix="hoopd-bench-"))
    stack.callback(_quietly("removing " + str(base), lambda: shutil.rmtree(base)))
    os.chmod(base, 0o711)  # the postgres OS user must reach its folders inside
    return base


def _postgres(base: Path, password: str, scale: int, stack: ExitStack) -> Cluster:
    """A running cluster in ``base``/pg with pgbench data, stopped when ``stack`` unwinds."""
    say(f"initdb + pgbench -i -s {scale} in {base}")
    cluster = Cluster(base / "pg")
    stack.callback(_quietly("stopping PostgreSQL", lambda: cluster.stop("fast")))
    start_postgres(cluster, password, scale)
    return cluster


def setup(args: argparse.Namespace, stack: ExitStack) -> Setup:
    """Start PostgreSQL (with pgbench data), the hoopd variants and pgbouncer; ``stack`` undoes all of it."""
    base = _scratch(stack)
    password = new_password()
    pgbouncer_bin = ensure_pgbouncer()
    t0 = time.monotonic()
    cluster = _postgres(base, password, args.scale, stack)
    say(f"PostgreSQL ready on {cluster.port} ({time.monotonic() - t0:.1f} s)")

    targets = [Target("direct", cluster.port, password)]
    hoopds = {}
    for v in VARIANTS:
        h = hoopds[v.name] = Hoopd(base / v.name, cluster.port, password, v)
        stack.callback(_quietly(f"stopping {v.name}", h.stop))
        targets.append(h.start())
        say(f"{v.name} ({LEGEND[v.name]}) on {targets[-1].port}, pid {targets[-1].pid}")
    bouncer = PgBouncer(base / "pgbouncer", cluster.port, password)
    stack.callback(_quietly("stopping pgbouncer", bouncer.stop))
    bouncer.start(pgbouncer_bin)
    assert bouncer.proc is not None
    targets.append(Target("pgbouncer", bouncer.port, password, bouncer.proc.pid))
    say(f"pgbouncer on {bouncer.port}, pid {bouncer.proc.pid}")
    return Setup(cluster, targets, hoopds, pgbouncer_bin)


def run_seam(args: argparse.Namespace, stack: ExitStack) -> int:
    base = _scratch(stack)
    rev = args.seam
    root = seam.worktree(ROOT, rev, base / "baseline", stack)
    password = new_password()
    cluster = _postgres(base, password, args.scale, stack)
    targets = seam.start(base, cluster.port, password, seam.variants(rev, root), stack, say)
    res = seam.run(targets, args.rounds, args.duration, say)
    table, ok = seam.report(res, rev)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    out = args.json.with_name("seam.json") if args.json.name == "latest.json" else args.json
    out.write_text(json.dumps({"command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
                               "rev": rev, "rounds": args.rounds, "duration": args.duration, "results": res,
                               "passed": ok}, indent=2) + "\n")
    say(f"results written to {out}")
    return 1 if args.strict and not ok else 0


def run_part(name: str, part: Any, args: argparse.Namespace, stack: ExitStack) -> int:
    """One of the issue benches (bench/masking.py, bench/holds.py): ``part.start`` its
    gateways in front of a fresh PostgreSQL, ``part.run``, print ``part.report``."""
    base = _scratch(stack)
    password = new_password()
    cluster = _postgres(base, password, args.scale, stack)
    res = part.run(part.start(base, cluster.port, password, stack), args.rounds, args.duration, say)
    print(part.report(res))
    out = args.json.with_name(f"{name}.json") if args.json.name == "latest.json" else args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "results": res}, indent=2) + "\n")
    say(f"results written to {out}")
    return 0


def bench(args: argparse.Namespace, s: Setup) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    pgb = run_pgbench(s.targets, s.hoopds, args.rounds, args.duration)
    journal = journal_sizes(s.hoopds, pgb.transactions)
    streams = run_streams(s.targets, s.hoopds, args.rounds)
    slow = run_slow_stream(s.target("hoopd"), args.slow_mib, args.slow_rate)
    # pgbouncer is left out: here its CancelRequest did not stop the COPY within 20 s
    cancel = run_copy_cancel([t for t in s.targets if t.name in ("direct", "hoopd")], args.rounds)
    meta = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
            "scale": args.scale, "rounds": args.rounds, "duration": args.duration, "cpus": os.cpu_count(),
            "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
            "targets": LEGEND,
            "versions": {"postgres": version_of([str(s.cluster.bindir / "postgres"), "--version"]),
                         "pgbench": version_of(["pgbench", "--version"]),
                         "pgbouncer": version_of([s.pgbouncer_bin, "--version"]),
                         "python": sys.version.split()[0]}}
    return {"meta": meta, "pgbench": pgb.summary, "policy_cache": pgb.cache, "journal": journal,
            "streams": streams, "slow_stream": slow, "copy_cancel": cancel}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        with ExitStack() as stack:
            if args.seam:
                return run_seam(args, stack)
            if args.masking:
                return run_part("masking", masking, args, stack)
            if args.holds:
                return run_part("holds", holds, args, stack)
            if args.journal:
                return run_part("journal", journal, args, stack)
            if args.workers:
                return run_part("workers", workers, args, stack)
            s = setup(args, stack)
            if args.profile:
                profile_hoopd(s.target("hoopd"), args.profile, args.duration)
                return 0
            res = bench(args, s)
    except KeyboardInterrupt:
        say("interrupted; everything stopped and removed")
        return 130
    except Exception as e:
        say(f"failed: {e}")
        return 2
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2) + "\n")  # the measurements, whatever the report does
    try:
        results, figs = report.checks(res), report.figures(res)
        print(report.table(res, results, figs, LEGEND))
    except Exception:
        traceback.print_exc()
        say(f"the report failed; the measurements are in {args.json}")
        return 2
    res["targets"] = [c.as_dict() for c in results]
    res["figures"] = [asdict(f) for f in figs]
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    say(f"results written to {args.json}")
    missed = [c.name for c in results if not c.passed]
    if missed:
        say(f"{len(missed)} target(s) missed" + ("" if args.strict else " (exit 0; --strict makes this exit 1)"))
    return 1 if missed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
