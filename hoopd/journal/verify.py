"""Checking a journal's hash chain: every record, every segment link, per node.

A changed byte breaks the hash of its record; a removed or inserted record breaks the
next one; a removed, reordered or renamed segment breaks the link in the next segment's
header (``prev_segment`` and ``prev``). Segments deleted by retention are named in a
``retention`` record of the chain, so only those may be missing before the first one.
Records cut from the end leave a valid chain; anchors (journal/anchor.py) catch that:
the anchored record must still be there, with the anchored hash.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoopd.journal import records as r
from hoopd.journal.anchor import Anchor
from hoopd.journal.reader import Progress, open_segment, size_of


class KeyNeeded(Exception):
    """The journal is keyed and no key was given."""


@dataclass
class Broken:
    path: Path
    offset: int
    session: str | None
    seq: int | None
    problem: str

    def __str__(self) -> str:
        who = f" (session {self.session} seq {self.seq})" if self.session else ""
        return f"{self.path}: offset {self.offset}{who}: {self.problem}"


@dataclass
class Report:
    segments: int = 0
    records: int = 0
    broken: list[Broken] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken and self.segments > 0


class _Stop(Exception):
    pass


def verify(segs: list[r.SegmentName], key: bytes | None, whole_dir: bool, progress: Progress | None = None,
           anchors: dict[str, Anchor] | None = None) -> Report:
    """Check the chains of the given segments (grouped by node, in counter order).

    ``whole_dir``: the segments are all there is, so a chain may only start after
    segments that retention deleted (and said so in the chain). ``anchors``: where each
    came from -> anchor; the journal must still hold each anchored record."""
    rep = Report()
    progress = progress or Progress()
    progress.start(sum(size_of(s) for s in segs))
    nodes: dict[str, list[r.SegmentName]] = {}
    for s in sorted(segs, key=lambda s: (s.node, s.counter)):
        nodes.setdefault(s.node, []).append(s)
    deleted: set[str] = set()
    starts: list[tuple[r.SegmentName, str]] = []
    done = 0
    anchored: dict[tuple[str, str], list[tuple[str, Anchor]]] = {}
    for origin, a in (anchors or {}).items():
        anchored.setdefault((a.node, a.segment), []).append((origin, a))
    counted: dict[tuple[str, str], int] = {}  # (node, segment) -> records, of chains checked to the end
    checked: set[str] = set()
    broken_nodes: set[str] = set()
    for node, chain in nodes.items():
        c = _Chain(rep, key, deleted, starts, anchored, checked)
        try:
            for i, seg in enumerate(chain):
                c.segment(seg, newest=i == len(chain) - 1, done=done, progress=progress)
                done += size_of(seg)
        except _Stop:
            broken_nodes.add(node)  # that break is the finding; its anchors are not checked
            continue
        counted.update(((node, base), n) for base, n in c.counts.items())
    for origin, a in (anchors or {}).items():
        if origin not in checked and a.node not in broken_nodes:
            _check_anchor(rep, origin, a, counted, whole_dir, deleted)
    for seg, before in starts:
        if not whole_dir:
            rep.notes.append(f"{seg.path.name} follows {before}, which was not given: the chain is checked from there")
        elif before in deleted:
            rep.notes.append(f"node {seg.node}: earlier segments (up to {before}) were deleted by retention")
        else:
            rep.broken.append(Broken(seg.path, 0, None, None, f"follows segment {before}, which is missing"))
    progress.finish()
    return rep


def _check_anchor(rep: Report, origin: str, a: Anchor, counted: dict[tuple[str, str], int], whole_dir: bool,
                  deleted: set[str]) -> None:
    """An anchor the chain did not reach: say what is missing."""
    where = _where(origin, a)
    n = counted.get((a.node, a.segment))
    if n is not None:
        rep.broken.append(Broken(Path(a.segment), 0, None, None, f"holds {n} records but {where}: records were cut"
                                 " from its end"))
    elif a.segment in deleted:
        rep.notes.append(f"{where}: its segment was deleted by retention; not checked")
    elif whole_dir:
        rep.broken.append(Broken(Path(a.segment), 0, None, None, f"missing, but {where}: the journal was cut"
                                 " (this segment and any after it were removed)"))
    else:
        rep.notes.append(f"{where}: its segment was not given; not checked")


def _where(origin: str, a: Anchor) -> str:
    return f"anchor {origin} names record {a.records} of {a.segment} (node {a.node}, anchored {a.ts})"


class _Chain:
    def __init__(self, rep: Report, key: bytes | None, deleted: set[str],
                 starts: list[tuple[r.SegmentName, str]],
                 anchored: dict[tuple[str, str], list[tuple[str, Anchor]]], checked: set[str]) -> None:
        self.rep = rep
        self.anchored = anchored
        self.checked = checked  # origins of the anchors found
        self.counts: dict[str, int] = {}  # segment -> records
        self.key = key
        self.deleted = deleted
        self.starts = starts
        self.last: bytes | None = None  # last hash of the previous segment
        self.prev_base: str | None = None

    def fail(self, seg: r.SegmentName, off: int, obj: Any, problem: str) -> None:
        d = obj if isinstance(obj, dict) else {}
        self.rep.broken.append(Broken(seg.path, off, d.get("session"), d.get("seq"), problem))
        raise _Stop

    def segment(self, seg: r.SegmentName, newest: bool, done: int, progress: Progress) -> None:
        self.rep.segments += 1
        scan = r.Scan()
        prev = r.GENESIS
        n = 0
        anchors = self.anchored.get((seg.node, seg.base), [])
        with open_segment(seg) as f:
            try:
                for off, raw, obj in r.iter_raw(f, scan):
                    progress.advance(done + off)
                    h = r.record_hash(raw)
                    if not isinstance(obj, dict) or h is None:
                        self.fail(seg, off, obj, "not a journal record (no hash)")
                    if n == 0:
                        prev = self.header(seg, off, obj)
                    if not hmac.compare_digest(r.link(prev, raw[:-r.HASH_LEN], self.key), h):
                        self.fail(seg, off, obj, "hash does not match: this record was changed, or one before it"
                                  " was removed or inserted" if n else "hash of the segment header does not match")
                    prev = h
                    n += 1
                    for origin, a in anchors:
                        if a.records == n:
                            self.anchor(seg, off, obj, origin, a, h)
                    if obj.get("kind") == r.RETENTION:
                        self.deleted.update(obj.get("deleted") or ())
            except r.BadRecord as e:
                self.fail(seg, e.offset, None, f"bytes that are not a record ({e.problem})")
        self.rep.records += n
        if n == 0:
            self.fail(seg, 0, None, "no segment header" + (" (torn)" if scan.torn else " (empty file)"))
        if scan.torn:
            if not seg.open:
                self.fail(seg, scan.end, None, f"finished segment ends with {scan.size - scan.end} bytes of a"
                          " torn record")
            self.rep.notes.append(f"{seg.path.name}: last record incomplete at offset {scan.end} "
                                  + ("(still being written)" if newest else "(left by a crash; closed at next start)"))
        self.last, self.prev_base = prev, seg.base
        self.counts[seg.base] = n

    def anchor(self, seg: r.SegmentName, off: int, obj: Any, origin: str, a: Anchor, h: bytes) -> None:
        if not hmac.compare_digest(h.hex(), a.hash):
            self.fail(seg, off, obj, f"{_where(origin, a)} with another hash: the segment was rewritten")
        self.checked.add(origin)
        self.rep.notes.append(f"checked against {_where(origin, a)}: present")

    def header(self, seg: r.SegmentName, off: int, obj: dict[str, Any]) -> bytes:
        """Check a segment header; return the hash the header chains to."""
        if obj.get("kind") != r.SEGMENT:
            self.fail(seg, off, obj, "the first record is not a segment header")
        if not isinstance(obj.get("v"), int) or obj["v"] > r.VERSION:
            self.fail(seg, off, obj, f"unknown journal format version {obj.get('v')!r}")
        if obj.get("segment") != seg.base:
            self.fail(seg, off, obj, f"the header names segment {obj.get('segment')}: the file was renamed")
        if obj.get("keyed"):
            if self.key is None:
                raise KeyNeeded(f"{seg.path.name} is keyed (HMAC, key id {obj.get('key_id')}): "
                                "give the key with --key-file or --config")
            if obj.get("key_id") != r.key_id(self.key):
                self.fail(seg, off, obj, f"written with another HMAC key (key id {obj.get('key_id')}, "
                          f"given key {r.key_id(self.key)})")
        elif self.key is not None:
            self.fail(seg, off, obj, "segment is not keyed but a key was given (rewritten without the key?)")
        before, prev = obj.get("prev_segment"), obj.get("prev")
        if self.prev_base is None:
            if before is not None:
                self.starts.append((seg, before))
            return prev if isinstance(prev, bytes) and len(prev) == r.HASH_LEN else r.GENESIS
        if before != self.prev_base:
            self.fail(seg, off, obj, f"follows segment {before}, but the segment before it here is {self.prev_base}"
                      " (a segment is missing or out of order)")
        if prev != self.last:
            self.fail(seg, off, obj, f"does not chain to the last record of {self.prev_base}"
                      " (records were removed from its end, or it was replaced)")
        assert self.last is not None
        return self.last
