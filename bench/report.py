"""Derived figures (medians, ratios, added latency), the targets, and the printed table."""
from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

# pgbench modes (measure.pgbench): simple/prepared -S; connect: -S with a new connection per
# transaction (connect, one query, close); pipeline: 10 selects in one pipeline per transaction
CONFIGS = (("simple", 1), ("simple", 8), ("prepared", 1), ("prepared", 8), ("connect", 1), ("pipeline", 1))
STREAMS = ("copy", "select")
CACHE_RESULTS = ("exact_hit", "shape_hit", "miss")  # hoopd_policy_cache_total{result}


def config_key(mode: str, clients: int) -> str:
    return f"{mode}_c{clients}"


def summarize_pgbench(runs: dict[str, dict[str, list[tuple[float, float]]]],
                      proxy_cpu: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """runs[config][target] = [(tps, latency_ms), ...] -> medians and ratios per config and target;
    proxy_cpu[config][target] = [proxy CPU microseconds per transaction, ...] -> its median."""
    out: dict[str, Any] = {}
    for key, by_target in runs.items():
        med = {t: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
               for t, rs in by_target.items()}
        d_tps, d_lat = med["direct"]
        b_tps, b_lat = med["pgbouncer"]
        out[key] = {t: {"tps": round(tps, 1), "latency_ms": lat, "tps_runs": [r[0] for r in by_target[t]],
                        "vs_direct": round(tps / d_tps, 3), "vs_pgbouncer": round(tps / b_tps, 3),
                        "added_us": round((lat - d_lat) * 1000, 1)}
                    for t, (tps, lat) in med.items()}
        for t, us in proxy_cpu[key].items():
            out[key][t]["cpu_us_per_txn"] = round(statistics.median(us), 1)
    return out


def summarize_streams(runs: dict[str, dict[str, list[float]]],
                      proxy_cpu: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """runs[kind][target] = [seconds, ...] -> median seconds and ratio to direct;
    proxy_cpu[kind][target] = [proxy CPU seconds, ...] -> its median."""
    out: dict[str, Any] = {}
    for kind, by_target in runs.items():
        med = {t: statistics.median(s) for t, s in by_target.items()}
        out[kind] = {t: {"seconds": round(s, 3), "runs": [round(x, 3) for x in by_target[t]],
                         "vs_direct": round(s / med["direct"], 3)} for t, s in med.items()}
        for t, used in proxy_cpu[kind].items():
            out[kind][t]["cpu_seconds"] = round(statistics.median(used), 3)
    return out


def summarize_cache(counts: dict[str, dict[str, Counter[str]]]) -> dict[str, Any]:
    """counts[mode][target] = classification outcomes (exact_hit, shape_hit, miss) -> with the hit rate."""
    out: dict[str, Any] = {}
    for mode, by_target in counts.items():
        out[mode] = {}
        for t, c in by_target.items():
            n = sum(c.values())
            out[mode][t] = {**{r: c[r] for r in CACHE_RESULTS}, "classifications": n,
                            "hit_rate": round((c["exact_hit"] + c["shape_hit"]) / n, 5) if n else None}
    return out


@dataclass(frozen=True)
class Check:
    group: str
    name: str
    value: float
    op: str  # ">=" or "<="
    limit: float
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "result": "PASS" if self.passed else "MISS"}


@dataclass(frozen=True)
class Figure:
    """A reported figure without a target."""

    group: str
    name: str
    value: float
    unit: str = ""
    note: str = ""


GATEWAY, JOURNAL, POLICY = "gateway", "journal (issue 3)", "policy (issue 5)"


def _tps_ratio(pgb: dict[str, Any], key: str, a: str, b: str) -> float:
    return round(pgb[key][a]["tps"] / pgb[key][b]["tps"], 3)


def _time_ratio(streams: dict[str, Any], kind: str, a: str, b: str) -> float:
    return round(streams[kind][a]["seconds"] / streams[kind][b]["seconds"], 3)


def summarize_copy_cancel(got: dict[str, list[int]]) -> dict[str, Any]:
    """got[target] = [bytes read after the cancel, ...] -> median MiB, and over direct."""
    med = {t: statistics.median(v) / (1 << 20) for t, v in got.items()}
    return {t: {"mib": round(v, 2), "runs_mib": [round(x / (1 << 20), 2) for x in got[t]],
                "over_direct_mib": round(v - med["direct"], 2)} for t, v in med.items()}


def checks(res: dict[str, Any]) -> list[Check]:
    """The targets: the gateway's own on ``hoopd``; journal on vs off (``hoopd-jnl``,
    ``hoopd-jnl-allrows`` vs ``hoopd``); policy on vs off (``hoopd`` vs ``hoopd-relay``)."""
    pgb, streams, slow = res["pgbench"], res["streams"], res["slow_stream"]
    h = {k: v["hoopd"] for k, v in pgb.items()}
    return [
        Check(GATEWAY, "c=8 simple TPS vs direct", h["simple_c8"]["vs_direct"], ">=", 0.30, "x"),
        Check(GATEWAY, "c=1 simple added latency", h["simple_c1"]["added_us"], "<=", 60, "us"),
        Check(GATEWAY, "c=1 prepared added latency", h["prepared_c1"]["added_us"], "<=", 60, "us"),
        *(Check(GATEWAY, f"1M-row {kind} stream time vs direct", streams[kind]["hoopd"]["vs_direct"], "<=", 1.5, "x")
          for kind in STREAMS),
        Check(GATEWAY, "connection set-up (connect, 1 query, close) rate vs direct", h["connect_c1"]["vs_direct"],
              ">=", 0.5, "x"),
        Check(GATEWAY, "10-statement pipeline rate vs direct", h["pipeline_c1"]["vs_direct"], ">=", 0.5, "x"),
        Check(GATEWAY, "read after cancelling a COPY, beyond direct", res["copy_cancel"]["hoopd"]["over_direct_mib"],
              "<=", 1.0, "MiB"),
        Check(GATEWAY, f"gateway peak RSS, slow {slow['mib_read']:.0f} MiB stream", slow["peak_rss_mb"], "<=", 150,
              "MB"),
        Check(JOURNAL, "c=8 simple TPS, journal (fsync interval) / off",
              _tps_ratio(pgb, "simple_c8", "hoopd-jnl", "hoopd"), ">=", 0.85, "x"),
        *(Check(JOURNAL, f"1M-row {kind} time, journal (all rows) / off",
                _time_ratio(streams, kind, "hoopd-jnl-allrows", "hoopd"), "<=", 1.3, "x") for kind in STREAMS),
        Check(POLICY, "c=8 simple TPS, policy on / off", _tps_ratio(pgb, "simple_c8", "hoopd", "hoopd-relay"),
              ">=", 0.85, "x"),
        Check(POLICY, "c=8 prepared TPS, policy on / off", _tps_ratio(pgb, "prepared_c8", "hoopd", "hoopd-relay"),
              ">=", 0.9, "x"),
    ]


def figures(res: dict[str, Any]) -> list[Figure]:
    """What the issues ask to be reported besides their targets."""
    out = [Figure(JOURNAL, "c=8 simple TPS, journal (fsync always) / off",
                  _tps_ratio(res["pgbench"], "simple_c8", "hoopd-jnl-always", "hoopd"), "x")]
    for t, j in res["journal"].items():
        out.append(Figure(JOURNAL, f"journal bytes per pgbench txn, {t}", j["bytes_per_txn"], "B",
                          f"{j['bytes'] / 1e6:.1f} MB / {j['transactions']} txns"))
    for mode, by_target in res["policy_cache"].items():
        c = by_target["hoopd"]
        if c["classifications"]:
            out.append(Figure(POLICY, f"classification cache hit rate, pgbench {mode}", c["hit_rate"] * 100, "%",
                              f"{c['exact_hit']} exact + {c['shape_hit']} shape hits, {c['miss']} parses"))
    return out


def table(res: dict[str, Any], results: list[Check], figs: list[Figure], legend: dict[str, str]) -> str:
    """The printed report; ``legend`` says what each target is."""
    meta, pgb, streams, slow = res["meta"], res["pgbench"], res["streams"], res["slow_stream"]
    lines = ["targets:", *(f"  {t:18} {what}" for t, what in legend.items()), "",
             f"pgbench -S, scale {meta['scale']}, {meta['rounds']} round(s) x {meta['duration']} s, "
             "median, targets alternated round-robin",
             f"{'mode':9}{'c':>3}  {'target':18}{'TPS':>10}{'lat ms':>9}{'vs direct':>11}{'vs pgb':>8}"
             f"{'added us':>10}{'proxy CPU us/txn':>18}",
             "(added us: (latency - direct latency) x 1000, the cost per round trip at c=1)"]
    for mode, c in CONFIGS:
        for t, r in pgb[config_key(mode, c)].items():
            lines.append(f"{mode:9}{c:>3}  {t:18}{r['tps']:>10.0f}{r['latency_ms']:>9.3f}{r['vs_direct']:>11.2f}"
                         f"{r['vs_pgbouncer']:>8.2f}"
                         + (f"{r['added_us']:>+10.1f}" if c == 1 else f"{'':10}")
                         + (f"{r['cpu_us_per_txn']:>18.1f}" if "cpu_us_per_txn" in r else ""))
    lines += ["", "1M-row result through psql (median wall time)",
              f"{'kind':9}{'target':19}{'seconds':>9}{'vs direct':>11}{'proxy CPU s':>13}"]
    for kind in STREAMS:
        for t, r in streams[kind].items():
            lines.append(f"{kind:9}{t:19}{r['seconds']:>9.3f}{r['vs_direct']:>11.2f}"
                         + (f"{r['cpu_seconds']:>13.2f}" if "cpu_seconds" in r else ""))
    lines += ["", f"slow client through hoopd: {slow['mib_read']:.0f} MiB read in {slow['seconds']:.1f} s "
              f"({slow['mib_read'] / slow['seconds']:.1f} MiB/s, {slow['recv_bytes']} B recv()s)",
              f"  hoopd RSS: before {slow['rss_before_mb']:.1f} MB, sampled peak {slow['sampled_peak_mb']:.1f} MB "
              f"({slow['samples']} samples), VmHWM {slow['hwm_mb']:.1f} MB"
              + ("" if slow["hwm_reset"] else " (since process start: could not reset)")]
    for group in dict.fromkeys(x.group for x in [*results, *figs]):
        lines += ["", f"results: {group}"]
        for ch in results:
            if ch.group == group:
                lines.append(f"  {ch.name:52} {ch.value:>9.2f} {ch.unit:3} {ch.op} {ch.limit:<6g} "
                             f"{'PASS' if ch.passed else 'MISS'}")
        for f in figs:
            if f.group == group:
                lines.append(f"  {f.name:52} {f.value:>9.2f} {f.unit:3} (reported{': ' + f.note if f.note else ''})")
    lines += ["", f"load average before {meta['load_before']}, after {meta['load_after']}; {meta['cpus']} CPUs"]
    return "\n".join(line.rstrip() for line in lines)
