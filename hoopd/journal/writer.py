"""The journal writer: segments, rotation, crash recovery, retention, hash chain, fsync.

One ``JournalWriter`` per gateway process (it is a Twisted service: add it to the
service tree; it starts before the listeners). ``write(record)`` appends one record
with a single ``write()`` on an O_APPEND descriptor and raises ``JournalUnavailable``
when it cannot: the caller refuses the statement (fail closed). After a failure the
segment is closed at its last complete record and the next write opens a new one, so
recording resumes by itself when the disk recovers, and nothing is ever appended after
a torn record.

fsync never runs on the reactor's thread while sessions run: a sync runs in a helper
process (``SyncProcess``, hoopd.journal.syncer) that gets the segment's descriptor with
each request, and
``durable()`` answers a Deferred that fires once a sync that began after everything
written so far has finished. With fsync = "always" every statement waits for that before
it is forwarded (JournalStage); statements of all sessions that arrive while a sync is in
flight share the next one (group commit), other records are synced within
``fsync_interval``. Rotation and stop sync on the reactor (once per segment).

All time comes from the injected ``clock`` (an IReactorTime); all file system calls go
through ``ops`` (the ``os`` module by default), so tests can make the disk fail.
``anchor`` (journal/anchor.py) receives the chain's head at every new segment, every
``anchor_interval`` when it moved, and at the end.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from hoopd.journal import records as r
from hoopd.journal.anchor import Anchor, fsync_dir
from hoopd.journal.config import JournalConfig
from hoopd.log import get_logger

RETENTION_CHECK = 600.0  # seconds between retention sweeps (also run on start and rotation)


class JournalUnavailable(Exception):
    """A record could not be written; whatever it describes must not happen."""


Syncer = Callable[[int], "Deferred[None]"]  # fsync this descriptor away from the reactor; fails with OSError


class _Answers(Protocol):
    """The reactor's end of the syncer's socket: one answer per request, in order."""

    def __init__(self, owner: "SyncProcess") -> None:
        self.owner = owner
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            answer, self.buf = self.buf[:2], self.buf[2:]
            d = self.owner.waiting.popleft()
            if answer[:1] == b"s":
                d.callback(None)
            else:
                d.errback(OSError(answer[1], os.strerror(answer[1])))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.owner.lost(self)


class SyncProcess:
    """The production Syncer: fsync in a helper process (hoopd.journal.syncer), started at
    the first sync and again after it dies; the descriptor travels with each request."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.waiting: deque[Deferred[None]] = deque()
        self._conn: _Answers | None = None
        self.child: Any = None  # the helper's process transport

    def _start(self) -> _Answers:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.child = self.reactor.spawnProcess(ProcessProtocol(), sys.executable,
                                                   [sys.executable, "-m", "hoopd.journal.syncer"],
                                                   env=os.environ.copy(),
                                                   childFDs={0: "w", 1: 1, 2: 2, 3: theirs.fileno()})
            conn = _Answers(self)
            self.reactor.adoptStreamConnection(mine.fileno(), socket.AF_UNIX, _Once(conn))
        finally:
            mine.close()
            theirs.close()
        return conn

    def __call__(self, fd: int) -> "Deferred[None]":
        if self._conn is None:
            self._conn = self._start()
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        self._conn.transport.sendFileDescriptor(fd)  # type: ignore[union-attr]
        self._conn.transport.write(b"S")  # type: ignore[union-attr]
        return d

    def lost(self, conn: _Answers) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        lost, self.waiting = self.waiting, deque()  # (an errback may ask for the next sync at once)
        for d in lost:
            d.errback(OSError(errno.EIO, "the journal's sync process exited"))

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.transport.loseConnection()  # type: ignore[union-attr]
            self._conn = None


class _Once(Factory):
    def __init__(self, proto: _Answers) -> None:
        self.proto = proto

    def buildProtocol(self, addr: Any) -> _Answers:
        return self.proto


class JournalWriter(Service):
    """Appends records to the segments of one node under ``config.dir``."""

    name = "journal"

    def __init__(self, config: JournalConfig, node: str, clock: IReactorTime, *, ops: Any = os,
                 log: Any = None, anchor: Callable[[Anchor], None] | None = None,
                 sync: Syncer | None = None) -> None:
        if not config.dir:
            raise ValueError("journal.dir is not set")
        self.config = config
        self.node = node
        self.clock = clock
        self.folder = Path(config.dir)
        self.ops = ops
        self.log = log or get_logger("hoopd.journal")
        self._key = config.hmac_key
        self._packer = r.new_packer()
        self._fd: int | None = None
        self._seg: r.SegmentName | None = None
        self._prev_seg: str | None = None
        self._size = 0  # bytes of complete records in the open segment
        self._records = 0
        self._opened = 0.0
        self._last = r.GENESIS  # hash of the last record written
        self._counter = 1
        self._dirty = False
        self._written = 0  # records appended since start
        self._synced = 0  # of those, how many a finished sync covers
        self._syncing = False  # a sync runs in the syncer
        self._waiters: list[tuple[int, Deferred[None]]] = []  # durable(): (records it needs synced, its Deferred)
        self._process = SyncProcess(clock) if sync is None else None
        self._sync: Syncer = sync or self._process  # type: ignore[assignment]
        self._failing = 0  # failed writes in the current episode (0: healthy)
        self._gap: str | None = None  # why the previous segment ended early (for the next header)
        self._unfinished: list[tuple[r.SegmentName, int]] = []  # abandoned .open files to close later
        self._lock_fd: int | None = None
        self._age_call: Any = None
        self._sync_loop: LoopingCall | None = None
        self._retention_loop: LoopingCall | None = None
        self._anchor_loop: LoopingCall | None = None
        self._anchor = anchor
        self.last_anchor: Anchor | None = None
        # hooks (metrics, live followers): called after each record written / each failed write
        self.written_hooks: list[Callable[[dict[str, Any], int, float], None]] = []  # record, bytes, seconds
        self.failed_hooks: list[Callable[[OSError], None]] = []
        self.anchored_hooks: list[Callable[[Anchor], None]] = []
        self.last_error: str | None = None  # while failing: why

    # --- service ----------------------------------------------------------------------

    def startService(self) -> None:
        """Recover, open a fresh segment, apply retention, start timers. Raises OSError."""
        self.ops.makedirs(self.folder, 0o700, exist_ok=True)
        self._lock()
        self._recover()
        self._open_segment()
        Service.startService(self)
        self._start_loops()

    def _start_loops(self) -> None:
        if self.config.fsync != "never":
            self._sync_loop = LoopingCall(self._sync_tick)
            self._sync_loop.clock = self.clock
            self._sync_loop.start(self.config.fsync_interval, now=False)
        if self.config.retention is not None:
            self._retention_loop = LoopingCall(self.apply_retention)
            self._retention_loop.clock = self.clock
            self._retention_loop.start(min(RETENTION_CHECK, self.config.retention), now=True)
        if self._anchor is not None:
            self._anchor_loop = LoopingCall(self.anchor)
            self._anchor_loop.clock = self.clock
            self._anchor_loop.start(self.config.anchor_interval, now=False)

    def _stop_loops(self) -> None:
        for loop in (self._sync_loop, self._retention_loop, self._anchor_loop):
            if loop is not None and loop.running:
                loop.stop()
        self._sync_loop = self._retention_loop = self._anchor_loop = None

    def reconfigure(self, config: JournalConfig) -> None:
        """Apply a reloaded [journal] section. ``dir`` and the HMAC key take a restart."""
        if config.dir != self.config.dir or config.hmac_key != self.config.hmac_key:
            self.log.warn("journal: reload: journal.dir and journal.hmac_key_file changes take a restart")
            config = replace(config, dir=self.config.dir, hmac_key=self.config.hmac_key,
                             hmac_key_file=self.config.hmac_key_file)
        self.config = config
        if self.running:
            self._stop_loops()
            self._start_loops()
            if self._fd is not None:
                self._schedule_age()

    def stopService(self) -> None:
        self._stop_loops()
        self._cancel_age()
        if self._fd is not None:
            try:
                self._finish(self.clock.seconds())
            except OSError as e:
                self.log.error("journal: cannot close segment {seg}: {err}", seg=self._seg.path.name if self._seg else "",
                               err=e)
                self._abandon()
        self._retry_unfinished()
        self.anchor()
        self._release(None if self._synced >= self._written else JournalUnavailable("the journal stopped"))
        if self._process is not None:
            self._process.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        return Service.stopService(self)

    # --- writing ----------------------------------------------------------------------

    @property
    def segment(self) -> Path | None:
        """The segment being written (None between a failure and the next write)."""
        return self._seg.path if self._seg and self._fd is not None else None

    @property
    def healthy(self) -> bool:
        return self._failing == 0

    def write(self, record: dict[str, Any], **head: Any) -> None:
        """Append one record (ts and node are added, then ``head``, e.g. session, seq and
        kind, before the record's own fields: one dict built per record). Raises
        JournalUnavailable."""
        if not self.running:
            raise JournalUnavailable("the journal is not running")
        now = self.clock.seconds()
        t0 = time.perf_counter()
        full = {"ts": r.timestamp(now), "node": self.node, **head, **record}
        try:
            if self._fd is None:
                self._open_segment()
            elif self._size >= self.config.rotate_bytes or now - self._opened >= self.config.rotate_interval:
                self._rotate(now)
            size = self._size
            self._append(full)
        except OSError as e:
            self._failed(e)
            raise JournalUnavailable(f"the audit journal cannot be written: {e.strerror or e}") from None
        if self._failing:
            self.log.info("journal: writing again after {n} failed writes", n=self._failing)
            self._failing = 0
            self.last_error = None
        for hook in self.written_hooks:
            try:
                hook(full, self._size - size, time.perf_counter() - t0)
            except Exception:
                self.log.failure("journal: a written hook failed")

    def anchor(self) -> None:
        """Hand the chain's head to the anchor sink (after an fsync), unless it is anchored already."""
        if self._anchor is None or self._seg is None or self._records == 0:
            return
        head = self._last.hex()
        if self.last_anchor is not None and self.last_anchor.hash == head:
            return
        if self.config.fsync != "never":  # anchor only what a power cut keeps
            try:
                self.sync()
            except OSError as e:
                self._failed(e)
                return
        a = Anchor(self.node, self._seg.base, self._records, head,
                   r.timestamp(self.clock.seconds()).isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        self._anchor(a)
        self.last_anchor = a
        for hook in self.anchored_hooks:
            try:
                hook(a)
            except Exception:
                self.log.failure("journal: an anchored hook failed")

    def sync(self) -> None:
        """fsync the open segment now, on this thread, if anything is unsynced. Raises OSError."""
        if self._fd is not None and self._dirty:
            self.ops.fsync(self._fd)
            self._dirty = False
            self._synced = self._written
            self._release(None)

    def durable(self) -> "Deferred[None] | None":
        """None when every record written so far is synced; else a Deferred that fires when it
        is (after a sync in the syncer), or fails with JournalUnavailable."""
        if self._synced >= self._written:
            return None
        d: Deferred[None] = Deferred()
        self._waiters.append((self._written, d))
        self._sync_later()
        return d

    def _sync_later(self) -> None:
        """Start a sync in the syncer unless one runs (its end starts the next if needed)."""
        if self._fd is None:  # abandoned after a failure: what was not synced may be lost
            self._release(JournalUnavailable("the audit journal cannot be written"))
            return
        if self._syncing or not self._dirty:
            return
        self._syncing = True
        self._dirty = False
        covers = self._written
        seg = self._seg
        d = self._sync(self._fd)

        def done(_: Any) -> None:
            self._syncing = False
            self._synced = max(self._synced, covers)
            self._release(None)
            if self._waiters:
                self._sync_later()

        def failed(f: Failure) -> None:
            self._syncing = False
            err = f.value if isinstance(f.value, OSError) else OSError(errno.EIO, str(f.value))
            if seg is self._seg and self._fd is not None:
                self._failed(err)
            self._release(JournalUnavailable(f"the audit journal cannot be synced: {err.strerror or err}"))
        d.addCallbacks(done, failed)

    def _release(self, error: JournalUnavailable | None) -> None:
        """Fire the durable() Deferreds a finished sync covers (with ``error``: all of them)."""
        if not self._waiters:
            return
        if error is not None:
            ready, self._waiters = self._waiters, []
        else:
            ready = [w for w in self._waiters if w[0] <= self._synced]
            self._waiters = [w for w in self._waiters if w[0] > self._synced]
        for _, d in ready:
            if error is None:
                d.callback(None)
            else:
                d.errback(error)

    def _append(self, record: dict[str, Any]) -> None:
        try:
            raw, h = r.seal(self._packer, record, self._last, self._key)
        except (TypeError, ValueError, OverflowError) as e:
            self._packer = r.new_packer()  # it may hold a partial buffer
            raise JournalUnavailable(f"record cannot be encoded: {e}") from None
        assert self._fd is not None
        n = self.ops.write(self._fd, raw)
        if n != len(raw):
            raise OSError(errno.ENOSPC, f"short write ({n} of {len(raw)} bytes)")
        self._last = h
        self._size += len(raw)
        self._records += 1
        self._written += 1
        self._dirty = True

    def _failed(self, e: OSError) -> None:
        if not self._failing:
            self.log.error("journal: cannot write to {dir}: {err}; statements are refused until it recovers",
                           dir=str(self.folder), err=e)
        self._failing += 1
        self.last_error = str(e)
        for hook in self.failed_hooks:
            try:
                hook(e)
            except Exception:
                self.log.failure("journal: a failed hook failed")
        self._gap = f"previous segment ended early: {e}"
        self._abandon()
        self._release(JournalUnavailable(f"the audit journal cannot be written: {e.strerror or e}"))

    # --- segments ---------------------------------------------------------------------

    def _open_segment(self) -> None:
        now = self.clock.seconds()
        seg = r.SegmentName.make(self.folder, now, self.node, self._counter)
        self._counter += 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = self.ops.open(seg.path, flags, 0o600)
        self._fd, self._seg, self._size, self._records, self._opened = fd, seg, 0, 0, now
        header: dict[str, Any] = {"kind": r.SEGMENT, "v": r.VERSION, "segment": seg.base,
                                  "prev_segment": self._prev_seg, "prev": None if self._prev_seg is None else self._last,
                                  "keyed": self._key is not None}
        if self._key is not None:
            header["key_id"] = r.key_id(self._key)
        if self._gap:
            header["gap"] = self._gap
        try:
            self._append({"ts": r.timestamp(now), "node": self.node, **header})
            if self.config.fsync != "never":
                self.ops.fsync(fd)
                self._sync_dir()
        except (OSError, JournalUnavailable):
            self._fd = self._seg = None
            self._close_quietly(fd)
            self._unlink_quietly(seg.path)
            raise
        self._gap = None
        self._dirty = False
        if self.config.fsync != "never":
            self._synced = self._written
        self._schedule_age()
        self._retry_unfinished()
        self.anchor()  # the new header chains to the last segment's end: this anchors both

    def _rotate(self, now: float) -> None:
        self._finish(now)
        self._open_segment()
        if self.config.retention is not None:
            self.clock.callLater(0, self.apply_retention)  # after the write that rotated

    def _finish(self, now: float) -> None:
        """Close the open segment cleanly: a segment_end record, fsync, rename. Raises OSError."""
        assert self._fd is not None and self._seg is not None
        self._cancel_age()
        self._append({"ts": r.timestamp(now), "node": self.node, "kind": r.SEGMENT_END, "records": self._records + 1})
        fd, seg = self._fd, self._seg
        if self.config.fsync != "never":
            self.ops.fsync(fd)
            self._synced = self._written
            self._release(None)
        self._fd = None
        self._prev_seg = seg.base
        self._close_quietly(fd)
        self._unfinished.append((seg, self._size))
        self._retry_unfinished()

    def _abandon(self) -> None:
        """Stop writing the open segment after a failure: cut it at its last complete record."""
        self._cancel_age()
        if self._fd is None or self._seg is None:
            return
        fd, seg, size = self._fd, self._seg, self._size
        self._fd = None
        self._prev_seg = seg.base
        try:
            self.ops.ftruncate(fd, size)
        except OSError:
            pass
        self._close_quietly(fd)
        self._unfinished.append((seg, size))
        self._retry_unfinished()

    def _retry_unfinished(self) -> None:
        """Rename closed segments to their finished names (after a failure: cut them at their
        last complete record first); what the disk refuses now is retried after the next open."""
        left = []
        for seg, size in self._unfinished:
            try:
                fd = self.ops.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    self.ops.ftruncate(fd, size)
                    if self.config.fsync != "never":
                        self.ops.fsync(fd)
                finally:
                    self.ops.close(fd)
                self.ops.rename(seg.path, self.folder / seg.base)
                if self.config.fsync != "never":
                    self._sync_dir()
            except FileNotFoundError:
                pass
            except OSError:
                left.append((seg, size))
        self._unfinished = left

    def _sync_dir(self) -> None:
        fsync_dir(self.folder, self.ops)

    def _close_quietly(self, fd: int) -> None:
        try:
            self.ops.close(fd)
        except OSError:
            pass

    def _unlink_quietly(self, path: Path) -> None:
        try:
            self.ops.unlink(path)
        except OSError:
            pass

    # --- timers -----------------------------------------------------------------------

    def _schedule_age(self) -> None:
        self._cancel_age()
        due = self._opened + self.config.rotate_interval - self.clock.seconds()
        self._age_call = self.clock.callLater(max(0.0, due), self._age_tick)

    def _cancel_age(self) -> None:
        if self._age_call is not None and self._age_call.active():
            self._age_call.cancel()
        self._age_call = None

    def _age_tick(self) -> None:
        """The open segment reached rotate_interval: rotate it unless it holds only its header."""
        self._age_call = None
        if self._fd is None:
            return
        if self._records <= 1:
            self._opened = self.clock.seconds()
            self._schedule_age()
            return
        try:
            self._rotate(self.clock.seconds())
        except OSError as e:
            self._failed(e)

    def _sync_tick(self) -> None:
        self._sync_later()

    # --- start-up and retention -------------------------------------------------------

    def _lock(self) -> None:
        path = self.folder / f".{self.node}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError(errno.EBUSY, f"another process writes the journal of node {self.node} in {self.folder}") \
                from None
        self._lock_fd = fd

    def _recover(self) -> None:
        """Close segments a crash left open; find the chain's last hash and the next counter."""
        mine = sorted((s for s in r.list_segments(self.folder) if s.node == self.node), key=lambda s: s.counter)
        for seg in mine:
            if seg.open:
                self._recover_segment(seg)
        mine = sorted((s for s in r.list_segments(self.folder) if s.node == self.node), key=lambda s: s.counter)
        if not mine:
            return
        self._counter = mine[-1].counter + 1
        for seg in reversed(mine):
            last = _last_hash(seg.path)
            if last is not None:
                self._last, self._prev_seg = last, seg.base
                return

    def _recover_segment(self, seg: r.SegmentName) -> None:
        end, _ = _complete_prefix(seg.path)
        if end == 0:
            self.log.warn("journal: removing {seg}: a crash left it without a complete record", seg=seg.path.name)
            self.ops.unlink(seg.path)
            return
        size = self.ops.stat(seg.path).st_size
        fd = self.ops.open(seg.path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if size > end:
                self.ops.ftruncate(fd, end)
            self.ops.fsync(fd)
        finally:
            self.ops.close(fd)
        self.ops.rename(seg.path, self.folder / seg.base)
        self.log.warn("journal: closed {seg} left open by a crash ({cut} torn bytes removed)",
                      seg=seg.base, cut=size - end)
        self._gap = self._gap or f"recovered {seg.base} after a crash ({size - end} torn bytes removed)"

    def apply_retention(self) -> None:
        """Delete this node's finished segments last modified more than ``retention`` ago."""
        if self.config.retention is None:
            return
        cutoff = self.clock.seconds() - self.config.retention
        try:
            old = [s for s in r.list_segments(self.folder)
                   if s.node == self.node and not s.open and self.ops.stat(s.path).st_mtime < cutoff]
        except OSError as e:
            self.log.error("journal: retention: cannot list {dir}: {err}", dir=str(self.folder), err=e)
            return
        if not old:
            return
        try:
            self.write({"kind": r.RETENTION, "deleted": [s.base for s in old], "retention": self.config.retention})
        except JournalUnavailable:
            return  # try again later; never delete without saying so in the chain
        for s in old:
            try:
                self.ops.unlink(s.path)
            except OSError as e:
                self.log.error("journal: retention: cannot delete {seg}: {err}", seg=s.path.name, err=e)


def _complete_prefix(path: Path) -> tuple[int, bytes | None]:
    """(offset after the last complete sealed record, its hash) of a segment file."""
    scan = r.Scan()
    end, last = 0, None
    with open(path, "rb") as f:
        try:
            for off, raw, obj in r.iter_raw(f, scan):
                h = r.record_hash(raw)
                if not isinstance(obj, dict) or h is None:
                    break
                end, last = off + len(raw), h
        except r.BadRecord:
            pass
    return end, last


def _last_hash(path: Path) -> bytes | None:
    return _complete_prefix(path)[1]
