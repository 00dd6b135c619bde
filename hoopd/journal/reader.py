"""Reading journals: records in time order across segments and nodes, a session index,
and following the newest segments as they are written (across rotations).

Readers never write. A segment still being written is read up to its last complete
record; a segment renamed from ``.open`` to finished while being read is followed.
"""
from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import msgpack

from hoopd.journal import records as r


@dataclass
class Entry:
    seg: r.SegmentName
    offset: int
    rec: dict[str, Any]

    @property
    def ts(self) -> datetime:
        return self.rec["ts"]


class Progress:
    """Progress over a known number of bytes (the CLI draws it; the default does nothing)."""

    def start(self, total: int) -> None: ...

    def advance(self, done: int) -> None: ...

    def finish(self) -> None: ...


def open_segment(seg: r.SegmentName):  # type: ignore[no-untyped-def]
    """Open a segment for reading, also when it was renamed to its finished name meanwhile."""
    try:
        return open(seg.path, "rb", buffering=0)
    except FileNotFoundError:
        if not seg.open:
            raise
        return open(seg.path.parent / seg.base, "rb", buffering=0)


def size_of(seg: r.SegmentName) -> int:
    for p in (seg.path, seg.path.parent / seg.base):
        try:
            return p.stat().st_size
        except FileNotFoundError:
            continue
    return 0


class Journal:
    """The segments in one folder."""

    def __init__(self, folder: Path, progress: Progress | None = None) -> None:
        self.folder = folder
        self.progress = progress or Progress()
        self.warnings: list[str] = []
        self._starts: dict[str, dict[str, Any]] = {}
        self._indexed: set[Path] = set()
        self._missing: set[str] = set()

    def segments(self) -> list[r.SegmentName]:
        return r.list_segments(self.folder)

    def by_node(self, segs: Iterable[r.SegmentName] | None = None) -> dict[str, list[r.SegmentName]]:
        """Segments per node, in the order they were written (by counter)."""
        out: dict[str, list[r.SegmentName]] = {}
        for s in sorted(self.segments() if segs is None else segs, key=lambda s: (s.node, s.counter)):
            out.setdefault(s.node, []).append(s)
        return out

    def read(self, seg: r.SegmentName, start: int = 0) -> Iterator[Entry]:
        """The records of one segment from ``start``; stops (with a warning) at bytes that are
        not a record; leaves out a torn last record."""
        scan = r.Scan()
        try:
            f = open_segment(seg)
        except FileNotFoundError:
            return  # deleted meanwhile (retention)
        with f:
            try:
                for off, _, obj in r.iter_raw(f, scan, start):
                    if isinstance(obj, dict) and "ts" in obj:
                        self._note(obj)
                        yield Entry(seg, off, r.expand(obj))
            except r.BadRecord as e:
                self.warnings.append(f"{seg.path.name}: unreadable from offset {e.offset} ({e.problem}); "
                                     "run `hoopd journal verify`")

    def select(self, since: datetime | None = None, until: datetime | None = None) -> list[r.SegmentName]:
        """The segments that can hold records in [since, until]."""
        out = []
        for segs in self.by_node().values():
            for i, s in enumerate(segs):
                if until is not None and s.created_at > until.timestamp():
                    continue
                if since is not None and i + 1 < len(segs) and segs[i + 1].created_at <= since.timestamp():
                    continue
                out.append(s)
        return out

    def records(self, since: datetime | None = None, until: datetime | None = None,
                segs: list[r.SegmentName] | None = None) -> Iterator[Entry]:
        """Records with since <= ts <= until, in time order (merged across nodes)."""
        chosen = self.select(since, until) if segs is None else segs
        total = sum(size_of(s) for s in chosen)
        self.progress.start(total)
        done = [0]

        def node_stream(node_segs: list[r.SegmentName]) -> Iterator[Entry]:
            for s in node_segs:
                base = done[0]
                last = 0
                for e in self.read(s):
                    last = e.offset
                    done[0] = base + last
                    self.progress.advance(done[0])
                    if (since is None or e.ts >= since) and (until is None or e.ts <= until):
                        yield e
                done[0] = base + max(last, size_of(s))

        streams = [node_stream(v) for v in self.by_node(chosen).values()]
        yield from heapq.merge(*streams, key=lambda e: e.ts)
        self.progress.finish()

    def last(self, n: int, match: Callable[[dict[str, Any]], bool],
             ends: dict[str, tuple[r.SegmentName, int]] | None = None) -> list[Entry]:
        """The last n matching records (up to ``ends``, node -> (segment, offset)), oldest
        first, reading segments newest first only as far back as needed."""
        if n <= 0:
            return []
        limit = {seg.path: off for seg, off in (ends or {}).values()}
        found: list[Entry] = []
        for seg in reversed(self.segments()):
            end = limit.get(seg.path)
            got = deque((e for e in self.read(seg) if (end is None or e.offset < end) and match(e.rec)), maxlen=n)
            found = list(got) + found
            if len(found) >= n:
                break
        found.sort(key=lambda e: e.ts)
        return found[-n:]

    # --- sessions ---------------------------------------------------------------------

    def _note(self, rec: dict[str, Any]) -> None:
        if rec.get("kind") == r.SESSION_START:
            self._starts[rec.get("session", "")] = rec
            self._missing.discard(rec.get("session", ""))

    def session_start(self, sid: str) -> dict[str, Any] | None:
        """The session_start record of a session, looking through older segments if needed."""
        if sid in self._starts:
            return self._starts[sid]
        if sid in self._missing:
            return None
        for seg in reversed(self.segments()):
            key = seg.path.parent / seg.base
            if key in self._indexed:
                continue
            self._indexed.add(key)
            for _ in self.read(seg):
                pass
            if sid in self._starts:
                return self._starts[sid]
        self._missing.add(sid)
        return None

    def find_session(self, prefix: str) -> list[str]:
        """Session ids starting with ``prefix`` (from every session_start in the journal)."""
        self.session_start("\0")  # index everything
        return sorted(s for s in self._starts if s.startswith(prefix))

    # --- following --------------------------------------------------------------------

    def end_positions(self) -> dict[str, tuple[r.SegmentName, int]]:
        """Where each node's newest segment ends now (to follow from)."""
        out = {}
        for node, segs in self.by_node().items():
            out[node] = (segs[-1], size_of(segs[-1]))
        return out

    def follow(self, start: dict[str, tuple[r.SegmentName, int]], poll: float = 0.25,
               sleep: Callable[[float], None] = time.sleep, stop: Callable[[], bool] = lambda: False
               ) -> Iterator[Entry]:
        """Records as they are written, from ``start`` (node -> segment, offset), moving to
        each node's next segment after a rotation and picking up new nodes."""
        cursors = {node: _Cursor(self, seg, off) for node, (seg, off) in start.items()}
        while not stop():
            got = False
            for cur in list(cursors.values()):
                for e in cur.poll():
                    got = True
                    yield e
            newest = self.by_node()
            for node, segs in newest.items():
                cur = cursors.get(node)
                if cur is None:
                    cursors[node] = _Cursor(self, segs[0], 0)
                    got = True
                    continue
                later = [s for s in segs if s.counter > cur.seg.counter]
                if later:
                    for e in cur.poll():  # the rest of the finished segment
                        yield e
                    cur.close()
                    cursors[node] = _Cursor(self, later[0], 0)
                    got = True
            if not got:
                sleep(poll)
        for cur in cursors.values():
            cur.close()


class _Cursor:
    """Reads one segment incrementally."""

    def __init__(self, journal: Journal, seg: r.SegmentName, offset: int) -> None:
        self.journal = journal
        self.seg = seg
        self.offset = offset  # of the next record
        self.origin = offset  # where the unpacker's stream starts
        self.f: Any = None
        self.up = r.new_unpacker()
        self.bad = False

    def poll(self) -> Iterator[Entry]:
        if self.bad:
            return
        if self.f is None:
            try:
                self.f = open_segment(self.seg)
            except FileNotFoundError:
                return
            self.f.seek(self.offset)
        while True:
            data = self.f.read(1 << 20)
            if not data:
                return
            self.up.feed(data)
            while True:
                here = self.offset
                try:
                    obj = self.up.unpack()
                except msgpack.OutOfData:
                    break
                except ValueError as e:
                    self.journal.warnings.append(f"{self.seg.path.name}: unreadable at offset {here}: {e}")
                    self.bad = True
                    return
                self.offset = self.origin + self.up.tell()
                if isinstance(obj, dict) and "ts" in obj:
                    self.journal._note(obj)
                    yield Entry(self.seg, here, r.expand(obj))

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
