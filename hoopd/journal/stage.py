"""JournalStage: records a session's conversation from the wire into the journal.

Client statements (Query, Parse, Bind, Execute, Close, FunctionCall) are written
(and synced with fsync = "always") before ``client_message`` returns; when that fails
the statement is refused with SQLSTATE 58030 and never reaches PostgreSQL.

Server responses are matched to the client messages they answer with a queue that
mirrors the protocol's own order: each tracked client message adds an entry; the
response that completes it (ParseComplete, CommandComplete, ErrorResponse, ...) pops it,
and ReadyForQuery pops through the next sync point (the server skips the rest of an
extended-protocol batch after an error). Results are written as ``result`` records at
CommandComplete; a result larger than ROWS_CHUNK bytes goes out in ``rows`` records
first, so memory stays bounded with ``max_result_rows = -1``.

Put this stage after masking in the stage list: results are recorded as the client
receives them.
"""
from __future__ import annotations

from collections import deque
from functools import lru_cache
from dataclasses import dataclass, field
from typing import Any, Callable

from pglast.parser import ParseError, split

from hoopd.journal import records as r
from hoopd.journal.config import JournalConfig
from hoopd.journal.writer import JournalUnavailable, JournalWriter
from hoopd.log import get_logger
from hoopd.pgwire import messages as m
from hoopd.pgwire.encodings import TextError
from hoopd.pgwire.errors import ProtocolError
from hoopd.session import Deny, SessionInfo

ROWS_CHUNK = 1 << 20  # bytes of buffered row data that make a ``rows`` record
ROW_DESCRIPTIONS_KEPT = 1024  # decoded RowDescriptions cached (shared by all sessions)
UNAVAILABLE = Deny(message="hoopd: the audit journal is unavailable; statement refused", sqlstate="58030")
_FIELDS = {"S": "severity", "C": "sqlstate", "M": "message", "D": "detail", "H": "hint", "P": "position",
           "W": "where", "s": "schema", "t": "table", "c": "column", "n": "constraint"}
_STATEMENTS = frozenset(b"QPBECF")  # the client messages that get a statement record
_TRACKED = _STATEMENTS | frozenset(b"DS")  # ... and those that get a queue entry
_SYNCS = frozenset(b"QFS")  # answered by ReadyForQuery
_COPY_DIRECTION = {b"G": "in", b"H": "out", b"W": "both"}

log = get_logger("hoopd.journal")


def split_statements(text: str) -> list[str]:
    """The statements of a simple-query string, by PostgreSQL's own parser; the whole
    text when it does not parse (PostgreSQL will refuse it whole, too)."""
    if ";" not in text.rstrip().rstrip(";"):
        return [text]
    try:
        return list(split(text)) or [text]
    except (ParseError, ValueError):
        return [text]


@lru_cache(maxsize=64)
def _reader(decode: Callable[[bytes], str] | None) -> Callable[[bytes], str]:
    """Statement text as the server reads it (``decode``: the session's sql_text); bytes
    that encoding cannot read (the policy refused them) are kept as Latin-1, byte for byte."""

    def read(raw: bytes) -> str:
        if decode is not None:
            try:
                return decode(raw)
            except TextError:
                pass
        return raw.decode("latin-1")
    return read


def _text(v: bytes) -> str | bytes:
    """A text-format value: str when it is UTF-8, else the bytes as they were."""
    try:
        return v.decode()
    except UnicodeDecodeError:
        return v


def _values(vals: tuple[bytes | None, ...], formats: tuple[int, ...], cap: int) -> tuple[list[Any], list[list[int]]]:
    """Parameter values (text as str, binary as bytes, NULL as None) capped at ``cap``
    bytes each, and [index, full size] of each value that was cut."""
    out: list[Any] = []
    cut: list[list[int]] = []
    for i, v in enumerate(vals):
        if v is None:
            out.append(None)
            continue
        if len(v) > cap:
            cut.append([i, len(v)])
            v = v[:cap]
        fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
        out.append(v if fmt == 1 else _text(v))
    return out, cut


@dataclass
class _Columns:
    names: list[str]
    types: list[int]
    formats: tuple[int, ...]


@dataclass
class _Prepared:
    text: str
    columns: _Columns | None = None


@dataclass
class _Portal:
    statement: str
    text: str | None
    result_formats: tuple[int, ...]
    columns: _Columns | None = None


@dataclass
class _Result:
    stmt: int | None
    part: int | None
    columns: _Columns | None
    rows: list[list[Any]] = field(default_factory=list)
    count: int = 0
    kept: int = 0
    size: int = 0  # bytes of row data buffered since the last chunk
    chunks: int = 0


@dataclass
class _Copy:
    stmt: int | None
    direction: str
    format: str
    bytes: int = 0
    messages: int = 0
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    failed: str | None = None


@dataclass
class _Entry:
    """One client message waiting for its response."""

    op: str  # query parse bind describe execute close call sync denied
    stmt: int | None
    sync: bool
    started: float
    name: str = ""  # statement / portal name (parse, describe, execute)
    target: str = ""  # describe: "S" or "P"
    part: int = 0  # query: index of the statement being answered
    parts: int = 1


@dataclass
class _State:
    info: SessionInfo
    seq: int = 0
    stmt: int = 0
    start_pending: bool = True
    queue: deque[_Entry] = field(default_factory=deque)
    prepared: dict[str, _Prepared] = field(default_factory=dict)
    portals: dict[str, _Portal] = field(default_factory=dict)
    result: _Result | None = None
    columns: _Columns | None = None  # from the last RowDescription, for the next result
    copy: _Copy | None = None
    last_body: bytes | None = None  # the client message last recorded (for message_denied)
    last_done: float = 0.0
    statements: int = 0
    errors: int = 0
    rows: int = 0
    denied: int = 0


class JournalStage:
    """The journal's Stage. One per gateway; per-session state lives in ``session.extra``."""

    name = "journal"
    client_types = frozenset(bytes([t]) for t in _TRACKED | frozenset(b"dcf"))
    server_types = frozenset(bytes([t]) for t in b"TDCENAGHWdIsV123nZ")

    def __init__(self, writer: JournalWriter, config: JournalConfig) -> None:
        self.writer = writer
        self.clock = writer.clock
        self._row_descriptions: dict[bytes, _Columns] = {}
        self._limits(config)

    def _limits(self, config: JournalConfig) -> None:
        self.max_rows = config.max_result_rows
        self.max_copy = config.max_copy_bytes
        self.max_value = config.max_value_bytes

    def reconfigure(self, config: JournalConfig) -> None:
        """Apply a reloaded [journal] section (limits at once; see JournalWriter.reconfigure)."""
        self._limits(config)
        self.writer.reconfigure(config)

    def record(self, session: SessionInfo, kind: str, fields: dict[str, Any]) -> None:
        """Write a record of another part (a policy decision, an approval) into a session's
        sequence. Raises JournalUnavailable: the caller must then refuse what it describes."""
        self._write(self._state(session), kind, fields)

    # --- records ----------------------------------------------------------------------

    def _state(self, session: SessionInfo) -> _State:
        st = session.extra.get(self.name)
        if st is None:
            st = session.extra[self.name] = _State(session)
        return st

    def _write(self, st: _State, kind: str, fields: dict[str, Any]) -> None:
        """Write one record of the session. Raises JournalUnavailable."""
        if st.start_pending and kind != r.SESSION_START:
            self._write_start(st)
        self.writer.write({"session": st.info.id, "seq": st.seq + 1, "kind": kind, **fields})
        st.seq += 1

    def _write_start(self, st: _State) -> None:
        info = st.info
        ident = info.identity
        self._write(st, r.SESSION_START, {
            "user": ident.name if ident else None, "groups": sorted(ident.groups) if ident else [],
            "source": ident.source if ident else None, "connection": info.connection,
            "database": info.database, "level": info.level,
            "peer": info.peer, "application_name": info.application_name, "tls": info.tls,
            "protocol": "%d.%d" % info.protocol, "started": r.timestamp(info.started),
            **({"user_typed": ident.typed} if ident and ident.typed else {})})
        st.start_pending = False

    def _try(self, st: _State, kind: str, fields: dict[str, Any]) -> None:
        """Write a record about something that cannot be refused (a response): on failure
        the writer has logged it; the statement it belongs to was recorded."""
        try:
            self._write(st, kind, fields)
        except JournalUnavailable:
            pass

    # --- session ----------------------------------------------------------------------

    def session_started(self, session: SessionInfo) -> None:
        try:
            self._write_start(self._state(session))
        except JournalUnavailable:
            pass  # written before the session's next record

    def session_ended(self, session: SessionInfo, reason: str) -> None:
        st = self._state(session)
        self._flush_result(st)
        if st.copy is not None:
            self._write_copy(st, None)
        now = self.clock.seconds()
        self._try(st, r.SESSION_END, {
            "reason": reason, "duration_us": round((now - session.started) * 1e6), "statements": st.statements,
            "errors": st.errors, "denied": st.denied, "rows": st.rows, "bytes_in": session.bytes_in,
            "bytes_out": session.bytes_out})
        session.extra.pop(self.name, None)

    # --- client -> server -------------------------------------------------------------

    def client_message(self, session: SessionInfo, mtype: bytes, body: bytes) -> Deny | None:
        st = self._state(session)
        t = mtype[0]
        if t in b"dcf":
            self._client_copy(st, t, body)
            return None
        now = self.clock.seconds()
        fields = self._describe(st, t, body) if t in _STATEMENTS else None
        stmt = None
        if fields is not None:
            stmt = st.stmt + 1
            try:
                self._write(st, r.STATEMENT, {"stmt": stmt, **fields})
            except JournalUnavailable:
                st.queue.append(_Entry("denied", None, t in _SYNCS, now))
                st.denied += 1
                return UNAVAILABLE
            st.stmt = stmt
            st.last_body = body
            if t in b"QEF":
                st.statements += 1
        self._track(st, t, body, stmt, now, fields)
        return None

    def message_denied(self, session: SessionInfo, mtype: bytes, body: bytes, deny: Deny) -> None:
        t = mtype[0]
        if t not in _TRACKED:
            return
        st = self._state(session)
        st.denied += 1
        fields: dict[str, Any] = {"sqlstate": deny.sqlstate, "message": deny.message}
        if deny.detail:
            fields["detail"] = deny.detail
        if deny.hint:
            fields["hint"] = deny.hint
        if st.last_body is body and st.queue:  # we recorded it: the entry we queued is the last one
            entry = st.queue[-1]
            entry.op = "denied"
            fields["stmt"] = entry.stmt
        else:
            st.queue.append(_Entry("denied", None, t in _SYNCS, self.clock.seconds()))
            fields.update(self._describe(st, t, body) or {"op": mtype.decode("latin-1")})
        st.last_body = None
        self._try(st, r.DENIED, fields)

    def _describe(self, st: _State, t: int, body: bytes) -> dict[str, Any] | None:
        """The statement record fields of a client message (None: not a statement)."""
        try:
            if t == 81:  # Q
                text = m.decode_query(body, _reader(st.info.sql_text))
                parts = split_statements(text)
                return {"op": "query", "text": text, **({"parts": parts} if len(parts) > 1 else {})}
            if t == 80:  # P
                p = m.decode_parse(body, _reader(st.info.sql_text))
                return {"op": "parse", "name": p.name, "text": p.query, "param_types": list(p.param_types)}
            if t == 66:  # B
                b = m.decode_bind(body)
                params, cut = _values(b.params, b.param_formats, self.max_value)
                prep = st.prepared.get(b.statement)
                rec = {"op": "bind", "portal": b.portal, "name": b.statement, "params": params,
                       "result_formats": list(b.result_formats)}
                if prep is not None:
                    rec["text"] = prep.text
                return {**rec, "cut": cut} if cut else rec
            if t == 69:  # E
                e = m.decode_execute(body)
                portal = st.portals.get(e.portal)
                return {"op": "execute", "portal": e.portal, "max_rows": e.max_rows,
                        "name": portal.statement if portal else None, "text": portal.text if portal else None}
            if t == 67:  # C
                kind, name = m.decode_close_or_describe(body)
                return {"op": "close", "target": "statement" if kind == "S" else "portal", "name": name}
            if t == 70:  # F
                f = m.decode_function_call(body)
                args, cut = _values(f.args, f.arg_formats, self.max_value)
                rec = {"op": "call", "oid": f.oid, "args": args, "result_format": f.result_format}
                return {**rec, "cut": cut} if cut else rec
        except ProtocolError as e:  # recorded as it came; PostgreSQL will refuse it
            return {"op": "malformed", "type": chr(t), "problem": str(e), "raw": body[:self.max_value]}
        return None

    def _track(self, st: _State, t: int, body: bytes, stmt: int | None, now: float,
               fields: dict[str, Any] | None) -> None:
        """Queue the response a client message expects; keep the statement/portal maps."""
        f = fields or {}
        op = f.get("op")
        if t == 81:
            st.queue.append(_Entry("query", stmt, True, now, parts=len(f.get("parts", "_"))))
        elif t == 80:
            st.queue.append(_Entry("parse", stmt, False, now))
            if op == "parse":
                st.prepared[f["name"]] = _Prepared(f["text"])
        elif t == 66:
            st.queue.append(_Entry("bind", stmt, False, now))
            if op == "bind":
                prep = st.prepared.get(f["name"])
                st.portals[f["portal"]] = _Portal(f["name"], prep.text if prep else None, tuple(f["result_formats"]),
                                                  prep.columns if prep else None)
        elif t == 69:
            st.queue.append(_Entry("execute", stmt, False, now, name=f.get("portal", "")))
        elif t == 67:
            st.queue.append(_Entry("close", stmt, False, now))
            if op == "close":
                (st.prepared if f["target"] == "statement" else st.portals).pop(f["name"], None)
        elif t == 70:
            st.queue.append(_Entry("call", stmt, True, now))
        elif t == 68:  # D
            try:
                target, name = m.decode_close_or_describe(body, "Describe")
            except ProtocolError:
                target, name = "", ""
            st.queue.append(_Entry("describe", None, False, now, name=name, target=target))
        elif t == 83:  # S
            st.queue.append(_Entry("sync", None, True, now))

    def _client_copy(self, st: _State, t: int, body: bytes) -> None:
        """COPY FROM STDIN data. Clients may send it before the server's CopyInResponse
        (asyncpg does): it then belongs to the message the client sent last."""
        cp = st.copy
        if cp is None:
            last = next((e for e in reversed(st.queue) if e.op != "sync"), None)
            cp = st.copy = _Copy(last.stmt if last else None, "in", "text")
        if t == 100:  # d
            self._copy_data(cp, body, len(body))
        elif t == 102:  # f
            try:
                cp.failed = m.Reader(body, "CopyFail").cstring()
            except ProtocolError:
                cp.failed = ""

    # --- server -> client -------------------------------------------------------------

    def server_message(self, session: SessionInfo, mtype: bytes, body: bytes) -> bytes | None:
        st = self._state(session)
        try:
            self._server(st, mtype[0], body)
        except ProtocolError as e:
            log.warn("journal: session {sid}: cannot decode server message {t!r}: {err}",
                     sid=session.id, t=mtype, err=e)
        return None

    def _server(self, st: _State, t: int, body: bytes) -> None:
        head = st.queue[0] if st.queue else None
        if t == 68:  # D
            self._row(st, head, body)
        elif t == 67:  # C
            self._complete(st, head, {"tag": m.decode_command_complete(body)})
        elif t == 84:  # T
            columns = self._columns(body)
            if head is not None and head.op == "describe":
                self._described(st, head, columns)
                st.queue.popleft()
            else:
                st.columns = columns
        elif t == 90:  # Z
            self._flush_result(st)
            st.columns = None
            while st.queue:
                if st.queue.popleft().sync:
                    break
            if st.copy is not None and (st.copy.stmt is None or all(e.stmt != st.copy.stmt for e in st.queue)):
                self._write_copy(st, None)  # its statement is over without a CommandComplete
            st.last_done = self.clock.seconds()
        elif t == 69:  # E
            self._error(st, head, body)
        elif t == 78:  # N
            fields = self._fields(body)
            self._try(st, r.NOTICE, {"stmt": head.stmt if head else None, **fields})
        elif t == 65:  # A
            pid, channel, payload = m.decode_notification(body)
            self._try(st, r.NOTIFICATION, {"pid": pid, "channel": channel, "payload": payload})
        elif t == 73:  # I: EmptyQueryResponse
            self._complete(st, head, {"tag": None, "empty": True})
        elif t == 115:  # s: PortalSuspended
            self._complete(st, head, {"tag": None, "suspended": True})
        elif t == 86:  # V: FunctionCallResponse
            rd = m.Reader(body, "FunctionCallResponse")
            n = rd.int32()
            value = None if n < 0 else rd.bytes(n)[:self.max_value]
            self._try(st, r.RESULT, {"stmt": head.stmt if head else None, "value": value,
                                     "us": self._elapsed(st, head)})
            st.last_done = self.clock.seconds()
        elif t in b"GHW":
            fmt = "binary" if m.Reader(body, "CopyResponse").byte() == b"\x01" else "text"
            stmt = head.stmt if head else None
            if st.copy is not None and st.copy.stmt != stmt:
                self._write_copy(st, None)
            if st.copy is None:
                st.copy = _Copy(stmt, "in", fmt)
            st.copy.direction, st.copy.format = _COPY_DIRECTION[bytes([t])], fmt
        elif t == 100:  # d
            if st.copy is not None:
                self._copy_data(st.copy, body, len(body))
        elif t == 110:  # n: NoData
            if head is not None and head.op == "describe":
                self._described(st, head, None)
                st.queue.popleft()
        elif t in b"123":
            if head is not None and head.op == {49: "parse", 50: "bind", 51: "close"}[t]:
                st.queue.popleft()

    def _columns(self, body: bytes) -> _Columns:
        """A RowDescription, decoded once per distinct body (the same few recur all day)."""
        columns = self._row_descriptions.get(body)
        if columns is None:
            cols = m.decode_row_description(body)
            columns = _Columns([c.name for c in cols], [c.type_oid for c in cols], tuple(c.format for c in cols))
            if len(self._row_descriptions) >= ROW_DESCRIPTIONS_KEPT:
                self._row_descriptions.clear()
            self._row_descriptions[body] = columns
        return columns

    def _described(self, st: _State, head: _Entry, columns: _Columns | None) -> None:
        if head.target == "S":
            prep = st.prepared.get(head.name)
            if prep is not None:
                prep.columns = columns
        else:
            portal = st.portals.get(head.name)
            if portal is not None:
                portal.columns = columns

    def _result_for(self, st: _State, head: _Entry | None) -> _Result:
        if st.result is None:
            columns = st.columns
            part = None
            if head is not None and head.op == "execute":
                portal = st.portals.get(head.name)
                if portal is not None:
                    columns = columns or portal.columns
                    if columns is not None and portal.result_formats:
                        n = len(columns.names)
                        fmts = portal.result_formats
                        columns = _Columns(columns.names, columns.types,
                                           fmts * n if len(fmts) == 1 else fmts)
            elif head is not None and head.op == "query" and head.parts > 1:
                part = head.part
            st.result = _Result(head.stmt if head else None, part, columns)
            st.columns = None
        return st.result

    def _row(self, st: _State, head: _Entry | None, body: bytes) -> None:
        res = self._result_for(st, head)
        res.count += 1
        if self.max_rows >= 0 and res.kept >= self.max_rows:
            return
        vals = m.decode_data_row(body)
        fmts = res.columns.formats if res.columns else ()
        res.rows.append([None if v is None else (v if i < len(fmts) and fmts[i] == 1 else _text(v))
                         for i, v in enumerate(vals)])
        res.kept += 1
        res.size += len(body)
        if res.size >= ROWS_CHUNK:
            self._try(st, r.ROWS, {"stmt": res.stmt, "part": res.part, "first": res.kept - len(res.rows),
                                   "rows": res.rows})
            res.rows, res.size = [], 0
            res.chunks += 1

    def _complete(self, st: _State, head: _Entry | None, fields: dict[str, Any]) -> None:
        """CommandComplete, EmptyQueryResponse or PortalSuspended: the result is whole."""
        if st.copy is not None and st.copy.stmt == (head.stmt if head else None):
            self._write_copy(st, fields.get("tag"))
        self._write_result(st, head, fields)
        if head is not None:
            if head.op == "query":
                head.part += 1
            elif head.op == "execute":
                st.queue.popleft()

    def _write_result(self, st: _State, head: _Entry | None, fields: dict[str, Any]) -> None:
        res = self._result_for(st, head)
        st.result = None
        st.rows += res.count
        rec: dict[str, Any] = {"stmt": res.stmt}
        if res.part is not None:
            rec["part"] = res.part
        if res.columns is not None:
            rec["columns"] = res.columns.names
            rec["types"] = res.columns.types
        rec.update(rows=res.rows, rows_total=res.count, truncated=res.kept < res.count)
        if res.chunks:
            rec["chunks"] = res.chunks
        rec.update(fields)
        rec["us"] = self._elapsed(st, head)
        st.last_done = self.clock.seconds()
        self._try(st, r.RESULT, rec)

    def _elapsed(self, st: _State, head: _Entry | None) -> int | None:
        if head is None:
            return None
        return round((self.clock.seconds() - max(head.started, st.last_done)) * 1e6)

    def _error(self, st: _State, head: _Entry | None, body: bytes) -> None:
        fields = self._fields(body)
        self._flush_result(st)
        if st.copy is not None and st.copy.stmt == (head.stmt if head else None):
            self._write_copy(st, None)
        st.columns = None
        st.errors += 1
        rec: dict[str, Any] = {"stmt": head.stmt if head else None}
        if head is not None and head.op == "query" and head.parts > 1:
            rec["part"] = head.part
        self._try(st, r.ERROR, {**rec, **fields, "us": self._elapsed(st, head)})
        st.last_done = self.clock.seconds()
        if head is not None and not head.sync:
            st.queue.popleft()

    def _flush_result(self, st: _State) -> None:
        """Write a result cut short (by an error, the end of the session, ...)."""
        if st.result is not None:
            self._write_result(st, st.queue[0] if st.queue else None, {"tag": None, "failed": True})

    @staticmethod
    def _fields(body: bytes) -> dict[str, Any]:
        raw = m.decode_fields(body)
        out = {name: raw[code] for code, name in _FIELDS.items() if code in raw}
        if "V" in raw:
            out["severity"] = raw["V"]  # the untranslated severity
        return out

    def _copy_data(self, cp: _Copy, body: bytes, n: int) -> None:
        cp.bytes += n
        cp.messages += 1
        room = self.max_copy - len(cp.data)
        if room > 0:
            cp.data += body[:room]
        if n > room:
            cp.truncated = True

    def _write_copy(self, st: _State, tag: str | None) -> None:
        cp = st.copy
        assert cp is not None
        st.copy = None
        rows = int(tag.rsplit(" ", 1)[1]) if tag and tag.startswith("COPY ") and tag[5:].isdigit() else None
        rec: dict[str, Any] = {"stmt": cp.stmt, "direction": cp.direction, "format": cp.format, "bytes": cp.bytes,
                               "messages": cp.messages, "rows": rows, "data": bytes(cp.data),
                               "truncated": cp.truncated}
        if tag is None:
            rec["failed"] = cp.failed if cp.failed is not None else True
        self._try(st, r.COPY, rec)

    def oversize_message(self, session: SessionInfo, from_client: bool, mtype: bytes, length: int) -> None:
        """A server row or COPY data message too large to buffer: count it, keep nothing of it."""
        st = self._state(session)
        if mtype == b"D" and not from_client:
            res = self._result_for(st, st.queue[0] if st.queue else None)
            res.count += 1
        elif mtype == b"d" and st.copy is not None:
            st.copy.bytes += length
            st.copy.messages += 1
            st.copy.truncated = True
