"""The journal's on-disk format, shared by the writer and the reader.

A segment is a file of msgpack maps, one per record. The first record is a header
(``kind = "segment"``, format version ``v``, node, the previous segment's name and
last hash). Every record has the keys ts, node, kind and, last, ``h``: a 32-byte hash
chained to the previous record (the previous segment's last record for a header)::

    h = SHA256(prev_h || record_bytes_without_the_32_hash_bytes)       # no key
    h = HMAC-SHA256(key, prev_h || record_bytes_without_the_32_hash_bytes)

so the hash covers every byte of the record but itself, including the key ``"h"``
and its length prefix, and no repacking is needed to check it. The first segment
ever chains to 32 zero bytes.

Segment files are ``<UTC time>-<node>-<counter>.hjs``, with ``.open.hjs`` while being
written: ``ls`` sorts them in time order and shows the node and which are finished.
"""
from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import struct
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import msgpack

from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.framing import split_rows
from hoopd.pgwire.messages import decode_data_row

VERSION = 2  # 2: rows as the DataRow messages received (``wire`` + ``formats``); 1: rows as lists
HASH_LEN = 32
GENESIS = bytes(HASH_LEN)
_TAIL = b"\xa1h\xc4\x20"  # msgpack: fixstr "h", bin8 of 32 bytes
SUFFIX = ".hjs"
OPEN_SUFFIX = ".open.hjs"
_NAME = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)-(.+)-(\d{6,})(\.open)?\.hjs$")

# record kinds (the schema is open: readers show kinds they do not know generically)
SEGMENT, SEGMENT_END, RETENTION = "segment", "segment_end", "retention"
SESSION_START, SESSION_END = "session_start", "session_end"
STATEMENT, RESULT, ROWS, ERROR, NOTICE = "statement", "result", "rows", "error", "notice"
COPY, NOTIFICATION, DENIED = "copy", "notification", "denied"
ADMIN = "admin"  # an administrator's action (kill, reload, ...), written by the control plane
MASKING = "masking"  # what the masking stage masked in the result that follows (rule -> values; never a value)


def key_id(key: bytes) -> str:
    """A short public fingerprint of an HMAC key (names the key without revealing it)."""
    return hmac.new(key, b"hoopd journal key id", hashlib.sha256).hexdigest()[:16]


def link(prev: bytes, body: bytes, key: bytes | None) -> bytes:
    """The chain hash of a record whose bytes but the final hash are ``body``."""
    if key is None:
        return hashlib.sha256(prev + body).digest()
    return hmac.new(key, prev + body, hashlib.sha256).digest()


def new_packer() -> msgpack.Packer:
    return msgpack.Packer(datetime=True, use_bin_type=True)


def seal(packer: msgpack.Packer, record: dict[str, Any], prev: bytes, key: bytes | None) -> tuple[bytes, bytes]:
    """Pack a record (which must not have ``h``) with its chain hash appended: (bytes, hash)."""
    record["h"] = GENESIS
    raw = packer.pack(record)
    del record["h"]
    body = raw[:-HASH_LEN]
    h = link(prev, body, key)
    return body + h, h


def record_hash(raw: bytes) -> bytes | None:
    """The hash a record's bytes end with, or None if they do not end like a sealed record."""
    if len(raw) < HASH_LEN + 4 or raw[-HASH_LEN - 4:-HASH_LEN] != _TAIL:
        return None
    return raw[-HASH_LEN:]


def text_value(v: bytes) -> str | bytes:
    """A text-format value: str when it is UTF-8, else the bytes as they were."""
    try:
        return v.decode()
    except UnicodeDecodeError:
        return v


def expand(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as readers see it, whatever the format version: the rows of a ``result``
    or ``rows`` record kept as DataRow messages (``wire``, format 2) become ``rows``, lists
    of values (text format: str, or bytes when not UTF-8; binary: bytes; NULL: None), as
    format 1 wrote them. Changes ``rec`` in place."""
    wire = rec.pop("wire", None)
    if wire is None:
        return rec
    formats = rec.pop("formats", None) or ()
    rows: list[list[Any]] = []
    try:
        for body in split_rows(wire):
            vals = decode_data_row(body)
            if 1 in formats:
                rows.append([None if v is None else (v if i < len(formats) and formats[i] == 1 else text_value(v))
                             for i, v in enumerate(vals)])
            else:
                rows.append([None if v is None else text_value(v) for v in vals])
    except (ProtocolError, IndexError, struct.error) as e:
        rec["rows_error"] = f"rows after row {len(rows)} cannot be decoded: {e}"
    rec["rows"] = rows
    return rec


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


@dataclass(frozen=True, order=True)
class SegmentName:
    created: str  # 20261125T211200.123Z
    counter: int
    node: str
    open: bool
    path: Path

    @property
    def base(self) -> str:
        """The name without the in-progress marker (what the finished file is called)."""
        return f"{self.created}-{self.node}-{self.counter:06d}{SUFFIX}"

    @property
    def created_at(self) -> float:
        t = time.strptime(self.created[:15], "%Y%m%dT%H%M%S")
        return calendar.timegm(t) + int(self.created[16:19]) / 1000

    @classmethod
    def make(cls, folder: Path, seconds: float, node: str, counter: int) -> "SegmentName":
        ms = int(round(seconds * 1000))
        created = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        name = cls(created, counter, node, True, Path())
        return cls(created, counter, node, True, folder / (name.base[:-len(SUFFIX)] + OPEN_SUFFIX))

    @classmethod
    def parse(cls, path: Path) -> "SegmentName | None":
        mt = _NAME.match(path.name)
        if not mt:
            return None
        return cls(mt.group(1), int(mt.group(3)), mt.group(2), bool(mt.group(4)), path)


def list_segments(folder: Path) -> list[SegmentName]:
    """Every segment file in a folder, oldest first (by creation time, then counter).

    Raises OSError when the folder cannot be read."""
    found = [SegmentName.parse(p) for p in folder.iterdir()]
    return sorted(s for s in found if s is not None)


def new_unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=False, timestamp=3, strict_map_key=False, max_buffer_size=(1 << 31) - 1)


@dataclass
class Scan:
    """What reading a segment from its start found besides the records."""

    end: int = 0  # offset after the last complete record
    size: int = 0  # bytes in the file when read
    torn: bool = False  # bytes after ``end`` that do not form a complete record


def iter_raw(f: BinaryIO, scan: Scan, start: int = 0, chunk: int = 1 << 20) -> Iterator[tuple[int, bytes, Any]]:
    """(offset, raw bytes, object) for each complete msgpack object in ``f`` from ``start``.

    Stops at the end of the file; a partial last object is left out (``scan.torn``)."""
    f.seek(start)
    up = new_unpacker()
    buf = bytearray()
    base = pos = start  # base: file offset of buf[0]; pos: offset of the next object
    scan.end = scan.size = start
    while True:
        data = f.read(chunk)
        if not data:
            break
        scan.size += len(data)
        buf += data
        up.feed(data)
        while True:
            try:
                obj = up.unpack()
            except msgpack.OutOfData:
                break
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
                scan.torn = True
                scan.end = pos
                raise BadRecord(pos, f"not msgpack: {e}") from None
            end = start + up.tell()
            yield pos, bytes(buf[pos - base:end - base]), obj
            pos = scan.end = end
        if pos - base > (4 << 20):
            del buf[:pos - base]
            base = pos
    scan.torn = scan.size > scan.end


class BadRecord(Exception):
    """Bytes at ``offset`` are not a record."""

    def __init__(self, offset: int, problem: str) -> None:
        super().__init__(problem)
        self.offset = offset
        self.problem = problem
