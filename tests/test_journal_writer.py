"""The journal writer: segments, rotation, crash recovery, retention, fsync, fail closed."""
from __future__ import annotations

import errno
import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
import pytest_twisted
from twisted.internet.task import Clock, deferLater

from hoopd.journal import records as r
from hoopd.journal.verify import verify
from hoopd.journal.writer import JournalUnavailable
from tests.test_journal_helpers import T0, FlakyOS, Log, ManualSync, make_writer, records, segment_files


def rec(i: int, **kw) -> dict:
    return {"session": "s1", "seq": i, "kind": "statement", "stmt": i, "op": "query", "text": f"select {i}", **kw}


def chain_ok(folder: Path, key: bytes | None = None) -> bool:
    rep = verify(r.list_segments(folder), key, whole_dir=True)
    assert rep.ok, [str(b) for b in rep.broken]
    return True


def test_round_trip_names_header_and_types(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    w.startService()
    open_name = w.segment.name
    assert open_name == "20251124T160000.000Z-gw-1-000001.open.hjs"
    w.write(rec(1, params=["text", b"\x00\x01", None], n=-5, f=1.5))
    w.clock.advance(0.25)
    w.write(rec(2))
    w.stopService()
    assert segment_files(tmp_path) == ["20251124T160000.000Z-gw-1-000001.hjs"]
    got = records(tmp_path)
    assert [x["kind"] for x in got] == ["segment", "statement", "statement", "segment_end"]
    head = got[0]
    assert head["v"] == r.VERSION and head["node"] == "gw-1" and head["prev"] is None and not head["keyed"]
    assert head["segment"] == "20251124T160000.000Z-gw-1-000001.hjs"
    one = got[1]
    assert one["ts"] == datetime.fromtimestamp(T0, timezone.utc) and one["ts"].tzinfo is not None
    assert one["params"] == ["text", b"\x00\x01", None] and one["n"] == -5 and one["f"] == 1.5
    assert one["node"] == "gw-1" and one["session"] == "s1" and one["seq"] == 1
    assert (got[2]["ts"] - one["ts"]).total_seconds() == 0.25
    assert chain_ok(tmp_path)


def test_each_record_is_one_write_on_an_append_fd(tmp_path: Path) -> None:
    ops = FlakyOS()
    w = make_writer(tmp_path, ops=ops, fsync="never")
    w.startService()
    before = ops.writes
    for i in range(5):
        w.write(rec(i))
    assert ops.writes - before == 5
    assert fcntl.fcntl(w._fd, fcntl.F_GETFL) & os.O_APPEND
    w.stopService()


def test_new_segment_on_every_start_chained_to_the_previous(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(T0)
    for i in range(3):
        w = make_writer(tmp_path, clock)
        w.startService()
        w.write(rec(i))
        w.stopService()
        clock.advance(1)
    names = segment_files(tmp_path)
    assert [n.split("-gw-1-")[1] for n in names] == ["000001.hjs", "000002.hjs", "000003.hjs"]
    heads = [x for x in records(tmp_path) if x["kind"] == "segment"]
    assert [h["prev_segment"] for h in heads] == [None, names[0], names[1]]
    assert chain_ok(tmp_path)


def test_rotation_by_size(tmp_path: Path) -> None:
    w = make_writer(tmp_path, rotate_bytes=4096)
    w.startService()
    for i in range(200):
        w.write(rec(i, text="x" * 100))
    w.stopService()
    names = segment_files(tmp_path)
    assert len(names) >= 5
    for n in names:
        assert (tmp_path / n).stat().st_size < 4096 + 400  # rotated at the first record past the limit
    got = [x for x in records(tmp_path) if x["kind"] == "statement"]
    assert [x["seq"] for x in got] == list(range(200))
    assert chain_ok(tmp_path)


def test_rotation_by_age_on_the_clock_but_not_when_idle(tmp_path: Path) -> None:
    w = make_writer(tmp_path, rotate_interval=60.0)
    w.startService()
    w.write(rec(1))
    w.clock.advance(59)
    assert len(segment_files(tmp_path)) == 1
    w.clock.advance(1)  # the timer fires: the segment has a record, so it is finished
    assert len(segment_files(tmp_path)) == 2
    first = sorted(tmp_path.glob("*.hjs"))[0]
    assert not first.name.endswith(".open.hjs")
    w.clock.advance(600)  # idle: no empty segments piling up
    assert len(segment_files(tmp_path)) == 2
    w.write(rec(2))
    w.stopService()
    assert chain_ok(tmp_path)
    assert [x["seq"] for x in records(tmp_path) if x["kind"] == "statement"] == [1, 2]


def test_crash_recovery_truncates_the_torn_tail_and_chains_on(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    w.startService()
    for i in range(3):
        w.write(rec(i))
    path = w.segment
    w.sync()
    # a crash mid-write: half a record at the end, and the process gone (no stopService)
    whole = r.seal(r.new_packer(), {"ts": datetime.now(timezone.utc), "kind": "x", "pad": "y" * 50}, r.GENESIS,
                   None)[0]
    with open(path, "ab") as f:
        f.write(whole[:len(whole) // 2])
    os.close(w._fd)
    os.close(w._lock_fd)
    size_torn = path.stat().st_size

    log = Log()
    w2 = make_writer(tmp_path, log=log)
    w2.startService()
    w2.write(rec(3))
    w2.stopService()
    finished = tmp_path / path.name.replace(".open.hjs", ".hjs")
    assert not path.exists() and finished.stat().st_size == size_torn - len(whole) // 2
    assert any("left open by a crash" in msg for msg in log.levels("warn"))
    got = records(tmp_path)
    assert [x.get("seq") for x in got if x["kind"] == "statement"] == [0, 1, 2, 3]
    head2 = [x for x in got if x["kind"] == "segment"][1]
    assert "recovered" in head2["gap"] and head2["prev_segment"] == finished.name
    assert chain_ok(tmp_path)


def test_recovery_removes_a_segment_without_a_complete_header(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    w.startService()
    w.write(rec(1))
    w.stopService()
    torn = tmp_path / "20251124T160001.000Z-gw-1-000002.open.hjs"
    torn.write_bytes(b"\x8a\xa2ts")
    w2 = make_writer(tmp_path)
    w2.startService()
    w2.stopService()
    assert not torn.exists()
    assert len(segment_files(tmp_path)) == 2
    assert chain_ok(tmp_path)


def test_only_one_writer_per_node_and_folder(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    w.startService()
    with pytest.raises(OSError, match="another process"):
        make_writer(tmp_path).startService()
    other = make_writer(tmp_path, node="gw-2")
    other.startService()
    other.stopService()
    w.stopService()


def test_retention_deletes_old_finished_segments_only(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(T0)
    for i in range(3):  # three finished segments
        w = make_writer(tmp_path, clock)
        w.startService()
        w.write(rec(i))
        w.stopService()
    old = sorted(tmp_path.glob("*.hjs"))
    os.utime(old[0], (T0 - 100 * 86400, T0 - 100 * 86400))
    os.utime(old[1], (T0 - 91 * 86400, T0 - 91 * 86400))
    os.utime(old[2], (T0 - 89 * 86400, T0 - 89 * 86400))
    foreign = tmp_path / "20200101T000000.000Z-gw-9-000001.hjs"  # another node's: not ours to delete
    foreign.write_bytes(old[2].read_bytes())
    os.utime(foreign, (0, 0))
    w = make_writer(tmp_path, clock, retention=90 * 86400.0)
    w.startService()
    assert not old[0].exists() and not old[1].exists() and old[2].exists() and foreign.exists()
    assert w.segment.exists()  # the open one, however old its mtime
    os.utime(w.segment, (0, 0))
    os.utime(old[2], (0, 0))
    clock.advance(600)  # the periodic sweep
    assert not old[2].exists() and w.segment.exists()
    w.stopService()
    foreign.unlink()
    got = [x for x in records(tmp_path) if x["kind"] == "retention"]
    assert got[0]["deleted"] == [old[0].name, old[1].name] and got[1]["deleted"] == [old[2].name]
    rep = verify(r.list_segments(tmp_path), None, whole_dir=True)
    assert rep.ok and any("deleted by retention" in n for n in rep.notes)


def test_fsync_never_syncs_nothing(tmp_path: Path) -> None:
    ops = FlakyOS()
    w = make_writer(tmp_path, ops=ops, fsync="never")
    w.startService()
    for i in range(5):
        w.write(rec(i))
    assert ops.fsyncs == 0
    w.stopService()


def test_group_commit_one_sync_for_what_arrived_while_one_ran(tmp_path: Path) -> None:
    ops = FlakyOS()
    thread = ManualSync(ops)
    w = make_writer(tmp_path, ops=ops, fsync="always", sync=thread)
    w.startService()
    assert w.durable() is None  # the header was synced on open
    before = ops.fsyncs
    fired: list[int] = []
    w.write(rec(1))
    w.durable().addCallback(lambda _: fired.append(1))
    assert len(thread.calls) == 1 and ops.fsyncs == before  # started in the thread, nothing on this one
    for i in (2, 3, 4):  # arrive while that sync runs: they share the next one
        w.write(rec(i))
        w.durable().addCallback(lambda _, i=i: fired.append(i))
    assert len(thread.calls) == 1
    thread.run()
    assert fired == [1] and ops.fsyncs == before + 1 and len(thread.calls) == 1  # the next one started
    thread.run()
    assert fired == [1, 2, 3, 4] and ops.fsyncs == before + 2 and not thread.calls
    assert w.durable() is None
    w.stopService()


def test_a_failed_sync_refuses_its_waiters_and_recording_resumes(tmp_path: Path) -> None:
    ops, log = FlakyOS(), Log()
    thread = ManualSync(ops)
    w = make_writer(tmp_path, ops=ops, fsync="always", sync=thread, log=log)
    w.startService()
    w.write(rec(1))
    got: list[Any] = []
    w.durable().addBoth(got.append)
    ops.broken = errno.EIO
    thread.run()
    assert isinstance(got[0].value, JournalUnavailable) and "Input/output error" in str(got[0].value)
    assert not w.healthy and w.segment is None and len(log.levels("error")) == 1
    ops.broken = None
    w.write(rec(2))  # a new segment
    assert w.healthy and w.segment is not None
    w.durable().addBoth(got.append)
    thread.run()
    assert got[1] is None
    w.stopService()
    assert chain_ok(tmp_path)


def test_stop_syncs_and_releases_what_waits(tmp_path: Path) -> None:
    thread = ManualSync()
    w = make_writer(tmp_path, fsync="always", sync=thread)
    w.startService()
    w.write(rec(1))
    got: list[Any] = []
    w.durable().addBoth(got.append)
    w.stopService()  # the segment is synced and closed on this thread
    assert got == [None]
    thread.run()  # the sync that was in flight ends after the stop: nothing more happens
    assert got == [None]


def test_fsync_interval_runs_on_the_clock_only_when_dirty(tmp_path: Path) -> None:
    ops = FlakyOS()
    w = make_writer(tmp_path, ops=ops, fsync="interval", fsync_interval=0.5)
    w.startService()
    start = ops.fsyncs
    w.write(rec(1))
    w.write(rec(2))
    assert ops.fsyncs == start
    w.clock.advance(0.5)
    assert ops.fsyncs == start + 1
    w.clock.advance(5)
    assert ops.fsyncs == start + 1
    w.stopService()


@pytest.mark.parametrize("short", [False, True])
def test_fail_closed_logs_once_and_recovers_by_itself(tmp_path: Path, short: bool) -> None:
    ops, log = FlakyOS(), Log()
    w = make_writer(tmp_path, ops=ops, log=log, fsync="always")
    w.startService()
    w.write(rec(1))
    ops.broken, ops.short = errno.ENOSPC, short
    for i in range(3):
        with pytest.raises(JournalUnavailable, match="audit journal"):
            w.write(rec(100 + i))
    assert len(log.levels("error")) == 1
    assert ("short write" if short else "No space left") in log.levels("error")[0]
    assert not w.healthy
    ops.broken = None
    w.write(rec(2))
    assert w.healthy and len(log.levels("error")) == 1
    assert any("writing again after 3 failed writes" in msg for msg in log.levels("info"))
    w.stopService()
    got = records(tmp_path)
    assert [x["seq"] for x in got if x["kind"] == "statement"] == [1, 2]  # nothing of the failed ones
    heads = [x for x in got if x["kind"] == "segment"]
    assert len(heads) == 2 and "ended early" in heads[1]["gap"]
    assert not list(tmp_path.glob("*.open.hjs"))
    assert chain_ok(tmp_path)


def test_write_fails_when_not_running_and_unencodable_records_are_refused(tmp_path: Path) -> None:
    w = make_writer(tmp_path)
    with pytest.raises(JournalUnavailable):
        w.write(rec(1))
    w.startService()
    with pytest.raises(JournalUnavailable, match="cannot be encoded"):
        w.write(rec(1, bad=object()))
    w.write(rec(2))
    w.stopService()
    assert [x["seq"] for x in records(tmp_path) if x["kind"] == "statement"] == [2]


def test_hmac_chain_is_keyed(tmp_path: Path) -> None:
    key = b"k" * 32
    w = make_writer(tmp_path, hmac_key=key)
    w.startService()
    w.write(rec(1))
    w.stopService()
    head = records(tmp_path)[0]
    assert head["keyed"] and head["key_id"] == r.key_id(key)
    assert chain_ok(tmp_path, key)
    raw = next(iter(r.iter_raw(open(next(tmp_path.glob("*.hjs")), "rb"), r.Scan())))[1]
    assert r.record_hash(raw) == r.link(r.GENESIS, raw[:-32], key) != r.link(r.GENESIS, raw[:-32], None)
    assert msgpack.unpackb(raw, timestamp=3)["h"] == r.record_hash(raw)


def test_hooks_for_metrics(tmp_path: Path) -> None:
    ops = FlakyOS()
    w = make_writer(tmp_path, ops=ops)
    written, failed = [], []
    w.written_hooks.append(lambda rec, n, secs: written.append((rec["seq"], n, secs >= 0)))
    w.failed_hooks.append(failed.append)
    w.startService()
    w.write(rec(1))
    ops.broken = errno.EIO
    with pytest.raises(JournalUnavailable):
        w.write(rec(2))
    w.stopService()
    size = len(r.seal(r.new_packer(), {"ts": datetime.fromtimestamp(T0, timezone.utc), "node": "gw-1", **rec(1)},
                      r.GENESIS, None)[0])
    assert written == [(1, size, True)]
    assert len(failed) == 1 and failed[0].errno == errno.EIO


def test_reconfigure_applies_limits_but_not_dir_or_key(tmp_path: Path) -> None:
    from dataclasses import replace

    ops, log = FlakyOS(), Log()
    w = make_writer(tmp_path, ops=ops, log=log, fsync="never")
    w.startService()
    w.reconfigure(replace(w.config, fsync="interval", fsync_interval=1.0, dir="/elsewhere", hmac_key=b"k" * 16))
    assert w.config.dir == str(tmp_path) and w.config.hmac_key is None and w.config.fsync == "interval"
    assert any("take a restart" in msg for msg in log.levels("warn"))
    w.write(rec(1))
    before = ops.fsyncs
    w.clock.advance(1.0)
    assert ops.fsyncs == before + 1
    w.stopService()


FSIZE_SCRIPT = r"""
import json, resource, sys
from pathlib import Path
from hoopd.journal.writer import JournalUnavailable
from tests.test_journal_helpers import make_writer
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))  # the kernel refuses to grow files past 16 KiB
w = make_writer(Path(sys.argv[1]), fsync="always", rotate_bytes=1 << 20)
w.startService()
ok, failed = [], []
for i in range(100):
    try:
        w.write({"session": "s", "seq": i, "kind": "statement", "text": "x" * 300})
        ok.append(i)
    except JournalUnavailable:
        failed.append(i)
w.stopService()
print(json.dumps({"ok": ok, "failed": failed}))
"""


def test_a_real_file_size_limit_fails_closed_and_recovers(tmp_path: Path) -> None:
    """No fakes: the kernel cuts a write short at RLIMIT_FSIZE (then EFBIG); each failure
    closes the segment at its last whole record and the next write starts a new one."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         cwd=Path(__file__).parent.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["failed"] and len(res["ok"]) > 50
    got = [x["seq"] for x in records(tmp_path) if x["kind"] == "statement"]
    assert got == res["ok"]
    assert all(p.stat().st_size <= 16384 for p in tmp_path.glob("*.hjs"))
    assert not list(tmp_path.glob("*.open.hjs"))
    assert chain_ok(tmp_path)


@pytest_twisted.inlineCallbacks
def test_the_sync_process_syncs_refuses_what_it_cannot_and_comes_back(tmp_path: Path):
    from twisted.internet import reactor

    from hoopd.journal.writer import SyncProcess
    syncer = SyncProcess(reactor)
    fd = os.open(tmp_path / "seg", os.O_WRONLY | os.O_CREAT, 0o600)
    r_end, w_end = os.pipe()
    try:
        os.write(fd, b"record")
        assert (yield syncer(fd)) is None
        with pytest.raises(OSError) as e:  # a pipe cannot be fsynced: the errno comes back
            yield syncer(r_end)
        assert e.value.errno == errno.EINVAL
        first = syncer.child.pid
        syncer.child.signalProcess("KILL")
        with pytest.raises(OSError, match="sync process exited"):
            yield syncer(fd)  # (sent before the loss was noticed, or after: refused either way)
        for _ in range(50):  # until the loss is seen, then a new helper serves
            if syncer._conn is None:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        assert (yield syncer(fd)) is None and syncer.child.pid != first
    finally:
        syncer.stop()
        for x in (fd, r_end, w_end):
            os.close(x)
