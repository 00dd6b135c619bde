"""Whole values replaced by a column rule, still valid values of their column's type.

A driver parses what it receives by the column's type (and asyncpg, pgjdbc read binary),
so a masked value must still be one of that type, in the format it was sent in:

* text-like types (text, varchar, char(n), name, "char", unknown): the rule's strategy
  applied to the whole text (``redact`` token, ``partial``, ``hash``);
* json and jsonb: the strategy's text as a JSON string;
* integers, oid, floats, numeric, boolean, date, time, timestamp(tz), uuid: ``hash``
  gives a value of the type derived from the keyed hash (same input, same output, so
  joins and GROUP BY on the client still work); the other strategies give the type's
  zero (0, false, 2000-01-01, 00:00, the nil uuid);
* every other type (arrays, records, ranges, bytea, user types), and the ``null``
  strategy: NULL, which every type admits.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import struct
import uuid
from datetime import date, datetime, timedelta, timezone
from typing import Callable

TEXT_LIKE = frozenset({18, 19, 25, 705, 1042, 1043})  # binary format = the text's bytes
JSON, JSONB = 114, 3802
_EPOCH = date(2000, 1, 1)  # PostgreSQL's binary date/time epoch
_INTS = {21: (">h", 1 << 15), 23: (">i", 1 << 31), 20: (">q", 1 << 63), 26: (">I", 1 << 32)}
_FLOATS = {700: ">f", 701: ">d"}
_NUMERIC_ZERO = b"\x00" * 8  # ndigits 0, weight 0, sign +, dscale 0
TYPED = frozenset({*_INTS, *_FLOATS, 1700, 16, 1082, 1083, 1114, 1184, 2950})

Replace = Callable[[str], str]  # the rule's strategy for a text


def _digest(key: bytes, raw: bytes, oid: int, binary: bool) -> int:
    """The keyed hash of a value's text form (binary integers, uuids and dates are read
    back to it, so text and binary sessions mask a value the same way)."""
    if binary:
        if oid in _INTS:
            raw = str(struct.unpack(_INTS[oid][0], raw)[0]).encode()
        elif oid == 2950 and len(raw) == 16:
            raw = str(uuid.UUID(bytes=raw)).encode()
        elif oid == 1082 and len(raw) == 4:
            raw = (_EPOCH + timedelta(days=struct.unpack(">i", raw)[0])).isoformat().encode()
    return int.from_bytes(hmac.new(key, raw, hashlib.sha256).digest()[:8], "big")


def masked_value(raw: bytes, oid: int, fmt: int, codec: str, replace: Replace | None,
                 key: bytes | None) -> bytes | None:
    """``raw`` (one value of type ``oid`` in format ``fmt``) masked whole; None: NULL.
    ``replace``: the rule's strategy for a text (None: the ``null`` strategy); ``key``:
    the hash key when the strategy is ``hash``, else None (the type's zero)."""
    if replace is None:
        return None
    if oid in TEXT_LIKE:
        return replace(raw.decode(codec, "surrogateescape")).encode(codec, "surrogateescape")
    if oid == JSON or oid == JSONB:
        doc = json.dumps(replace(raw[1:].decode(codec, "surrogateescape") if fmt and oid == JSONB
                                 else raw.decode(codec, "surrogateescape"))).encode(codec, "surrogateescape")
        return b"\x01" + doc if fmt and oid == JSONB else doc
    if oid not in TYPED:
        return None
    try:
        n = _digest(key, raw, oid, fmt == 1) if key is not None else 0
    except (struct.error, OverflowError):  # (not laid out as its type says: the hash of the bytes)
        n = _digest(key, raw, 0, False) if key is not None else 0
    return _typed(oid, n, fmt == 1)


def _typed(oid: int, n: int, binary: bool) -> bytes:
    if oid in _INTS:
        code, span = _INTS[oid]
        v = n % span if oid == 26 else n % (span // 2)  # (signed types: a non-negative value)
        return struct.pack(code, v) if binary else str(v).encode()
    if oid in _FLOATS:
        return struct.pack(_FLOATS[oid], float(n % 1000000)) if binary else str(n % 1000000).encode()
    if oid == 1700:  # one base-10000 digit: ndigits, weight, sign, dscale, digit
        v = n % 10000
        return (struct.pack(">hhhhh", 1, 0, 0, 0, v) if v else _NUMERIC_ZERO) if binary else str(v).encode()
    if oid == 16:
        v = bool(n & 1)
        return (b"\x01" if v else b"\x00") if binary else (b"t" if v else b"f")
    if oid == 1082:
        days = n % 36525
        return struct.pack(">i", days) if binary else (_EPOCH + timedelta(days=days)).isoformat().encode()
    if oid == 1083:
        us = (n % 86400) * 1000000
        return struct.pack(">q", us) if binary else str(timedelta(microseconds=us)).zfill(8).encode()
    if oid in (1114, 1184):
        seconds = n % (36525 * 86400)
        if binary:
            return struct.pack(">q", seconds * 1000000)
        t = datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=seconds)
        return (t.strftime("%Y-%m-%d %H:%M:%S") + ("+00" if oid == 1184 else "")).encode()
    u = uuid.UUID(int=0) if n == 0 else uuid.UUID(bytes=hashlib.sha256(n.to_bytes(8, "big")).digest()[:16])
    return u.bytes if binary else str(u).encode()
