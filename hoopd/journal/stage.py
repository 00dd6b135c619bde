"""JournalStage: records a session's conversation from the wire into the journal.

Client statements (Query, Parse, Bind, Execute, Close, FunctionCall) are written
before ``client`` returns, and with fsync = "always" ``client`` answers a Deferred that
fires once they are on disk (JournalWriter.durable: one sync in the syncer process for
every statement that arrived meanwhile); when either fails the statement is refused
with SQLSTATE 58030 and never reaches PostgreSQL.

Which client message a response answers, which statement a portal runs and which
columns a DataRow has come from the session's Conversation (hoopd.pgwire.conversation).
Results are written as ``result`` records at CommandComplete; a result larger than
ROWS_CHUNK bytes goes out in ``rows`` records first, so memory stays bounded with
``max_result_rows = -1``. Rows are kept as the DataRow messages the client received
(``wire``, framed, with the columns' ``formats``): appending bytes is all a row costs
here, a run of rows costs one append (``server_rows``), and readers decode them
(hoopd.journal.records.expand).

The journal is last in both stage orders (hoopd.session): it records what the other
stages let through, and results as the client receives them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from pglast.parser import ParseError, split
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hoopd.journal import records as r
from hoopd.journal.config import JournalConfig
from hoopd.journal.writer import JournalUnavailable, JournalWriter
from hoopd.log import get_logger
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import COPY_DIRECTION, ClientMessage, Columns, Conversation, Pending, RowRun, \
    ServerMessage, read_sql
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.framing import rows_end
from hoopd.pgwire.types import BE, FE
from hoopd.session import Deny, SessionInfo

ROWS_CHUNK = 1 << 20  # bytes of buffered row data that make a ``rows`` record
_HEAD = struct.Struct("!cI")
UNAVAILABLE = Deny(message="hoopd: the audit journal is unavailable; statement refused", sqlstate="58030")
_FIELDS = {"S": "severity", "C": "sqlstate", "M": "message", "D": "detail", "H": "hint", "P": "position",
           "W": "where", "s": "schema", "t": "table", "c": "column", "n": "constraint"}
_STATEMENTS = frozenset({FE.QUERY, FE.PARSE, FE.BIND, FE.EXECUTE, FE.CLOSE, FE.FUNCTION_CALL})  # get a record
_COUNTED = frozenset({FE.QUERY, FE.EXECUTE, FE.FUNCTION_CALL})  # in session_end's ``statements``
_TRACKED = _STATEMENTS | {FE.DESCRIBE, FE.SYNC}  # their responses are timed
_CLIENT_COPY = frozenset({FE.COPY_DATA, FE.COPY_DONE, FE.COPY_FAIL})

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
        out.append(v if fmt == 1 else r.text_value(v))
    return out, cut


def _touched(msg: ClientMessage) -> dict[str, Any]:
    """What the policy's classification says a statement touches (for reports)."""
    if msg.touched is None or not msg.touched[0]:
        return {}
    return {"relations": list(msg.touched[0]), "writes": msg.touched[1]}


@dataclass
class _Result:
    stmt: int | None
    part: int | None
    columns: Columns | None
    started: float | None
    wire: bytearray = field(default_factory=bytearray)  # DataRows kept since the last chunk, framed
    buffered: int = 0  # rows in ``wire``
    count: int = 0
    kept: int = 0
    chunks: int = 0

    def formats(self) -> list[int]:
        return list(self.columns.formats) if self.columns is not None else []


@dataclass
class _Copy:
    stmt: int | None
    seq: int | None  # of the client message that started it
    direction: str
    format: str
    bytes: int = 0
    messages: int = 0
    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    failed: str | None = None


@dataclass(slots=True)
class _Sent:
    """What the journal knows of a client message sent and not yet answered."""

    stmt: int | None  # its statement record
    started: float
    parts: int = 1  # a Query: its statements


class JournalStage:
    """The journal's Stage: one per gateway, a JournalSession per session."""

    name = "journal"
    client_types = _TRACKED | _CLIENT_COPY
    server_types = frozenset({BE.DATA_ROW, BE.COMMAND_COMPLETE, BE.ERROR, BE.NOTICE, BE.NOTIFICATION, BE.COPY_IN,
                              BE.COPY_OUT, BE.COPY_BOTH, BE.COPY_DATA, BE.EMPTY_QUERY, BE.PORTAL_SUSPENDED,
                              BE.FUNCTION_RESULT, BE.READY})
    rewrites: frozenset[int] = frozenset()

    def __init__(self, writer: JournalWriter, config: JournalConfig) -> None:
        self.writer = writer
        self.clock = writer.clock
        self._sessions: dict[str, JournalSession] = {}
        self._limits(config)

    def _limits(self, config: JournalConfig) -> None:
        self.max_rows = config.max_result_rows
        self.max_copy = config.max_copy_bytes
        self.max_value = config.max_value_bytes

    def reconfigure(self, config: JournalConfig) -> None:
        """Apply a reloaded [journal] section (limits at once; see JournalWriter.reconfigure)."""
        self._limits(config)
        self.writer.reconfigure(config)

    def open(self, session: SessionInfo, conversation: Conversation) -> "JournalSession":
        js = self._sessions[session.id] = JournalSession(self, session, conversation)
        return js

    def record(self, session: SessionInfo, kind: str, fields: dict[str, Any]) -> None:
        """Write a record of another part (a policy decision, an approval) into a session's
        sequence. Raises JournalUnavailable (also for a session not open): the caller must
        then refuse what it describes."""
        js = self._sessions.get(session.id)
        if js is None:
            raise JournalUnavailable(f"session {session.id} is not open in the journal")
        js.write(kind, fields)


class JournalSession:
    """What the journal keeps of one session, from session_start to session_end."""

    def __init__(self, stage: JournalStage, info: SessionInfo, conversation: Conversation) -> None:
        self.stage = stage
        self.clock = stage.clock
        self.info = info
        self.conv = conversation
        self.seq = 0
        self.stmt = 0
        self.start_pending = True
        self.sent: dict[int, _Sent] = {}  # by ClientMessage.seq
        self.result: _Result | None = None
        self.copy: _Copy | None = None
        self.last_done = 0.0
        self.statements = self.errors = self.rows = self.denied_count = 0
        try:
            self._write_start()
        except JournalUnavailable:
            pass  # written before the session's next record

    # --- records ----------------------------------------------------------------------

    def write(self, kind: str, fields: dict[str, Any]) -> None:
        """Write one record of the session. Raises JournalUnavailable."""
        if self.start_pending and kind != r.SESSION_START:
            self._write_start()
        self.stage.writer.write(fields, session=self.info.id, seq=self.seq + 1, kind=kind)
        self.seq += 1

    def _write_start(self) -> None:
        info = self.info
        ident = info.identity
        self.write(r.SESSION_START, {
            "user": ident.name if ident else None, "groups": sorted(ident.groups) if ident else [],
            "source": ident.source if ident else None, "connection": info.connection,
            "database": info.database, "level": info.level,
            "peer": info.peer, "application_name": info.application_name, "tls": info.tls,
            "protocol": "%d.%d" % info.protocol, "started": r.timestamp(info.started),
            **({"grant": info.grant} if info.grant else {}),
            **({"user_typed": ident.typed} if ident and ident.typed else {})})
        self.start_pending = False

    def _try(self, kind: str, fields: dict[str, Any]) -> None:
        """Write a record about something that cannot be refused (a response): on failure
        the writer has logged it; the statement it belongs to was recorded."""
        try:
            self.write(kind, fields)
        except JournalUnavailable:
            pass

    def close(self, reason: str) -> None:
        self._flush_result()
        if self.copy is not None:
            self._write_copy(None)
        now = self.clock.seconds()
        info = self.info
        self._try(r.SESSION_END, {
            "reason": reason, "duration_us": round((now - info.started) * 1e6), "statements": self.statements,
            "errors": self.errors, "denied": self.denied_count, "rows": self.rows, "bytes_in": info.bytes_in,
            "bytes_out": info.bytes_out})
        self.stage._sessions.pop(info.id, None)

    # --- client -> server -------------------------------------------------------------

    def client(self, msg: ClientMessage) -> "Deny | None | Deferred[Deny | None]":
        t = msg.type
        if t in _CLIENT_COPY:
            self._client_copy(msg)
            return None
        now = self.clock.seconds()
        fields = self._describe(msg) if t in _STATEMENTS else None
        stmt = None
        if fields is not None:
            stmt = self.stmt + 1
            try:
                self.write(r.STATEMENT, {"stmt": stmt, **fields})
            except JournalUnavailable:
                self.denied_count += 1
                return UNAVAILABLE
            self.stmt = stmt
            if t in _COUNTED:
                self.statements += 1
        self.sent[msg.seq] = _Sent(stmt, now, len(fields.get("parts", "_")) if fields else 1)
        if stmt is not None and self.stage.writer.config.fsync == "always":
            d = self.stage.writer.durable()
            if d is not None:
                return d.addCallbacks(lambda _: None, self._unsynced)
        return None

    def _unsynced(self, f: Failure) -> Deny:
        f.trap(JournalUnavailable)
        self.denied_count += 1
        return UNAVAILABLE

    def denied(self, msg: ClientMessage, deny: Deny) -> None:
        if msg.type not in _TRACKED:
            return
        self.denied_count += 1
        fields: dict[str, Any] = {"sqlstate": deny.sqlstate, "message": deny.message}
        if deny.detail:
            fields["detail"] = deny.detail
        if deny.hint:
            fields["hint"] = deny.hint
        mine = self.sent.get(msg.seq)
        if mine is not None:  # we recorded it: refer to that record
            fields["stmt"] = mine.stmt
        else:
            fields.update(self._describe(msg) or {"op": msg.name})
        self._try(r.DENIED, fields)

    def _describe(self, msg: ClientMessage) -> dict[str, Any] | None:
        """The statement record fields of a client message (None: not a statement)."""
        t = msg.type
        max_value = self.stage.max_value
        try:
            if t == FE.QUERY:
                text = read_sql(msg, self.info.sql_text)
                parts = list(msg.statements) if msg.statements else split_statements(text)
                return {"op": "query", "text": text, **({"parts": parts} if len(parts) > 1 else {}), **_touched(msg)}
            if t == FE.PARSE:
                p = read_sql(msg, self.info.sql_text)
                return {"op": "parse", "name": p.name, "text": p.query, "param_types": list(p.param_types),
                        **_touched(msg)}
            if t == FE.BIND:
                b = msg.decoded()
                params, cut = _values(b.params, b.param_formats, max_value)
                prep = self.conv.prepared.get(b.statement)
                rec = {"op": "bind", "portal": b.portal, "name": b.statement, "params": params,
                       "result_formats": list(b.result_formats)}
                if prep is not None:
                    rec["text"] = prep.text
                return {**rec, "cut": cut} if cut else rec
            if t == FE.EXECUTE:
                e = msg.decoded()
                portal = self.conv.portals.get(e.portal)
                return {"op": "execute", "portal": e.portal, "max_rows": e.max_rows,
                        "name": portal.statement if portal else None, "text": portal.text if portal else None}
            if t == FE.CLOSE:
                kind, name = msg.decoded()
                return {"op": "close", "target": "statement" if kind == "S" else "portal", "name": name}
            if t == FE.FUNCTION_CALL:
                f = msg.decoded()
                args, cut = _values(f.args, f.arg_formats, max_value)
                rec = {"op": "call", "oid": f.oid, "args": args, "result_format": f.result_format}
                return {**rec, "cut": cut} if cut else rec
        except ProtocolError as e:  # recorded as it came; PostgreSQL will refuse it
            return {"op": "malformed", "type": msg.name, "problem": str(e), "raw": msg.body[:max_value]}
        return None

    def _client_copy(self, msg: ClientMessage) -> None:
        """COPY FROM STDIN data. Clients may send it before the server's CopyInResponse
        (asyncpg does): it then belongs to the message the client sent last."""
        cp = self.copy
        if cp is None:
            last = next((p for p in reversed(self.conv.queue) if p.op != "sync"), None)
            cp = self.copy = _Copy(self._stmt_of(last), last.msg.seq if last else None, "in", "text")
        if msg.type == FE.COPY_DATA:
            self._copy_data(cp, msg.body, len(msg.body))
        elif msg.type == FE.COPY_FAIL:
            try:
                cp.failed = m.Reader(msg.body, "CopyFail").cstring()
            except ProtocolError:
                cp.failed = ""

    # --- server -> client -------------------------------------------------------------

    def _stmt_of(self, p: Pending | None) -> int | None:
        mine = self.sent.get(p.msg.seq) if p is not None else None
        return mine.stmt if mine is not None else None

    def server(self, msg: ServerMessage) -> None:
        try:
            self._server(msg)
        except ProtocolError as e:
            log.warn("journal: session {sid}: cannot decode server message {t!r}: {err}",
                     sid=self.info.id, t=chr(msg.type), err=e)
        return None

    def _server(self, msg: ServerMessage) -> None:
        t = msg.type
        head = msg.answers
        if t == BE.DATA_ROW:
            self._row(msg)
        elif t == BE.COMMAND_COMPLETE:
            self._complete(msg, {"tag": m.decode_command_complete(msg.body)})
        elif t == BE.READY:
            self._flush_result()
            q = self.conv.queue
            cp = self.copy
            if cp is not None and (cp.seq is None or all(p.msg.seq != cp.seq for p in q)):
                self._write_copy(None)  # its statement is over without a CommandComplete
            oldest = q[0].msg.seq if q else None
            self.sent = {k: v for k, v in self.sent.items() if k >= oldest} if oldest is not None else {}
            self.last_done = self.clock.seconds()
        elif t == BE.ERROR:
            self._error(msg)
        elif t == BE.NOTICE:
            self._try(r.NOTICE, {"stmt": self._stmt_of(head), **self._fields(msg.body)})
        elif t == BE.NOTIFICATION:
            pid, channel, payload = m.decode_notification(msg.body)
            self._try(r.NOTIFICATION, {"pid": pid, "channel": channel, "payload": payload})
        elif t == BE.EMPTY_QUERY:
            self._complete(msg, {"tag": None, "empty": True})
        elif t == BE.PORTAL_SUSPENDED:
            self._complete(msg, {"tag": None, "suspended": True})
        elif t == BE.FUNCTION_RESULT:
            rd = m.Reader(msg.body, "FunctionCallResponse")
            n = rd.int32()
            value = None if n < 0 else rd.bytes(n)[:self.stage.max_value]
            self._try(r.RESULT, {"stmt": self._stmt_of(head), "value": value, "us": self._elapsed(self._started(head))})
            self.last_done = self.clock.seconds()
        elif t in COPY_DIRECTION:
            fmt = "binary" if m.Reader(msg.body, "CopyResponse").byte() == b"\x01" else "text"
            stmt = self._stmt_of(head)
            if self.copy is not None and self.copy.stmt != stmt:
                self._write_copy(None)
            if self.copy is None:
                self.copy = _Copy(stmt, head.msg.seq if head else None, "in", fmt)
            self.copy.direction, self.copy.format = COPY_DIRECTION[t], fmt
        elif t == BE.COPY_DATA:
            if self.copy is not None:
                self._copy_data(self.copy, msg.body, len(msg.body))

    def _started(self, head: Pending | None) -> float | None:
        mine = self.sent.get(head.msg.seq) if head is not None else None
        return mine.started if mine is not None else None

    def _part(self, msg: ServerMessage) -> int | None:
        """A multi-statement Query: the index of the statement this message answers."""
        head = msg.answers
        if head is None or head.op != "query":
            return None
        mine = self.sent.get(head.msg.seq)
        return msg.part if mine is not None and mine.parts > 1 else None

    def _result_for(self, msg: ServerMessage | None) -> _Result:
        if self.result is None:
            if msg is None:  # an oversize row: the conversation did not see it
                head = self.conv.queue[0] if self.conv.queue else None
                self.result = _Result(self._stmt_of(head), None, self.conv.result_columns(head), self._started(head))
            else:
                self.result = _Result(self._stmt_of(msg.answers), self._part(msg), msg.columns,
                                      self._started(msg.answers))
        return self.result

    def _row(self, msg: ServerMessage) -> None:
        res = self._result_for(msg)
        res.count += 1
        max_rows = self.stage.max_rows
        if max_rows >= 0 and res.kept >= max_rows:
            return
        body = msg.body
        res.wire += _HEAD.pack(b"D", len(body) + 4)
        res.wire += body
        self._kept(res, 1)

    def server_rows(self, run: RowRun) -> None:
        """Consecutive DataRows of one result (SessionStage.server_rows): kept as they are."""
        res = self._result_for(run.first)
        n = run.count
        res.count += n
        max_rows = self.stage.max_rows
        room = n if max_rows < 0 else max_rows - res.kept
        if room <= 0:
            return
        if room >= n:
            res.wire += run.data
        else:
            res.wire += run.data[:rows_end(run.data, room)]
            n = room
        self._kept(res, n)

    def _kept(self, res: _Result, n: int) -> None:
        res.kept += n
        res.buffered += n
        if len(res.wire) >= ROWS_CHUNK:
            self._try(r.ROWS, {"stmt": res.stmt, "part": res.part, "first": res.kept - res.buffered,
                               "formats": res.formats(), "wire": bytes(res.wire)})
            res.wire, res.buffered = bytearray(), 0
            res.chunks += 1

    def _complete(self, msg: ServerMessage, fields: dict[str, Any]) -> None:
        """CommandComplete, EmptyQueryResponse or PortalSuspended: the result is whole."""
        res = self._result_for(msg)
        if self.copy is not None and self.copy.stmt == res.stmt:
            self._write_copy(fields.get("tag"))
        self._write_result(fields)

    def _write_result(self, fields: dict[str, Any]) -> None:
        res = self.result
        assert res is not None
        self.result = None
        self.rows += res.count
        rec: dict[str, Any] = {"stmt": res.stmt}
        if res.part is not None:
            rec["part"] = res.part
        if res.columns is not None:
            rec["columns"] = list(res.columns.names)
            rec["types"] = list(res.columns.types)
        rec.update(formats=res.formats(), wire=bytes(res.wire), rows_total=res.count, truncated=res.kept < res.count)
        if res.chunks:
            rec["chunks"] = res.chunks
        rec.update(fields)
        rec["us"] = self._elapsed(res.started)
        self.last_done = self.clock.seconds()
        self._try(r.RESULT, rec)

    def _elapsed(self, started: float | None) -> int | None:
        if started is None:
            return None
        return round((self.clock.seconds() - max(started, self.last_done)) * 1e6)

    def _error(self, msg: ServerMessage) -> None:
        head = msg.answers
        fields = self._fields(msg.body)
        self._flush_result()
        stmt = self._stmt_of(head)
        if self.copy is not None and self.copy.stmt == stmt:
            self._write_copy(None)
        self.errors += 1
        rec: dict[str, Any] = {"stmt": stmt}
        part = self._part(msg)
        if part is not None:
            rec["part"] = part
        self._try(r.ERROR, {**rec, **fields, "us": self._elapsed(self._started(head))})
        self.last_done = self.clock.seconds()

    def _flush_result(self) -> None:
        """Write a result cut short (by an error, the end of the session, ...)."""
        if self.result is not None:
            self._write_result({"tag": None, "failed": True})

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
        room = self.stage.max_copy - len(cp.data)
        if room > 0:
            cp.data += body[:room]
        if n > room:
            cp.truncated = True

    def _write_copy(self, tag: str | None) -> None:
        cp = self.copy
        assert cp is not None
        self.copy = None
        rows = int(tag.rsplit(" ", 1)[1]) if tag and tag.startswith("COPY ") and tag[5:].isdigit() else None
        rec: dict[str, Any] = {"stmt": cp.stmt, "direction": cp.direction, "format": cp.format, "bytes": cp.bytes,
                               "messages": cp.messages, "rows": rows, "data": bytes(cp.data),
                               "truncated": cp.truncated}
        if tag is None:
            rec["failed"] = cp.failed if cp.failed is not None else True
        self._try(r.COPY, rec)

    def oversize(self, from_client: bool, mtype: int, length: int) -> None:
        """A server row or COPY data message too large to buffer: count it, keep nothing of it."""
        if mtype == BE.DATA_ROW and not from_client:
            self._result_for(None).count += 1
        elif mtype == FE.COPY_DATA and self.copy is not None:
            self.copy.bytes += length
            self.copy.messages += 1
            self.copy.truncated = True
