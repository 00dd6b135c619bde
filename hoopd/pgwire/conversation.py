"""One session's conversation, tracked once for every stage (sans-IO).

The relay hands each client message it frames to ``client()`` (which wraps it in a
ClientMessage, decoded lazily and at most once), and, once the stages have decided,
``sent()`` with what reached the server (the message, or the marker that stands for a
denied one). Each server message goes to ``server()``, which links it to the client
message it answers and, for rows, to the columns that describe them, then applies it.

What it keeps is the protocol's own bookkeeping:

* the queue of client messages waiting for a response, through each Sync (the server
  skips the rest of an extended-protocol batch after an error, up to the Sync);
* prepared statements and portals by name, with their text, parameter types, result
  formats and described columns. A Parse, Bind or Close takes effect when sent (later
  pipelined messages refer to it before the server confirms), and is undone when the
  server refuses or skips it;
* the columns and formats that apply to each DataRow, the COPY in progress, and the
  transaction status of the last ReadyForQuery.

It knows nothing of policy, journal or masking.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from hoopd.pgwire import messages as m
from hoopd.pgwire.encodings import Decoder, TextError
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.types import BE, FE

ROW_DESCRIPTIONS_KEPT = 1024  # decoded RowDescriptions cached (shared by all sessions)
_SYNCS = frozenset({FE.QUERY, FE.FUNCTION_CALL, FE.SYNC})  # answered by ReadyForQuery
_OPS = {FE.QUERY: "query", FE.PARSE: "parse", FE.BIND: "bind", FE.EXECUTE: "execute", FE.DESCRIBE: "describe",
        FE.CLOSE: "close", FE.FUNCTION_CALL: "call", FE.SYNC: "sync"}
_COMPLETES = {BE.PARSE_COMPLETE: "parse", BE.BIND_COMPLETE: "bind", BE.CLOSE_COMPLETE: "close"}
_RESULT_END = frozenset({BE.COMMAND_COMPLETE, BE.EMPTY_QUERY, BE.PORTAL_SUSPENDED})
COPY_DIRECTION = {BE.COPY_IN: "in", BE.COPY_OUT: "out", BE.COPY_BOTH: "both"}
TRACKED_CLIENT = frozenset(_OPS)
"""Client message types the conversation must see to keep its queue exact."""
TRACKED_SERVER = frozenset({BE.PARSE_COMPLETE, BE.BIND_COMPLETE, BE.CLOSE_COMPLETE, BE.COMMAND_COMPLETE, BE.ERROR,
                            BE.COPY_IN, BE.COPY_OUT, BE.COPY_BOTH, BE.EMPTY_QUERY, BE.ROW_DESCRIPTION, BE.NO_DATA,
                            BE.FUNCTION_RESULT, BE.READY, BE.PORTAL_SUSPENDED, BE.PARAMETER_DESCRIPTION})
"""Server message types the same way (DataRow and CopyData change nothing tracked)."""


@dataclass(frozen=True, slots=True)
class Columns:
    """What a RowDescription says, with the formats that apply to the rows."""

    names: tuple[str, ...]
    types: tuple[int, ...]
    formats: tuple[int, ...]
    tables: tuple[int, ...] = ()  # each column's source table OID (0: computed), when known
    attnums: tuple[int, ...] = ()  # and its attribute number there

    def with_formats(self, formats: tuple[int, ...]) -> "Columns":
        """The same columns with a Bind's result formats (one code applies to all)."""
        n = len(self.names)
        return Columns(self.names, self.types, formats * n if len(formats) == 1 else formats, self.tables,
                       self.attnums)


_row_descriptions: dict[bytes, Columns] = {}


def columns_of(body: bytes) -> Columns:
    """A RowDescription, decoded once per distinct body (the same few recur all day)."""
    cols = _row_descriptions.get(body)
    if cols is None:
        desc = m.decode_row_description(body)
        cols = Columns(tuple(c.name for c in desc), tuple(c.type_oid for c in desc), tuple(c.format for c in desc),
                       tuple(c.table_oid for c in desc), tuple(c.attnum for c in desc))
        if len(_row_descriptions) >= ROW_DESCRIPTIONS_KEPT:
            _row_descriptions.clear()
        _row_descriptions[body] = cols
    return cols


class ClientMessage:
    """One client message as the stages see it. Decoders run on first use, once."""

    __slots__ = ("type", "body", "seq", "_decoded", "_sql", "statements", "kinds", "touched", "review")

    def __init__(self, mtype: int, body: bytes, seq: int) -> None:
        self.type = mtype
        self.body = body
        self.seq = seq  # 1, 2, ...: the order the client sent the messages the relay framed
        self._decoded: Any = None
        self._sql: tuple[Decoder | None, Any] | None = None
        self.statements: tuple[str, ...] | None = None
        """A Query's statements, when a stage split it (the policy does; others reuse it)."""
        self.kinds: frozenset[str] | None = None
        """Query/Parse: the kinds of statement it runs, when a stage classified it (the policy)."""
        self.touched: tuple[tuple[str, ...], bool] | None = None
        """Query/Parse: (the relations it names, whether it writes), from the same classification."""
        self.review: Any = None
        """What must approve it before it runs, when a stage said so (the policy's review decisions)."""

    def decoded(self) -> Any:
        """Bind, Execute, FunctionCall, or (kind, name) of Close/Describe; raises
        ProtocolError when malformed. Query and Parse: see ``sql``."""
        d = self._decoded
        if d is None:
            t = self.type
            if t == FE.BIND:
                d = m.decode_bind(self.body)
            elif t == FE.EXECUTE:
                d = m.decode_execute(self.body)
            elif t == FE.CLOSE:
                d = m.decode_close_or_describe(self.body)
            elif t == FE.DESCRIBE:
                d = m.decode_close_or_describe(self.body, "Describe")
            elif t == FE.FUNCTION_CALL:
                d = m.decode_function_call(self.body)
            else:
                raise ValueError(f"no decoder for client message type {chr(t)!r}")
            self._decoded = d
        return d

    def sql(self, text: Decoder | None) -> Any:
        """A Query's text (str) or a Parse (m.Parse), its statement text read by ``text``
        (the session's decoder). Raises ProtocolError, or TextError from ``text``."""
        cached = self._sql
        if cached is not None and cached[0] is text:
            return cached[1]
        out: Any = (m.decode_query(self.body, text) if self.type == FE.QUERY else m.decode_parse(self.body, text))
        self._sql = (text, out)
        return out

    @property
    def name(self) -> str:
        """The message's type letter, for logs and records."""
        return chr(self.type)


def _latin1(raw: bytes) -> str:
    return raw.decode("latin-1")


def read_sql(msg: ClientMessage, text: Decoder | None) -> Any:
    """``msg.sql(text)`` for a record of what was sent: text the session's encoding
    cannot read (the policy refused it) is kept as Latin-1, byte for byte."""
    if text is not None:
        try:
            return msg.sql(text)
        except TextError:
            pass
    return msg.sql(_latin1)


class ServerMessage:
    """One server message as the stages see it."""

    __slots__ = ("type", "body", "answers", "part", "columns")

    def __init__(self, mtype: int, body: bytes, answers: "Pending | None", part: int,
                 columns: Columns | None) -> None:
        self.type = mtype
        self.body = body
        self.answers = answers  # the client message it responds to (None: unsolicited or unknown)
        self.part = part  # a multi-statement Query: the index of the statement it answers
        self.columns = columns  # DataRow / end of a result: the result's columns, when described


class RowRun:
    """Consecutive DataRows of one result, framed as received (``data``), for stages that
    look at many rows at once; ``first`` is the first row as a ServerMessage (what it
    answers, its columns: the same for every row of the run)."""

    __slots__ = ("data", "count", "first")

    def __init__(self, data: bytes, count: int, first: ServerMessage) -> None:
        self.data = data
        self.count = count
        self.first = first


@dataclass(slots=True, eq=False)
class Prepared:
    text: str
    param_types: tuple[int, ...]
    columns: Columns | None = None


@dataclass(slots=True, eq=False)
class Portal:
    statement: str
    text: str | None
    result_formats: tuple[int, ...]
    columns: Columns | None = None


@dataclass(slots=True, eq=False)
class Pending:
    """A client message that reached the server and waits for its response."""

    msg: ClientMessage
    op: str  # query parse bind describe execute close call sync
    sync: bool  # answered by ReadyForQuery
    denied: bool = False  # a stage refused it: the server got a marker that fails instead
    name: str = ""  # describe / execute: the statement or portal named
    target: str = ""  # describe: "S" or "P"
    part: int = 0  # query: index of the statement being answered
    undo: Callable[[], None] | None = None  # what reverts its effect when the server refuses or skips it


@dataclass(slots=True)
class Copy:
    direction: str  # in | out | both
    binary: bool
    answers: Pending | None


class Conversation:
    """The protocol state of one session (see the module docstring)."""

    def __init__(self) -> None:
        self.queue: deque[Pending] = deque()
        self.prepared: dict[str, Prepared] = {}
        self.portals: dict[str, Portal] = {}
        self.copy: Copy | None = None
        self.status = "I"  # of the last ReadyForQuery: I, T or E
        self.text: Decoder | None = None  # statement bytes -> text as the server reads them (SessionInfo.sql_text)
        self._seq = 0
        self._described: Columns | None = None  # a RowDescription for the result that follows
        self._result: Columns | None = None  # columns of the result being sent (None: not known yet)
        self._in_result = False
        self._skipping = False  # an extended-protocol error: the server discards until Sync

    # --- client -> server -------------------------------------------------------------

    def client(self, mtype: int, body: bytes) -> ClientMessage:
        self._seq += 1
        return ClientMessage(mtype, body, self._seq)

    def sent(self, msg: ClientMessage, denied: bool = False) -> Pending | None:
        """``msg`` went to the server (``denied``: as a failing marker). Returns its queue entry."""
        op = _OPS.get(msg.type)
        if op is None:
            return None
        p = Pending(msg, op, msg.type in _SYNCS, denied)
        if not denied and not self._skipping:
            try:
                self._apply(p)
            except ProtocolError:
                pass  # the server refuses it, too
        self.queue.append(p)
        return p

    def _apply(self, p: Pending) -> None:
        t = p.msg.type
        if t == FE.PARSE:
            parse = read_sql(p.msg, self.text)
            p.undo = self._put(self.prepared, parse.name, Prepared(parse.query, parse.param_types))
        elif t == FE.BIND:
            b = p.msg.decoded()
            prep = self.prepared.get(b.statement)
            p.undo = self._put(self.portals, b.portal, Portal(b.statement, prep.text if prep else None,
                                                              b.result_formats, prep.columns if prep else None))
        elif t == FE.CLOSE:
            kind, name = p.msg.decoded()
            table: dict[str, Any] = self.prepared if kind == "S" else self.portals
            old = table.pop(name, None)
            if old is not None:
                p.undo = lambda: table.__setitem__(name, old)
        elif t == FE.DESCRIBE:
            p.target, p.name = p.msg.decoded()
        elif t == FE.EXECUTE:
            p.name = p.msg.decoded().portal

    @staticmethod
    def _put(table: dict[str, Any], name: str, value: Any) -> Callable[[], None]:
        old = table.get(name)
        table[name] = value

        def undo() -> None:
            if table.get(name) is value:
                if old is None:
                    del table[name]
                else:
                    table[name] = old
        return undo

    # --- server -> client -------------------------------------------------------------

    def server(self, mtype: int, body: bytes) -> ServerMessage:
        """Wrap a server message (linked to what it answers), then apply it.
        Raises ProtocolError for a malformed message the conversation must read."""
        q = self.queue
        head = q[0] if q else None
        if mtype == BE.DATA_ROW or mtype in _RESULT_END:
            msg = ServerMessage(mtype, body, head, head.part if head else 0, self.result_columns(head))
        else:
            msg = ServerMessage(mtype, body, head, head.part if head else 0, None)
        if mtype == BE.DATA_ROW or mtype == BE.COPY_DATA:
            return msg
        if mtype in _RESULT_END:
            self._end_result()
            if mtype == BE.COMMAND_COMPLETE:
                self.copy = None
            if head is not None:
                if head.op == "query":
                    head.part += 1
                elif head.op == "execute":
                    q.popleft()
        elif mtype == BE.ROW_DESCRIPTION:
            cols = columns_of(body)
            if head is not None and head.op == "describe":
                self._describe(head, cols)
                q.popleft()
            else:
                self._described = cols
        elif mtype == BE.READY:
            self.status = body[:1].decode("latin-1")
            self._end_result()
            self.copy = None
            self._skipping = False
            self._skip_to_sync(undo=False)
        elif mtype == BE.ERROR:
            self._end_result()
            self.copy = None
            if head is not None and not head.sync:
                self._skipping = True  # what the client sends before its Sync is discarded too
                self._skip_to_sync(undo=True)
        elif mtype in _COMPLETES:
            if head is not None and head.op == _COMPLETES[mtype]:
                q.popleft()
        elif mtype == BE.PARAMETER_DESCRIPTION:
            if head is not None and head.op == "describe" and head.target == "S":
                entry = self.prepared.get(head.name)
                if entry is not None:  # the types the server chose for parameters the Parse left open
                    r = m.Reader(body, "ParameterDescription")
                    entry.param_types = tuple(r.int32() for _ in range(max(0, r.int16())))
        elif mtype == BE.NO_DATA:
            if head is not None and head.op == "describe":
                self._describe(head, None)
                q.popleft()
        elif mtype in COPY_DIRECTION:
            self.copy = Copy(COPY_DIRECTION[mtype], m.Reader(body, "CopyResponse").byte() == b"\x01", head)
        elif mtype == BE.COPY_DONE:
            if self.copy is not None and self.copy.direction == "out":
                self.copy = None
        return msg

    def _skip_to_sync(self, undo: bool) -> None:
        """Pop through the next sync point. After an error the popped messages failed or
        were skipped by the server: their effects are undone, newest first."""
        q = self.queue
        popped: list[Pending] = []
        while q:
            p = q.popleft()
            popped.append(p)
            if p.sync:
                if undo:
                    q.appendleft(p)  # the Sync itself is still answered by the ReadyForQuery
                    popped.pop()
                break
        if undo:
            for p in reversed(popped):
                if p.undo is not None:
                    p.undo()

    def _describe(self, head: Pending, cols: Columns | None) -> None:
        table: dict[str, Any] = self.prepared if head.target == "S" else self.portals
        entry = table.get(head.name)
        if entry is not None:
            entry.columns = cols

    def result_columns(self, head: Pending | None) -> Columns | None:
        """The columns of the result being sent now (decided at its first row or its end)."""
        if not self._in_result:
            self._in_result = True
            cols = self._described
            if head is not None and head.op == "execute":
                portal = self.portals.get(head.name)
                if portal is not None:
                    cols = cols or portal.columns
                    if cols is not None and portal.result_formats:
                        cols = cols.with_formats(portal.result_formats)
            self._result = cols
            self._described = None
        return self._result

    def _end_result(self) -> None:
        self._in_result = False
        self._result = self._described = None
