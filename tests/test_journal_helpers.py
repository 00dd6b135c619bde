"""Helpers for the journal tests (no tests here): a writer on a Clock, a disk that fails on demand,
a log that remembers, reading records back, and a session driven through a stage."""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from hoopd.journal import records as r
from hoopd.journal.config import JournalConfig
from hoopd.journal.reader import Journal
from hoopd.journal.writer import JournalWriter
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import ClientMessage, Conversation
from hoopd.session import Deny, SessionInfo

T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z


class Talk:
    """One session through one stage, fed the way the relay feeds it: each message goes
    through the session's Conversation; what a stage refuses reaches the server as a marker."""

    def __init__(self, stage: Any, info: SessionInfo) -> None:
        self.info = info
        self.conv = Conversation()
        self.conv.text = info.sql_text
        self.stage = stage.open(info, self.conv)

    def c(self, t: bytes, body: bytes, denied_after: Deny | None = None) -> Any:
        """A client message; returns the stage's verdict. ``denied_after``: a stage after
        this one refuses it."""
        msg = self.conv.client(t[0], body)
        verdict = self.stage.client(msg)
        if isinstance(verdict, Deferred):  # fsync = "always": synced at once here (make_writer)
            got: list[Any] = []
            verdict.addBoth(got.append)
            (verdict,) = got
        if verdict is None and denied_after is not None:
            self.stage.denied(msg, denied_after)
            verdict = denied_after
        if verdict is None or isinstance(verdict, Deny):
            self.conv.sent(msg, denied=verdict is not None)
        return None if denied_after is not None else verdict

    def s(self, *msgs: tuple[bytes, bytes]) -> list[Any]:
        """Server messages; returns what the stage answered to each."""
        return [self.stage.server(self.conv.server(t[0], body)) for t, body in msgs]

    def denied(self, t: bytes, body: bytes, deny: Deny) -> ClientMessage:
        """A client message another stage (earlier in the order) refused."""
        msg = self.conv.client(t[0], body)
        self.stage.denied(msg, deny)
        self.conv.sent(msg, denied=True)
        return msg

    def end(self, reason: str = "client terminate") -> None:
        self.stage.close(reason)


class FlakyOS:
    """The os module, with write/fsync/rename that fail while ``broken`` is set."""

    def __init__(self) -> None:
        self.broken: int | None = None  # an errno
        self.short = False  # fail by writing half a record, as a full disk does
        self.writes = 0
        self.fsyncs = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _check(self) -> None:
        if self.broken is not None:
            raise OSError(self.broken, os.strerror(self.broken))

    def write(self, fd: int, data: bytes) -> int:
        if self.broken is not None and self.short:
            return os.write(fd, data[:len(data) // 2])
        self._check()
        self.writes += 1
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        self._check()
        self.fsyncs += 1
        os.fsync(fd)

    def ftruncate(self, fd: int, n: int) -> None:
        if not self.short:
            self._check()
        os.ftruncate(fd, n)


class Log:
    """Collects log calls: (level, format)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __getattr__(self, level: str) -> Any:
        return lambda fmt, **kw: self.events.append((level, fmt.format(**kw)))

    def levels(self, level: str) -> list[str]:
        return [msg for lv, msg in self.events if lv == level]


def make_writer(folder: Path, clock: Clock | None = None, ops: Any = os, log: Any = None,
                **cfg: Any) -> JournalWriter:
    if clock is None:
        clock = Clock()
        clock.advance(T0)
    node = cfg.pop("node", "gw-1")
    anchor = cfg.pop("anchor", None)
    sync = cfg.pop("sync", None) or (lambda fd: maybeDeferred(ops.fsync, fd))  # default: at once, on this thread
    return JournalWriter(JournalConfig(dir=str(folder), **cfg), node, clock, ops=ops, log=log or Log(), anchor=anchor,
                         sync=sync)


class ManualSync:
    """A writer's ``sync`` that fsyncs (through ``ops``) only when the test says so."""

    def __init__(self, ops: Any = os) -> None:
        self.ops = ops
        self.calls: list[tuple[int, Deferred[None]]] = []

    def __call__(self, fd: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.calls.append((fd, d))
        return d

    def run(self) -> int:
        """Run the syncs asked for so far (not those they cause); how many ran."""
        now, self.calls = self.calls, []
        for fd, d in now:
            maybeDeferred(self.ops.fsync, fd).chainDeferred(d)
        return len(now)


def records(folder: Path) -> list[dict[str, Any]]:
    j = Journal(folder)
    out = [e.rec for e in j.records()]
    assert not j.warnings, j.warnings
    return out


def session_records(folder: Path) -> list[dict[str, Any]]:
    return [x for x in records(folder) if x.get("session")]


def segment_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(r.SUFFIX))


# --- wire messages ---------------------------------------------------------------------

def row_description(*cols: tuple[str, int], fmt: int = 0) -> bytes:
    body = struct.pack("!h", len(cols))
    for name, oid in cols:
        body += m.cstr(name) + struct.pack("!ihihih", 0, 0, oid, -1, -1, fmt)
    return body


def bind(portal: str, stmt: str, params: list[bytes | None], formats: list[int] = (),
         result_formats: list[int] = ()) -> bytes:
    body = m.cstr(portal) + m.cstr(stmt) + struct.pack("!h", len(formats))
    body += b"".join(struct.pack("!h", f) for f in formats) + struct.pack("!h", len(params))
    for p in params:
        body += struct.pack("!i", -1) if p is None else struct.pack("!i", len(p)) + p
    return body + struct.pack("!h", len(result_formats)) + b"".join(struct.pack("!h", f) for f in result_formats)


def parse(name: str, text: str, types: list[int] = ()) -> bytes:
    return m.cstr(name) + m.cstr(text) + struct.pack("!h", len(types)) + b"".join(struct.pack("!i", t) for t in types)


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return m.cstr(portal) + struct.pack("!i", max_rows)


def describe(kind: str, name: str) -> bytes:
    return kind.encode() + m.cstr(name)


def error(sqlstate: str, message: str, notice: bool = False, **kw: Any) -> bytes:
    return m.error_response(sqlstate, message, notice=notice, **kw)[5:]


def tag(text: str) -> bytes:
    return m.cstr(text)


def row(*vals: bytes | None) -> bytes:
    return m.encode_data_row(vals)


def copy_response(nfields: int = 1, binary: bool = False) -> bytes:
    return bytes([1 if binary else 0]) + struct.pack("!h", nfields) + struct.pack("!h", 1 if binary else 0) * nfields
