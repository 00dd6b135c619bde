"""``bench/run.py --profile DIR``: hoopd's hot spots under each workload, sampled by py-spy.

Each workload runs against hoopd alone while ``py-spy record`` samples the twistd process
(non-blocking, idle samples dropped). DIR gets ``<workload>.folded`` (collapsed stacks:
flamegraph.pl, speedscope, ``py-spy``'s own viewers read them) and ``<workload>.txt``
(the top functions by own and by inclusive samples), and the tops are printed.
"""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from bench import measure
from bench.services import Target

RATE = 250  # samples per second
_LINE = re.compile(r":\d+\)$")


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def _function(frame: str) -> str:
    """``func (file.py:123)`` -> ``func (file.py)``: py-spy's raw frames are per line."""
    return _LINE.sub(")", frame)


def top(folded: Path, cpu_seconds: float, wall_seconds: float, n: int = 20) -> str:
    """The top ``n`` functions by own samples and by inclusive samples of a collapsed-stack file."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = [_function(f) for f in stack.split(";")]
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    lines = [f"hoopd used {cpu_seconds:.2f} s CPU in {wall_seconds:.1f} s ({cpu_seconds / wall_seconds:.0%} of a core);"
             f" {total} samples at {RATE}/s (py-spy counts a thread inside epoll_wait as busy too)"]
    for title, counts in (("own", own), ("inclusive", incl)):
        lines.append(f"top {n} by {title} samples:")
        lines += [f"  {c / total:6.1%}  {f}" for f, c in counts.most_common(n)] if total else ["  (none)"]
    return "\n".join(lines)


def profile_hoopd(hoopd: Target, out_dir: Path, seconds: int) -> None:
    assert hoopd.pid is not None
    pid = hoopd.pid
    out_dir.mkdir(parents=True, exist_ok=True)
    workloads: list[tuple[str, Callable[[], object]]] = [
        ("pgbench_simple_c1", lambda: measure.pgbench(hoopd, "simple", 1, seconds)),
        ("pgbench_simple_c8", lambda: measure.pgbench(hoopd, "simple", 8, seconds)),
        ("pgbench_prepared_c8", lambda: measure.pgbench(hoopd, "prepared", 8, seconds)),
        ("copy_1M_rows", lambda: measure.psql_seconds(
            hoopd, "copy (select g, md5(g::text) from generate_series(1, 1000000) g) to stdout")),
    ]
    spy = _py_spy()
    for name, work in workloads:
        folded = out_dir / f"{name}.folded"
        rec = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking",
                                "--format", "raw", "--output", str(folded)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)  # let py-spy attach
            t0, cpu0 = time.monotonic(), measure.cpu_seconds(pid)
            result = work()
            wall, cpu = time.monotonic() - t0, measure.cpu_seconds(pid) - cpu0
        finally:
            rec.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            _, err = rec.communicate(timeout=60)
        if not folded.exists():
            raise RuntimeError(f"py-spy wrote no profile for {name}: {err.strip()}")
        text = f"{name}: {result}\n" + top(folded, cpu, wall)
        (out_dir / f"{name}.txt").write_text(text + "\n")
        print(text + "\n", flush=True)
