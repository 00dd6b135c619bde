"""Chain anchors: the journal's head, kept outside the journal folder.

The hash chain shows that nothing was changed, removed or inserted *before* the last
record; it cannot show that records were cut from the end (delete the newest segment,
truncate the open one at a record boundary: what is left is a valid chain). So the
writer anchors its head (node, segment, records in it, hash of the last one) at every
rotation and every ``[journal].anchor_interval``: to a file in ``[gateway].state_dir``
(replaced atomically) and to the system log (``/dev/log``: journald or syslog, which
someone who can edit the journal folder usually cannot rewrite). ``hoopd journal
verify`` checks that the journal still holds the anchored record. What was written
after the newest anchor (at most one interval) is not covered.
"""
from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hoopd.log import get_logger

SYSLOG_PRIORITY = 3 * 8 + 6  # facility daemon, severity info
SYSLOG_TAG = "hoopd-journal"
PREFIX = "journal anchor "  # the syslog message is this and the anchor's JSON


@dataclass(frozen=True)
class Anchor:
    node: str
    segment: str  # the finished segment name (SegmentName.base)
    records: int  # records in the segment up to and including the anchored one
    hash: str  # hex of that record's chain hash
    ts: str  # when it was anchored (RFC 3339, UTC)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "Anchor":
        """Parse an anchor file or a syslog line holding one. Raises ValueError naming the problem."""
        start = text.find("{")
        try:
            d = json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError as e:
            raise ValueError(f"not an anchor ({e.msg})") from None
        if not isinstance(d, dict):
            raise ValueError("not an anchor (expected a JSON object)")
        for key, typ in (("node", str), ("segment", str), ("records", int), ("hash", str), ("ts", str)):
            if not isinstance(d.get(key), typ):
                raise ValueError(f"not an anchor ({key!r} missing or not a {typ.__name__})")
        try:
            bytes.fromhex(d["hash"])
        except ValueError:
            raise ValueError("not an anchor ('hash' is not hex)") from None
        return cls(d["node"], d["segment"], d["records"], d["hash"], d["ts"])


def fsync_dir(folder: Path, ops: Any = os) -> None:
    """Make a folder's entries (a rename, a new file) durable. Raises OSError."""
    fd = ops.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def anchor_file(state_dir: str | Path, node: str) -> Path:
    return Path(state_dir) / f"journal-anchor.{node}.json"


def anchor_files(state_dir: str | Path) -> list[Path]:
    """Every node's anchor file in ``state_dir``."""
    return sorted(Path(state_dir).glob("journal-anchor.*.json"))


class AnchorSink:
    """Writes anchors to ``path`` (atomically: temp file, fsync, rename) and sends them to
    the syslog socket at ``syslog`` ("" for none). A failure is logged, once per kind
    until it works again; it never stops the journal."""

    def __init__(self, path: Path, syslog: str = "/dev/log", log: Any = None) -> None:
        self.path = path
        self.syslog = syslog
        self.log = log or get_logger("hoopd.journal")
        self._failing: set[str] = set()

    def __call__(self, anchor: Anchor) -> None:
        self._attempt("file", self._write_file, anchor)
        if self.syslog:
            self._attempt("syslog", self._send_syslog, anchor)

    def _attempt(self, kind: str, fn: Any, anchor: Anchor) -> None:
        try:
            fn(anchor)
        except OSError as e:
            if kind not in self._failing:
                where = self.path if kind == "file" else self.syslog
                # no syslog socket at all (a container): say so, less loudly than a failing one
                say = self.log.warn if kind == "syslog" and isinstance(e, FileNotFoundError) else self.log.error
                say("journal: cannot write the chain anchor to {where}: {err}", where=str(where), err=e)
                self._failing.add(kind)
            return
        self._failing.discard(kind)

    def _write_file(self, anchor: Anchor) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (anchor.to_json() + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _send_syslog(self, anchor: Anchor) -> None:
        msg = f"<{SYSLOG_PRIORITY}>{SYSLOG_TAG}[{os.getpid()}]: {PREFIX}{anchor.to_json()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)  # a full syslog queue drops this anchor, never blocks the reactor
            s.sendto(msg.encode(), self.syslog)


def read_anchor(path: Path) -> Anchor:
    """Raises OSError, ValueError (with the file named)."""
    try:
        return Anchor.from_json(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
