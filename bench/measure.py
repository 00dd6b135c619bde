"""One measurement each: a pgbench run, a psql stream, a slow raw-socket reader, RSS of a process."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.services import DBNAME, USER, Target
from hoopd.pgwire import messages as m
from tests.rawclient import RawClient, error_of

T = TypeVar("T")
_TPS = re.compile(r"^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)", re.M)
PIPELINE = ("\\set aid random(1, 100000 * :scale)\n\\startpipeline\n"
            + "select abalance from pgbench_accounts where aid = :aid;\n" * 10 + "\\endpipeline\n")
_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_DONE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)


@dataclass(frozen=True)
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int


def pgbench(target: Target, mode: str, clients: int, seconds: float) -> PgbenchResult:
    """``pgbench -S`` (select only, no vacuum) against target; -j 2 when there are several clients.
    Mode ``connect``: a new connection per transaction (-C); ``pipeline``: 10 selects in one
    pipeline per transaction (extended protocol)."""
    threads = 2 if clients > 1 else 1
    if mode == "pipeline":
        script = Path(tempfile.gettempdir()) / "hoopd-bench-pipeline.sql"
        script.write_text(PIPELINE)
        work = ["-M", "extended", "-f", str(script)]
    else:
        work = ["-S", "-M", "simple", "-C"] if mode == "connect" else ["-S", "-M", mode]
    cmd = ["pgbench", "-n", *work, "-c", str(clients), "-j", str(threads), "-T", str(int(seconds)),
           *target.pg_args(), DBNAME]
    proc = subprocess.run(cmd, env=target.env(), capture_output=True, text=True, timeout=seconds + 60)
    out = proc.stdout
    tps, lat, done, failed = _TPS.search(out), _LAT.search(out), _DONE.search(out), _FAILED.search(out)
    if proc.returncode or not tps or not lat or not done or (failed and int(failed.group(1))):
        raise RuntimeError(f"pgbench against {target.name} failed ({proc.returncode}):\n{proc.stderr.strip()}\n{out}")
    return PgbenchResult(float(tps.group(1)), float(lat.group(1)), int(done.group(1)))


def rotated(items: "tuple[T, ...] | list[T]", by: int) -> list[T]:
    """``items`` rotated left by ``by`` (the order of targets in round ``by``)."""
    by %= len(items)
    return list(items[by:]) + list(items[:by])


def pgbench_cpu(target: Target, mode: str, clients: int, seconds: float) -> tuple[PgbenchResult, float | None]:
    """``pgbench`` and the CPU per transaction, in us, of the target's process and its children
    (a gateway with workers, its fsync helper); None for a target without a process (direct)."""
    before = tree_cpu_seconds(target.pid) if target.pid else 0.0
    res = pgbench(target, mode, clients, seconds)
    if not target.pid:
        return res, None
    return res, (tree_cpu_seconds(target.pid) - before) * 1e6 / res.transactions


def psql_seconds(target: Target, sql: str) -> float:
    """Wall time of ``psql -c sql`` with all output discarded."""
    cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *target.pg_args(), "-d", DBNAME, "-o", "/dev/null",
           "-c", sql]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=target.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=600)
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"psql against {target.name} failed ({proc.returncode}): {proc.stderr.strip()}")
    return elapsed


# --- CPU and memory of a process -----------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process (all its threads) has used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (a gateway's supervisor and its workers)."""
    total = cpu_seconds(pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:  # its parent is pid
            total += cpu_seconds(int(stat.parent.name))
    return total


def proc_status_kib(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/PID/status, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm"):
            key, _, rest = line.partition(":")
            out[key] = int(rest.split()[0])
    return out


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Samples VmRSS of a process in a thread; ``peak_kib`` is the largest sample."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = proc_status_kib(self.pid)["VmRSS"]
            except (OSError, KeyError):
                return
            self.peak_kib = max(self.peak_kib, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- a slow client -------------------------------------------------------------------

_DATAROW_BYTES = 1 + 4 + 2 + 4 + 1024  # one DataRow of repeat('x', 1024)


@dataclass(frozen=True)
class SlowRead:
    bytes_read: int
    seconds: float
    complete: bool  # read the whole limit before the time bound


def copy_cancel_overread(target: Target, before: int = 1 << 20) -> int:
    """Bytes a client still reads after cancelling a large ``COPY ... TO STDOUT``: it reads
    ``before`` bytes slowly enough to fill the buffers on the way, sends a CancelRequest and
    counts what arrives until the 57014 error."""
    client = RawClient(target.port)
    try:
        err = error_of(client.login(USER, target.password, DBNAME))
        if err:
            raise RuntimeError(f"copy-cancel client login to {target.name} failed: {err.get('M')}")
        assert client.key is not None
        client.send(m.query("copy (select repeat('x', 1024) from generate_series(1, 10000000)) to stdout"))
        sock = client.sock
        got = len(client.buf)
        while got < before:
            data = sock.recv(8192)
            if not data:
                raise RuntimeError(f"{target.name} closed the connection during COPY")
            got += len(data)
            time.sleep(0.001)
        time.sleep(0.5)  # every buffer between the server and the client fills up
        with socket.create_connection(("127.0.0.1", target.port), timeout=10) as c:
            c.sendall(m.cancel_request(*client.key))
        after = 0
        tail = b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"{target.name} closed the connection before the cancel error")
            after += len(data)
            tail = (tail + data)[-4096:]
            if b"57014" in tail:
                return after
    finally:
        client.close()


def slow_read(target: Target, limit: int, rate: float, max_seconds: float, chunk: int = 8192) -> SlowRead:
    """Read ``limit`` bytes of a larger result at ``rate`` bytes/s with small recv()s and sleeps.

    Stops after ``limit`` bytes or ``max_seconds``, whichever comes first, and hangs up
    mid-result (the gateway then cancels the query upstream)."""
    client = RawClient(target.port)
    try:
        err = error_of(client.login(USER, target.password, DBNAME))
        if err:
            raise RuntimeError(f"slow client login to {target.name} failed: {err.get('M')}")
        client.send(m.query(f"select repeat('x', 1024) from generate_series(1, {limit // _DATAROW_BYTES + 1000})"))
        sock, got, first = client.sock, len(client.buf), True
        t0 = time.monotonic()
        while got < limit:
            now = time.monotonic() - t0
            if now > max_seconds:
                break
            ahead = got / rate - now
            if ahead > 0:
                time.sleep(ahead)
            data = sock.recv(chunk)
            if not data:
                raise RuntimeError(f"{target.name} closed the slow client's connection after {got} bytes")
            if first and data[:1] != b"T":
                raise RuntimeError(f"slow client query failed: {data[:200]!r}")
            first = False
            got += len(data)
        return SlowRead(got, time.monotonic() - t0, got >= limit)
    finally:
        client.close()
