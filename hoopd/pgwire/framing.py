"""Splitting byte streams into PostgreSQL messages.

``read_packet`` handles the untyped preamble packets (startup, SSLRequest, ...).
``Framer`` handles typed messages with a fast path: only the message types a caller
wants are returned as (type, body); runs of everything else come back as raw bytes,
coalesced, so the relay can forward them in bulk without building per-message objects.
Wanted messages larger than ``whole_limit`` (or their type's ``whole_limits``) are not
buffered: they come back as a ``Big`` marker followed by their raw bytes, so a 200 MB
value never sits in memory whole. With ``runs``, consecutive complete messages of that
wanted type (DataRow) come back as one ``Rows`` event of their framed bytes, so a
consumer that can look at many rows at once (masking's prefilter) pays per run, not per row.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Union

from hoopd.pgwire.errors import ProtocolError

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!Bi")

MAX_STARTUP = 10_000
MAX_MESSAGE = (1 << 30) - 1  # PostgreSQL's cap for Query/Parse/Bind/CopyData


class Raw(NamedTuple):
    data: bytes


class Msg(NamedTuple):
    type: int  # the type byte, as an int (ord)
    body: bytes


class Big(NamedTuple):
    type: int
    length: int  # body length; the message's raw bytes follow as Raw events


class Rows(NamedTuple):
    data: bytes  # ``count`` complete messages of the ``runs`` type, framed as received
    count: int


Event = Union[Raw, Msg, Big, Rows]


def split_rows(data: bytes) -> list[bytes]:
    """The bodies of the framed messages in a Rows event."""
    out = []
    pos, n = 0, len(data)
    unpack = _I32.unpack_from
    while pos < n:
        (ln,) = unpack(data, pos + 1)
        out.append(data[pos + 5:pos + 1 + ln])
        pos += 1 + ln
    return out


def take_message(buf: bytearray) -> tuple[int, bytes] | None:
    """Remove the first complete typed message from ``buf``: (type, body), or None when it
    is not all there yet. Raises ProtocolError on an impossible length."""
    if len(buf) < 5:
        return None
    (n,) = _I32.unpack_from(buf, 1)
    if n < 4:
        raise ProtocolError(f"invalid message length {n}")
    if len(buf) < n + 1:
        return None
    t, body = buf[0], bytes(buf[5:n + 1])
    del buf[:n + 1]
    return t, body


def rows_end(data: bytes, count: int) -> int:
    """The offset just after the first ``count`` framed messages of ``data``."""
    pos = 0
    unpack = _I32.unpack_from
    for _ in range(count):
        (ln,) = unpack(data, pos + 1)
        pos += 1 + ln
    return pos


def read_packet(buf: bytes | bytearray, limit: int = MAX_STARTUP) -> tuple[int, bytes] | None:
    """An untyped packet at the start of buf: (total length, body) or None if incomplete.

    The body starts with the int32 request code / protocol version."""
    if len(buf) < 4:
        return None
    (n,) = _I32.unpack_from(buf, 0)
    if n < 8 or n > limit:
        raise ProtocolError(f"invalid startup packet length {n}" if n < 8
                            else f"startup packet too large ({n} bytes, limit {limit})")
    if len(buf) < n:
        return None
    return n, bytes(buf[4:n])


class Framer:
    """Incremental typed-message splitter (one per direction)."""

    __slots__ = ("wanted", "whole_limit", "whole_limits", "limits", "default_limit", "runs", "_carry", "_skip",
                 "_body", "_need", "_type")

    def __init__(self, wanted: frozenset[int] | set[int], whole_limit: int = 1 << 20,
                 limits: dict[int, int] | None = None, default_limit: int = MAX_MESSAGE,
                 whole_limits: dict[int, int] | None = None, runs: int | None = None) -> None:
        self.wanted = frozenset(wanted)
        self.runs = runs  # a wanted type whose consecutive complete messages come as Rows
        self.whole_limit = whole_limit
        self.whole_limits = whole_limits or {}  # per type, instead of whole_limit
        self.limits = limits or {}
        self.default_limit = default_limit
        self._carry = b""
        self._skip = 0  # raw bytes still to pass for the current message
        self._body: bytearray | None = None  # body being collected for a wanted message
        self._need = 0
        self._type = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a message not yet complete."""
        return len(self._carry) + (len(self._body) if self._body is not None else 0)

    @property
    def idle(self) -> bool:
        """True at a message boundary with nothing buffered."""
        return not (self._carry or self._skip or self._body is not None)

    def feed(self, data: bytes) -> list[Event]:
        out: list[Event] = []
        if self._carry:
            data = self._carry + data
            self._carry = b""
        n = len(data)
        pos = run = 0  # run: start of the raw bytes not yet emitted
        if self._skip:
            pos = min(self._skip, n)
            self._skip -= pos
        elif self._body is not None:
            pos = run = min(self._need, n)
            self._body += data[:pos]
            self._need -= pos
            if not self._need:
                body = bytes(self._body)
                out.append(Rows(_HDR.pack(self._type, len(body) + 4) + body, 1) if self._type == self.runs
                           else Msg(self._type, body))
                self._body = None
        wanted = self.wanted
        unpack = _HDR.unpack_from
        runs = self.runs
        run_limit = self.whole_limits.get(runs, self.whole_limit) + 4 if runs is not None else 0
        rows = count = 0  # the Rows run being collected: its start, how many messages
        while pos < n:
            if n - pos < 5:
                self._carry = data[pos:]
                break
            t, ln = unpack(data, pos)
            end = pos + 1 + ln
            if t == runs and end <= n and 4 <= ln <= run_limit:
                if not count:
                    if run < pos:
                        out.append(Raw(data[run:pos]))
                    rows = pos
                count += 1
                pos = run = end
                continue
            if count:
                out.append(Rows(data[rows:pos], count))
                count = 0
            if ln < 4 or ln > self.limits.get(t, self.default_limit):
                if 4 <= ln <= MAX_MESSAGE and t not in self.limits:
                    raise ProtocolError(f"message of {ln - 4} bytes (type {chr(t)!r}) is larger than the"
                                        f" limit of {self.default_limit - 4} bytes", "54000")
                raise ProtocolError(f"invalid message length {ln} for message type {chr(t)!r}")
            if t in wanted:
                if run < pos:
                    out.append(Raw(data[run:pos]))
                if ln - 4 > (self.whole_limits.get(t, self.whole_limit) if self.whole_limits else self.whole_limit):
                    out.append(Big(t, ln - 4))
                    run = pos
                    if end > n:
                        self._skip = end - n
                        pos = n
                        break
                    pos = end
                    continue
                if end <= n:
                    out.append(Msg(t, data[pos + 5:end]))
                    pos = run = end
                    continue
                self._body = bytearray(data[pos + 5:])
                self._need = end - n
                self._type = t
                pos = run = n
                break
            if end > n:
                self._skip = end - n
                pos = n
                break
            pos = end
        if count:
            out.append(Rows(data[rows:pos], count))
        stop = n - len(self._carry)
        if run < stop:
            out.append(Raw(data[run:stop]))
        return out
