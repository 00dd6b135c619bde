"""Encoders for the messages the gateway writes and decoders for the ones it reads.

Encoders return complete frames (type byte + length + body). Decoders take a body
(without type and length) and raise ProtocolError on malformed input, never anything else.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from hoopd.pgwire.errors import ProtocolError

_I32 = struct.Struct("!i")
_I16 = struct.Struct("!h")
_II = struct.Struct("!ii")

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3_0 = 196608
PROTOCOL_3_2 = 196610


def frame(mtype: bytes, body: bytes) -> bytes:
    return mtype + _I32.pack(len(body) + 4) + body


def cstr(s: str | bytes) -> bytes:
    """A NUL-terminated protocol string; a NUL inside would end it early and let the rest
    pass for the next field (a startup parameter, say), so it is refused."""
    b = s.encode() if isinstance(s, str) else s
    if b"\0" in b:
        raise ValueError("a protocol string cannot contain NUL")
    return b + b"\0"


# --- server -> client ---------------------------------------------------------------

def error_response(sqlstate: str, message: str, severity: str = "ERROR",
                   detail: str | None = None, hint: str | None = None, notice: bool = False) -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(sqlstate) + b"M" + cstr(message)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    return frame(b"N" if notice else b"E", body + b"\0")


def ready_for_query(status: bytes) -> bytes:
    return frame(b"Z", status)


def auth_ok() -> bytes:
    return frame(b"R", _I32.pack(0))


def auth_cleartext() -> bytes:
    return frame(b"R", _I32.pack(3))


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    return frame(b"R", _I32.pack(10) + b"".join(cstr(m) for m in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return frame(b"R", _I32.pack(11) + data)


def auth_sasl_final(data: bytes) -> bytes:
    return frame(b"R", _I32.pack(12) + data)


def parameter_status(name: str, value: str) -> bytes:
    return frame(b"S", cstr(name) + cstr(value))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return frame(b"K", _I32.pack(pid) + secret)


def negotiate_protocol_version(minor: int, unsupported: Iterable[str]) -> bytes:
    opts = list(unsupported)
    return frame(b"v", _I32.pack(minor) + _I32.pack(len(opts)) + b"".join(cstr(o) for o in opts))


# --- client -> server (the gateway is a client upstream) ------------------------------

def startup_message(params: dict[str, str], version: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(version) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _II.pack(8, SSL_REQUEST)


def cancel_request(pid: int, secret: bytes) -> bytes:
    return _II.pack(12 + len(secret), CANCEL_REQUEST) + _I32.pack(pid) + secret


def password_message(data: bytes) -> bytes:
    return frame(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return frame(b"p", cstr(mechanism) + _I32.pack(len(data)) + data)


def query(text: str) -> bytes:
    return frame(b"Q", cstr(text))


def parse_message(name: str, text: str) -> bytes:
    return frame(b"P", cstr(name) + cstr(text) + _I16.pack(0))


def describe_statement(name: str) -> bytes:
    return frame(b"D", b"S" + cstr(name))


def bind_text(params: Iterable[str | None], portal: str = "", statement: str = "") -> bytes:
    """Bind with every parameter and every result column in text format."""
    vals = list(params)
    body = cstr(portal) + cstr(statement) + _I16.pack(0) + _I16.pack(len(vals))
    for v in vals:
        if v is None:
            body += _I32.pack(-1)
        else:
            raw = v.encode()
            body += _I32.pack(len(raw)) + raw
    return frame(b"B", body + _I16.pack(0))


def describe_portal(name: str = "") -> bytes:
    return frame(b"D", b"P" + cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return frame(b"E", cstr(portal) + _I32.pack(max_rows))


TERMINATE = frame(b"X", b"")
SYNC = frame(b"S", b"")


# --- decoders -------------------------------------------------------------------------

class Reader:
    """A cursor over one message body."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"malformed {self.what} message: truncated")

    def int32(self) -> int:
        self._need(4)
        (v,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        return v

    def int16(self) -> int:
        self._need(2)
        (v,) = _I16.unpack_from(self.data, self.pos)
        self.pos += 2
        return v

    def byte(self) -> bytes:
        self._need(1)
        self.pos += 1
        return self.data[self.pos - 1:self.pos]

    def bytes(self, n: int) -> bytes:
        self._need(n)
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def cstring_bytes(self) -> bytes:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError(f"malformed {self.what} message: missing string terminator")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        return raw

    def cstring(self) -> str:
        """A string for display and names: UTF-8, or Latin-1 when it is not valid UTF-8.
        Statement text is read with the session's decoder instead (see decode_query)."""
        raw = self.cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")

    def rest(self) -> bytes:
        r = self.data[self.pos:]
        self.pos = len(self.data)
        return r

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"malformed {self.what} message: trailing bytes")


@dataclass(frozen=True)
class Startup:
    version: int
    params: dict[str, str]
    unknown_options: tuple[str, ...]  # _pq_.* options, which we do not support


def decode_startup(body: bytes) -> Startup:
    """Body of the first untyped packet after the length (starting with the version)."""
    r = Reader(body, "startup")
    version = r.int32()
    params: dict[str, str] = {}
    pq: list[str] = []
    while True:
        name = r.cstring()
        if name == "":
            break
        value = r.cstring()
        if name.startswith("_pq_."):
            pq.append(name)
        else:
            params[name] = value
    r.end()
    if "user" not in params or not params["user"]:
        raise ProtocolError('no PostgreSQL user name specified in startup packet', "28000")
    return Startup(version, params, tuple(pq))


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    """ParameterStatus ('S' from the server): (name, value)."""
    r = Reader(body, "ParameterStatus")
    name, value = r.cstring(), r.cstring()
    r.end()
    return name, value


def decode_query(body: bytes, text: Callable[[bytes], str] | None = None) -> str:
    """The statement text of a Query; ``text`` decodes it the way the server reads it
    (pgwire.encodings.sql_decoder); without it, as Reader.cstring does."""
    r = Reader(body, "Query")
    sql = text(r.cstring_bytes()) if text is not None else r.cstring()
    r.end()
    return sql


@dataclass(frozen=True)
class Parse:
    name: str
    query: str
    param_types: tuple[int, ...]


def decode_parse(body: bytes, text: Callable[[bytes], str] | None = None) -> Parse:
    """A Parse message; ``text`` decodes the statement text as in decode_query."""
    r = Reader(body, "Parse")
    name = r.cstring()
    sql = text(r.cstring_bytes()) if text is not None else r.cstring()
    n = r.int16()
    if n < 0:
        raise ProtocolError("malformed Parse message: negative parameter count")
    types = tuple(r.int32() for _ in range(n))
    r.end()
    return Parse(name, sql, types)


@dataclass(frozen=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


def decode_bind(body: bytes) -> Bind:
    r = Reader(body, "Bind")
    portal, stmt = r.cstring(), r.cstring()
    formats = tuple(r.int16() for _ in range(max(0, r.int16())))
    params: list[bytes | None] = []
    for _ in range(max(0, r.int16())):
        n = r.int32()
        params.append(None if n == -1 else r.bytes(n))
    results = tuple(r.int16() for _ in range(max(0, r.int16())))
    r.end()
    return Bind(portal, stmt, formats, tuple(params), results)


def param_format(bind: Bind, i: int) -> int:
    """The format code of parameter i (0 text, 1 binary) per the Bind rules."""
    if not bind.param_formats:
        return 0
    return bind.param_formats[0] if len(bind.param_formats) == 1 else bind.param_formats[i]


@dataclass(frozen=True)
class Execute:
    portal: str
    max_rows: int


def decode_execute(body: bytes) -> Execute:
    r = Reader(body, "Execute")
    portal = r.cstring()
    rows = r.int32()
    r.end()
    return Execute(portal, rows)


def decode_close_or_describe(body: bytes, what: str = "Close") -> tuple[str, str]:
    """('S' or 'P', name) of a Close or Describe."""
    r = Reader(body, what)
    kind = r.byte()
    if kind not in (b"S", b"P"):
        raise ProtocolError(f"malformed {what} message: invalid target type {kind!r}")
    name = r.cstring()
    r.end()
    return kind.decode(), name


@dataclass(frozen=True)
class FunctionCall:
    oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int


def decode_function_call(body: bytes) -> FunctionCall:
    r = Reader(body, "FunctionCall")
    oid = r.int32()
    formats = tuple(r.int16() for _ in range(max(0, r.int16())))
    args: list[bytes | None] = []
    for _ in range(max(0, r.int16())):
        n = r.int32()
        args.append(None if n == -1 else r.bytes(n))
    result = r.int16()
    r.end()
    return FunctionCall(oid, formats, tuple(args), result)


def decode_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields by code letter. Tolerates missing fields."""
    r = Reader(body, "ErrorResponse")
    out: dict[str, str] = {}
    while r.pos < len(r.data):
        code = r.byte()
        if code == b"\0":
            break
        out[code.decode("latin-1")] = r.cstring()
    return out


@dataclass(frozen=True)
class Column:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    type_size: int
    type_mod: int
    format: int


def decode_row_description(body: bytes) -> tuple[Column, ...]:
    r = Reader(body, "RowDescription")
    cols = []
    for _ in range(max(0, r.int16())):
        name = r.cstring()
        toid, att, typ = r.int32(), r.int16(), r.int32()
        size, mod, fmt = r.int16(), r.int32(), r.int16()
        cols.append(Column(name, toid, att, typ, size, mod, fmt))
    return tuple(cols)


def decode_data_row(body: bytes) -> tuple[bytes | None, ...]:
    """The values of a DataRow (None for NULL). Unrolled (no Reader): it runs per row."""
    end = len(body)
    if end < 2:
        raise ProtocolError("malformed DataRow message: truncated")
    (count,) = _I16.unpack_from(body, 0)
    pos = 2
    unpack = _I32.unpack_from
    vals: list[bytes | None] = []
    for _ in range(max(0, count)):
        if pos + 4 > end:
            raise ProtocolError("malformed DataRow message: truncated")
        (n,) = unpack(body, pos)
        pos += 4
        if n == -1:
            vals.append(None)
            continue
        if n < 0 or pos + n > end:
            raise ProtocolError("malformed DataRow message: truncated")
        vals.append(body[pos:pos + n])
        pos += n
    return tuple(vals)


def encode_data_row(values: Iterable[bytes | None]) -> bytes:
    vals = list(values)
    parts = [_I16.pack(len(vals))]
    for v in vals:
        parts.append(_I32.pack(-1) if v is None else _I32.pack(len(v)) + v)
    return b"".join(parts)


def decode_notification(body: bytes) -> tuple[int, str, str]:
    r = Reader(body, "NotificationResponse")
    return r.int32(), r.cstring(), r.cstring()


def decode_command_complete(body: bytes) -> str:
    return Reader(body, "CommandComplete").cstring()


def decode_sasl_initial(body: bytes) -> tuple[str, bytes]:
    r = Reader(body, "SASLInitialResponse")
    mech = r.cstring()
    n = r.int32()
    data = b"" if n == -1 else r.bytes(n)
    return mech, data


def decode_password(body: bytes) -> str:
    r = Reader(body, "PasswordMessage")
    pw = r.cstring()
    r.end()
    return pw
