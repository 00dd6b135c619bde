"""Chain anchors: a journal whose newest records were cut fails ``verify``, saying what is missing."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from hoopd import cli
from hoopd.journal import records as r
from hoopd.journal.anchor import PREFIX, Anchor, AnchorSink, anchor_file, read_anchor
from hoopd.journal.verify import verify
from tests.test_journal_helpers import Log, make_writer


def rec(i: int) -> dict:
    return {"session": "s1", "seq": i, "kind": "statement", "stmt": i, "op": "query", "text": f"select {i}"}


@pytest.fixture
def syslog(tmp_path: Path):
    """A real syslog-style datagram socket (what /dev/log is)."""
    path = str(tmp_path / "log.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    yield path, s
    s.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536).decode())
        except BlockingIOError:
            return out


def journal(tmp_path: Path, syslog_path: str = "", **cfg):
    state = tmp_path / "state"
    sink = AnchorSink(anchor_file(state, "gw-1"), syslog_path, log=Log())
    w = make_writer(tmp_path / "journal", anchor=sink, anchor_interval=60.0, **cfg)
    return w, state


def check(folder: Path, anchor_path: Path, whole_dir: bool = True):
    return verify(r.list_segments(folder), None, whole_dir, anchors={str(anchor_path): read_anchor(anchor_path)})


def test_the_head_is_anchored_at_start_interval_rotation_and_stop(tmp_path: Path, syslog) -> None:
    path, sock = syslog
    w, state = journal(tmp_path, path, rotate_bytes=4096)
    w.startService()
    file = anchor_file(state, "gw-1")
    first = read_anchor(file)
    assert (first.node, first.segment, first.records) == ("gw-1", w.segment.name.replace(".open", ""), 1)
    assert (state.stat().st_mode & 0o777, file.stat().st_mode & 0o777) == (0o700, 0o600)
    w.write(rec(1))
    assert read_anchor(file) == first  # between anchors the file stands still
    w.clock.advance(60)
    moved = read_anchor(file)
    assert moved.records == 2 and moved.hash != first.hash
    w.clock.advance(60)
    assert read_anchor(file) == moved  # nothing new: not anchored again
    for i in range(60):  # past rotate_bytes: the new segment's header is anchored at once
        w.write(rec(i))
    assert read_anchor(file).segment != first.segment and read_anchor(file).records <= 3
    w.write(rec(99))
    w.stopService()
    last = read_anchor(file)
    assert last.records >= 3  # the segment_end record
    lines = received(sock)
    assert len(lines) >= 4 and all(line.startswith("<30>hoopd-journal[") and PREFIX in line for line in lines)
    assert Anchor.from_json(lines[-1]) == last  # a syslog line is an anchor too
    rep = check(tmp_path / "journal", file)
    assert rep.ok and any("present" in n for n in rep.notes), (rep.broken, rep.notes)


def test_deleting_the_newest_segment_fails_verify(tmp_path: Path) -> None:
    w, state = journal(tmp_path, rotate_bytes=4096)
    w.startService()
    for i in range(80):
        w.write(rec(i))
    w.stopService()
    segs = sorted(r.list_segments(tmp_path / "journal"), key=lambda s: s.counter)
    assert len(segs) >= 2
    assert verify(segs, None, True).ok  # the chain alone cannot tell
    segs[-1].path.unlink()
    rep = check(tmp_path / "journal", anchor_file(state, "gw-1"))
    assert not rep.ok
    assert f"{segs[-1].base}: offset 0: missing, but anchor" in str(rep.broken[0]) and "was cut" in str(rep.broken[0])


def test_cutting_the_open_segment_at_a_record_boundary_fails_verify(tmp_path: Path) -> None:
    w, state = journal(tmp_path)
    w.startService()
    for i in range(5):
        w.write(rec(i))
    w.clock.advance(60)  # anchored: header + 5 statements
    seg = w.segment
    size = seg.stat().st_size
    w.write(rec(5))
    offsets = []
    with open(seg, "rb") as f:
        for off, raw, _ in r.iter_raw(f, r.Scan()):
            offsets.append(off)
    os.truncate(seg, offsets[4])  # keep the header and 3 statements: a valid chain
    assert verify(r.list_segments(tmp_path / "journal"), None, True).ok
    rep = check(tmp_path / "journal", anchor_file(state, "gw-1"))
    assert not rep.ok and "holds 4 records but anchor" in str(rep.broken[0]), rep.broken
    assert size > offsets[4]
    w.stopService()


def test_a_rewritten_chain_fails_verify(tmp_path: Path) -> None:
    # without a key anyone can write a fresh valid chain under the same names: the anchor's hash differs
    w, state = journal(tmp_path)
    w.startService()
    w.write(rec(1))
    w.stopService()
    saved = anchor_file(state, "gw-1").read_text()
    for s in r.list_segments(tmp_path / "journal"):
        s.path.unlink()
    w2, _ = journal(tmp_path)
    w2.startService()
    w2.write(rec(2))
    w2.stopService()
    forged = list(r.list_segments(tmp_path / "journal"))
    assert [s.base for s in forged] == [Anchor.from_json(saved).segment]  # same name, other records
    assert verify(forged, None, True).ok
    anchor = tmp_path / "saved.json"
    anchor.write_text(saved)
    rep = check(tmp_path / "journal", anchor)
    assert not rep.ok and "with another hash: the segment was rewritten" in str(rep.broken[0]), rep.broken


def test_cli_checks_the_anchor_from_the_config_or_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    w, state = journal(tmp_path, rotate_bytes=4096)
    w.startService()
    for i in range(80):
        w.write(rec(i))
    w.stopService()
    conf = tmp_path / "hoopd.toml"
    conf.write_text(f'[gateway]\nstate_dir = "{state}"\n[journal]\ndir = "{tmp_path / "journal"}"\n')
    assert cli.main(["journal", "verify", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "checked against anchor" in out and "present" in out and out.splitlines()[-1].startswith("OK:")
    newest = max(r.list_segments(tmp_path / "journal"), key=lambda s: s.counter)
    newest.path.unlink()
    assert cli.main(["journal", "verify", "--config", str(conf)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN: {newest.base}: offset 0: missing" in out and "FAILED" in out
    line = tmp_path / "from-syslog.txt"
    line.write_text(f"Dec  3 08:00:00 host hoopd-journal[42]: {PREFIX}{anchor_file(state, 'gw-1').read_text()}")
    assert cli.main(["journal", "verify", "--dir", str(tmp_path / "journal"), "--anchor", str(line)]) == 1
    (tmp_path / "bad.json").write_text("{}")
    assert cli.main(["journal", "verify", "--dir", str(tmp_path / "journal"), "--anchor",
                     str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not an anchor ('node' missing" in capsys.readouterr().err


def test_an_unwritable_anchor_place_is_logged_once_and_the_journal_goes_on(tmp_path: Path) -> None:
    log = Log()
    (tmp_path / "state").write_text("a file where the folder should be")
    sink = AnchorSink(anchor_file(tmp_path / "state", "gw-1"), str(tmp_path / "no-such-socket"), log=log)
    w = make_writer(tmp_path / "journal", anchor=sink)
    w.startService()
    w.write(rec(1))
    w.clock.advance(60)
    w.write(rec(2))
    w.clock.advance(60)
    w.stopService()
    said = [(level, msg.rsplit(": [Errno", 1)[0]) for level, msg in log.events if "chain anchor" in msg]
    # the file and the syslog socket, each once; no socket at all is a warning
    assert said == [("error", f"journal: cannot write the chain anchor to {anchor_file(tmp_path / 'state', 'gw-1')}"),
                    ("warn", f"journal: cannot write the chain anchor to {tmp_path / 'no-such-socket'}")], said
    assert len(list(r.list_segments(tmp_path / "journal"))) == 1
