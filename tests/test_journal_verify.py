"""verify: a flipped byte, a removed record, a removed/reordered/renamed segment, a torn
tail, and keyed chains each break the chain at the right place."""
from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock

from hoopd.journal import records as r
from hoopd.journal.verify import KeyNeeded, Report, verify
from tests.test_journal_helpers import T0, make_writer

KEY = b"0123456789abcdef0123456789abcdef"


def build(folder: Path, segments: int = 3, per: int = 4, key: bytes | None = None, node: str = "gw-1") -> list[Path]:
    clock = Clock()
    clock.advance(T0)
    for s in range(segments):
        w = make_writer(folder, clock, hmac_key=key, node=node)
        w.startService()
        for i in range(per):
            w.write({"session": f"sess{s}", "seq": i + 1, "kind": "statement", "text": f"select {s}, {i}"})
            clock.advance(0.5)
        w.stopService()
    return [seg.path for seg in r.list_segments(folder) if seg.node == node]


def offsets(path: Path) -> list[tuple[int, bytes, dict]]:
    with open(path, "rb") as f:
        return list(r.iter_raw(f, r.Scan()))


def check(folder: Path, key: bytes | None = None, whole: bool = True) -> Report:
    return verify(r.list_segments(folder), key, whole_dir=whole)


def test_intact_journal_verifies(tmp_path: Path) -> None:
    build(tmp_path)
    rep = check(tmp_path)
    assert rep.ok and rep.segments == 3 and rep.records == 3 * (4 + 2) and not rep.notes


def test_flipped_byte_names_file_offset_session_and_seq(tmp_path: Path) -> None:
    segs = build(tmp_path)
    off, raw, obj = offsets(segs[1])[2]
    data = bytearray(segs[1].read_bytes())
    pos = off + raw.index(b"select 1, 1")
    data[pos + 7] ^= 0x01  # "1" -> "0": still valid msgpack
    segs[1].write_bytes(bytes(data))
    rep = check(tmp_path)
    assert not rep.ok
    b = rep.broken[0]
    assert (b.path, b.offset, b.session, b.seq) == (segs[1], off, "sess1", 2)
    assert "hash does not match" in b.problem


def test_flipped_hash_byte_in_a_header(tmp_path: Path) -> None:
    segs = build(tmp_path)
    data = bytearray(segs[2].read_bytes())
    off, raw, _ = offsets(segs[2])[0]
    data[off + len(raw) - 1] ^= 0xFF
    segs[2].write_bytes(bytes(data))
    rep = check(tmp_path)
    assert rep.broken[0].offset == 0 and "header" in rep.broken[0].problem


def test_removed_record(tmp_path: Path) -> None:
    segs = build(tmp_path)
    recs = offsets(segs[0])
    off, raw, _ = recs[2]
    data = segs[0].read_bytes()
    segs[0].write_bytes(data[:off] + data[off + len(raw):])
    b = check(tmp_path).broken[0]
    assert b.path == segs[0] and b.offset == off and b.seq == 3  # the record after the removed one


def test_removed_last_record_of_a_finished_segment(tmp_path: Path) -> None:
    segs = build(tmp_path)
    off, _, obj = offsets(segs[0])[-1]
    assert obj["kind"] == "segment_end"
    segs[0].write_bytes(segs[0].read_bytes()[:off])
    b = check(tmp_path).broken[0]
    assert b.path == segs[1] and b.offset == 0 and "does not chain" in b.problem


def test_removed_segment_in_the_middle(tmp_path: Path) -> None:
    segs = build(tmp_path)
    segs[1].unlink()
    b = check(tmp_path).broken[0]
    assert b.path == segs[2] and "missing or out of order" in b.problem and segs[1].name in b.problem


def test_removed_first_segment_is_missing_unless_given_files(tmp_path: Path) -> None:
    segs = build(tmp_path)
    segs[0].unlink()
    rep = check(tmp_path)
    assert not rep.ok and "which is missing" in rep.broken[0].problem
    rep = check(tmp_path, whole=False)  # the user chose these files: the chain is checked from the first
    assert rep.ok and "was not given" in rep.notes[0]


def test_reordered_segments(tmp_path: Path) -> None:
    segs = build(tmp_path)
    a, b = segs[1].read_bytes(), segs[2].read_bytes()
    segs[1].write_bytes(b)
    segs[2].write_bytes(a)
    rep = check(tmp_path)
    assert rep.broken[0].path == segs[1] and "renamed" in rep.broken[0].problem


def test_renamed_segments_to_change_their_order(tmp_path: Path) -> None:
    segs = build(tmp_path)
    # give the last segment an earlier counter, as if it came first
    moved = segs[2].with_name(segs[2].name.replace("-000003.hjs", "-000000.hjs"))
    segs[2].rename(moved)
    assert not check(tmp_path).ok


def test_torn_tail_only_allowed_while_open(tmp_path: Path) -> None:
    segs = build(tmp_path, segments=2)
    data = segs[1].read_bytes()
    segs[1].write_bytes(data[:-5])
    b = check(tmp_path).broken[0]
    assert b.path == segs[1] and "torn" in b.problem
    segs[1].write_bytes(data)
    clock = Clock()
    clock.advance(T0 + 100)
    w = make_writer(tmp_path, clock)
    w.startService()
    w.write({"session": "x", "seq": 1, "kind": "statement"})
    with open(w.segment, "ab") as f:  # a record being written right now
        f.write(b"\x85\xa2ts")
    rep = check(tmp_path)
    assert rep.ok and "still being written" in rep.notes[0]
    w.stopService()


def test_garbage_that_is_not_msgpack(tmp_path: Path) -> None:
    segs = build(tmp_path, segments=1)
    off, raw, _ = offsets(segs[0])[3]
    data = bytearray(segs[0].read_bytes())
    data[off] = 0xC1  # never valid in msgpack
    segs[0].write_bytes(bytes(data))
    b = check(tmp_path).broken[0]
    assert b.offset == off and "not a record" in b.problem


def test_hmac_key_needed_right_and_not_bypassable(tmp_path: Path) -> None:
    build(tmp_path, key=KEY)
    assert check(tmp_path, KEY).ok
    with pytest.raises(KeyNeeded):
        check(tmp_path)
    rep = check(tmp_path, b"another key, also long enough")
    assert "another HMAC key" in rep.broken[0].problem


def test_unkeyed_rewrite_is_caught_when_verifying_with_the_key(tmp_path: Path) -> None:
    build(tmp_path, key=KEY)
    other = tmp_path / "forged"
    other.mkdir()
    build(other)  # a forger without the key writes an unkeyed chain with the same names
    for seg in r.list_segments(other):
        seg.path.replace(tmp_path / seg.path.name)
    rep = check(tmp_path, KEY)
    assert not rep.ok and "not keyed" in rep.broken[0].problem


def test_chains_of_several_nodes_are_checked_separately(tmp_path: Path) -> None:
    build(tmp_path, node="gw-1")
    segs2 = build(tmp_path, node="gw-2")
    assert check(tmp_path).ok
    segs2[1].unlink()
    rep = check(tmp_path)
    assert len(rep.broken) == 1 and rep.broken[0].path == segs2[2]
