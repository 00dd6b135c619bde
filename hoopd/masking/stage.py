"""MaskingStage: rewrites what leaves the server so the client (and the journal after it)
only ever sees masked values, for the sessions a ``[[masking.rules]]`` applies to.

Paths a value can leave by, and what happens to each:

* DataRow, text format: every value whose column type is not a known non-text type
  (numbers, dates, uuid, inet, bytea...) is searched; so are computed columns, records,
  arrays and JSON, in their text form, whatever the query did to produce them.
* DataRow, binary format: text-like types (text, varchar, bpchar, name, json, jsonb,
  xml, unknown) and one-or-more-dimensional arrays of them are decoded, masked and
  re-encoded; a binary value of any other type that is not known to be non-text cannot
  be read, and the session is ended rather than let it through (fail closed).
* COPY TO STDOUT in text and CSV: each CopyData line; binary COPY ends the session.
* ErrorResponse / NoticeResponse fields that may echo values (message, detail, hint,
  context, ...), NotificationResponse payloads.

Column rules (hoopd.masking.columns) mask the columns they name whole, by the
RowDescription's source table and column and, for computed columns, by what the
statement derives them from; detectors then look at the content of the other
text-like columns. A session with column rules reads the database's relation catalog
before its first statement (and again after DDL, or when a result names a table the
catalog does not have: until then such columns are masked by the first column rule).
A statement that would store or export masked columns' values (INSERT ... SELECT,
UPDATE ... SET, CREATE TABLE AS, COPY ... TO) is refused: masking would not follow
the values into the new rows or the COPY stream.

Values are read in the session's client encoding. Rows too large to buffer follow the
relay's rule for rewriting stages ([gateway] max_rewrite_bytes): the session ends.
"""
from __future__ import annotations

import struct
from typing import Callable, NoReturn

from twisted.internet.defer import Deferred

from hoopd.log import get_logger
from hoopd.masking.columns import ColumnMasks, Plan
from hoopd.masking.copyout import CopyFormat, mask_line
from hoopd.masking.derive import STORES, Derived, copies, copy_columns, opaque_calls, touches
from hoopd.masking.jsontext import mask_json
from hoopd.masking.relations import RelationCatalogs, Relations
from hoopd.masking.rules import Masker, MaskingConfig, MaskRule
from hoopd.masking.values import masked_value
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import ClientMessage, Columns, Conversation, RowRun, ServerMessage
from hoopd.pgwire.encodings import CODECS, TextError, canonical
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.types import BE, FE
from hoopd.session import Deny, EndSession, SessionInfo, Verdict

log = get_logger("hoopd.masking")

RECORD = "masking"  # the journal's record kind for a result's summary (hoopd.journal.records.MASKING)
_I32 = struct.Struct("!i")

# Types whose values are never text a detector should see (and whose text form a
# replacement would make unparseable for the client).
NON_TEXT = frozenset({16, 17, 20, 21, 23, 24, 26, 28, 29, 650, 700, 701, 774, 790, 829, 869, 1082, 1083, 1114,
                      1184, 1186, 1266, 1560, 1562, 1700, 2202, 2203, 2204, 2205, 2206, 2950, 3220, 3734, 3769,
                      4089, 4096,
                      # and their arrays
                      1000, 1001, 1005, 1007, 1016, 1021, 1022, 1028, 1041, 651, 1040, 775, 791, 1182, 1183, 1115,
                      1185, 1187, 1270, 1561, 1563, 1231, 2951})
TEXT_BINARY = frozenset({18, 19, 25, 142, 705, 1042, 1043})  # binary format = the text's bytes
JSON, JSONB = 114, 3802  # masked as documents (hoopd.masking.jsontext); jsonb binary: a version byte (1), then text
_KEEP_FIELDS = frozenset(b"SVCFLRP")  # severity, code, source file/line/routine, position: no values
_CLASS_42 = b"\0C42"  # an SQLSTATE field of class 42 (its code byte after the previous field's end)
_NAME_FIELDS = frozenset(b"stcdn")  # schema, table, column, data type, constraint: names, not values
Part = Callable[[bytes, int], "tuple[bytes | None, bool]"]  # (raw, type oid) -> (new or None, becomes NULL)
Record = Callable[[SessionInfo, str, dict], None]
_RESULT_ENDS = (BE.COMMAND_COMPLETE, BE.EMPTY_QUERY, BE.PORTAL_SUSPENDED, BE.READY)  # a result is over
_COPYING = frozenset({"insert", "update", "merge", "ddl", "copy_to", "declare", "do", "call"})  # kinds parsed before they run
_STORE_WORDS = (*STORES, "u&")  # in a statement's text: parse it (u&: a name spelled in unicode escapes)
_DDL_TAGS = (b"CREATE", b"ALTER", b"DROP", b"COMMENT", b"SELECT INTO")  # the relation catalog may have changed


class MaskingStage:
    """One per gateway; a MaskingSession for each session a rule applies to."""

    name = "masking"
    client_types = frozenset({FE.QUERY, FE.PARSE})
    server_types = frozenset({BE.DATA_ROW, BE.COPY_DATA, BE.COPY_DONE, BE.ERROR, BE.NOTICE, BE.NOTIFICATION, BE.COPY_OUT,
                              BE.COPY_BOTH, *_RESULT_ENDS})
    rewrites = frozenset({BE.DATA_ROW, BE.COPY_DATA, BE.ERROR, BE.NOTICE, BE.NOTIFICATION})

    def __init__(self, config: MaskingConfig, record: Record | None = None,
                 count: Callable[[str, str, int], None] | None = None,
                 relations: RelationCatalogs | None = None) -> None:
        self.config = config  # replace it on reload; new sessions use the new rules
        self.record = record  # a ``masking`` record per result that had values masked (rule names, counts)
        self.count = count  # (rule, strategy, spans), for metrics
        self.relations = relations  # for column rules; None: no catalog, column rules mask every named column

    def open(self, session: SessionInfo, conversation: Conversation) -> "MaskingSession | None":
        ident = session.identity
        masker = self.config.masker(session.level, ident.name if ident else None, ident.groups if ident else (),
                                    session.application_name, session.connection)
        return None if masker is None else MaskingSession(self, masker, session, conversation)


class MaskingSession:
    """What a session's rules do to each server message it may carry a value in."""

    def __init__(self, stage: MaskingStage, masker: Masker, info: SessionInfo, conversation: Conversation) -> None:
        self.stage = stage
        self.masker = masker
        self.info = info
        self.conversation = conversation
        self._strategy = {r.name: r.strategy for r in masker.rules}
        self._codec_of, self._codec_last = "", ""
        self._plain_of: Columns | None = None
        self._plain_last = False
        self._columns: ColumnMasks | None = None  # column rules over the catalog snapshot in use
        self._plan_of: tuple[object, object, int] | None = None  # (columns, answered message, part)
        self._plan: Plan | None = ()
        self._cursors: dict[str, tuple[str, int]] = {}  # DECLAREd cursor -> (its Query's text, statement index)
        self._told: set[int] = set()  # unknown table OIDs already logged
        self._copy: tuple[CopyFormat, tuple | None, bool] | None = None  # COPY TO STDOUT: (format, marks, header next)

    # --- client: the catalog before a statement runs; no copies of masked values ------

    def _catalog_key(self) -> tuple[str, str]:
        return self.info.connection or "", self.info.database or ""

    def client(self, msg: ClientMessage) -> Verdict | Deferred[Verdict]:
        if not self.masker.column_rules:
            return None
        catalogs = self.stage.relations
        if catalogs is not None:
            key = self._catalog_key()
            missing = self._columns is not None and bool(self._columns.unknown)
            if catalogs.needs_load(*key, missing=missing):
                return catalogs.refresh(*key).addCallback(lambda snap: self._check(msg, snap))
            return self._check(msg, catalogs.snapshot(*key))
        return self._check(msg, None)

    def _check(self, msg: ClientMessage, snapshot: Relations | None) -> Verdict:
        cm = self._columns
        if cm is None or cm.relations is not snapshot:
            cm = self._columns = ColumnMasks(self.masker.column_rules, snapshot)
            self._plan_of = None
        sql = self._sql(msg)
        if msg.kinds is not None and not (msg.kinds & _COPYING) and (
                sql is None or not any(w in sql.lower() for w in _STORE_WORDS)):
            return None  # (the policy classified it, and it calls nothing that stores a value)
        stmts = cm.trees(sql) if sql is not None else None
        for i, stmt in enumerate(stmts or ()):
            (kind, body), = stmt.items()
            if kind == "DeclareCursorStmt" and sql is not None:
                self._cursors[body.get("portalname", "")] = (sql, i)
            rule = copies(stmt, cm)
            if (rule is None and kind == "CopyStmt" and not body.get("is_from") and CopyFormat.of(stmt) is None):
                rule = touches(stmt, cm)  # a COPY TO STDOUT whose fields cannot be told apart
            if rule is not None:
                return Deny(f'hoopd: this statement would store or export values of columns that masking rule'
                            f' "{rule.name}" masks for this session; read them with SELECT', "42501")
        return None

    def _sql(self, msg: ClientMessage) -> str | None:
        try:
            out = msg.sql(self.info.sql_text)
        except (ProtocolError, TextError):
            return None
        return out if isinstance(out, str) else out.query

    def denied(self, msg: ClientMessage, deny: Deny) -> None:
        pass

    def oversize(self, from_client: bool, mtype: int, length: int) -> None:
        pass  # (rewritten types are never oversize: the relay ends the session first)

    def _codec(self) -> str:
        setting = self.info.settings.get("client_encoding", "UTF8")
        if setting == self._codec_of:
            return self._codec_last
        enc = canonical(setting) or ""
        codec = "latin-1" if enc == "SQL_ASCII" else CODECS.get(enc)
        if codec is None:
            raise EndSession(f'hoopd: values in client_encoding "{enc}" cannot be read for masking; session ended',
                             reason="masking: unreadable client_encoding")
        self._codec_of, self._codec_last = setting, codec
        return codec

    def _text(self, raw: bytes, codec: str) -> tuple[bytes | None, bool]:
        """(the masked bytes or None if unchanged, whether the value becomes NULL)."""
        text = raw.decode(codec, "surrogateescape")
        new, null = self.masker.mask(text)
        if null:
            return None, True
        return (None if new is None else new.encode(codec, "surrogateescape")), False

    def server(self, msg: ServerMessage) -> bytes | None:
        t = msg.type
        if t == BE.DATA_ROW:
            return self._row(msg)
        if t in _RESULT_ENDS:
            if t == BE.COMMAND_COMPLETE and msg.body.startswith(_DDL_TAGS) and self.stage.relations is not None:
                self.stage.relations.changed(self.info.connection or "")
            self._copy = None
            self._summary()
            return None
        if t == BE.COPY_DATA:
            return self._copy_line(msg.body)
        if t == BE.COPY_DONE:
            self._copy = None
        if t == BE.ERROR:
            self._copy = None
            new = self._withheld(msg) or self._fields(msg.body)
            self._summary()
            return new
        if t == BE.NOTICE:
            return self._withheld(msg) or self._fields(msg.body)
        if t == BE.NOTIFICATION:
            return self._notification(msg.body)
        if t == BE.COPY_OUT or t == BE.COPY_BOTH:
            if msg.body[:1] == b"\x01":
                raise EndSession("hoopd: binary COPY cannot be masked for this session; use text or CSV",
                                 "42501", reason="masking: binary COPY")
            self._copy_starts(msg)
        return None

    def _copy_starts(self, msg: ServerMessage) -> None:
        """COPY TO STDOUT begins: which of its fields the column rules mask (hoopd.masking.copyout)."""
        self._copy = None
        cm = self._columns
        if not self.masker.column_rules or cm is None:
            return
        stmt = cm.tree(*self._answered(cm, msg))
        fmt = CopyFormat.of(stmt) if stmt is not None and "CopyStmt" in stmt else None
        if fmt is None:
            raise EndSession("hoopd: this COPY's fields cannot be told apart for masking (its statement, or an"
                             " ENCODING or multi-character option); the session was ended", "42501",
                             reason="masking: COPY not splittable")
        marks = copy_columns(stmt, cm, cm.columns_of, cm.fallback)  # type: ignore[arg-type]
        self._copy = (fmt, marks, fmt.header)

    def _summary(self) -> None:
        """At the end of a result: what was masked in it, to the journal and the metrics."""
        counts = self.masker.take_counts()
        if not counts:
            return
        stage = self.stage
        if stage.count is not None:
            for rule, n in counts.items():
                stage.count(rule, self._strategy[rule], n)
        if stage.record is not None:
            try:
                stage.record(self.info, RECORD, {"rules": counts, "values": sum(counts.values())})
            except Exception:  # the values were masked; only the summary is missing (the journal logged why)
                pass

    def close(self, reason: str) -> None:
        self._summary()

    def _row(self, msg: ServerMessage) -> bytes | None:
        cols = msg.columns
        types, formats = (cols.types, cols.formats) if cols is not None else ((), ())
        masker = self.masker
        plan = self._plan_for(msg) if masker.column_rules else ()
        detect = bool(masker.detecting)
        quick = masker.prefilter
        plain = self._plain(cols)
        if (plan is not None and not any(plan)
                and (not detect or (plain and quick is not None and not quick.search(msg.body)))):
            return None  # no column rule here, nothing in the row's bytes any detector could find
        values = m.decode_data_row(msg.body)
        if plan is None:  # rows no RowDescription described: every value masked (fail closed)
            plan = (masker.column_rules[0],) * len(values)
        codec = self._codec()
        out: list[bytes | None] | None = None
        for i, v in enumerate(values):
            if v is None:
                continue
            oid = types[i] if i < len(types) else 0
            fmt = formats[i] if i < len(formats) else 0
            rule = plan[i] if i < len(plan) else None
            if rule is not None:
                if out is None:
                    out = list(values)
                out[i] = self._whole(rule, v, oid, fmt, codec)
                continue
            if not detect or oid in NON_TEXT:
                continue
            if plain and quick is not None and not quick.search(v):
                continue  # (as for the whole row, value by value)
            new, null = self._value(v, oid, fmt, codec, i)
            if new is None and not null:
                continue
            if out is None:
                out = list(values)
            out[i] = None if null else new
        return None if out is None else m.encode_data_row(out)

    def server_rows(self, run: RowRun) -> bytes | None:
        """A run of DataRows. When no column rule applies to its result, the detectors'
        prefilter searches all of its bytes at once, and only the rows a match overlaps
        are looked at (a run with no match passes untouched); else row by row. (Every
        true match lies in a row some prefilter match overlaps: the prefilter finds a
        superset, and a match that swallows the start of another overlaps its row.)"""
        first = run.first
        masker = self.masker
        plan = self._plan_for(first) if masker.column_rules else ()
        data = run.data
        hits: list[tuple[int, int]] | None = None
        if plan is not None and not any(plan):
            quick = masker.prefilter
            if not masker.detecting:
                return None
            if quick is not None and self._plain(first.columns):
                hits = quick.spans(data)
                if not hits:
                    return None
        out: list[bytes] = []
        pos = last = h = 0
        n = len(data)
        unpack = _I32.unpack_from
        while pos < n:
            (ln,) = unpack(data, pos + 1)
            end = pos + 1 + ln
            if hits is not None:
                while h < len(hits) and hits[h][1] <= pos:
                    h += 1
                if h == len(hits):
                    break
                if hits[h][0] >= end:
                    pos = end
                    continue
            new = self._row(ServerMessage(BE.DATA_ROW, data[pos + 5:end], first.answers, first.part, first.columns))
            if new is not None:
                out += [data[last:pos], m.frame(b"D", new)]
                last = end
            pos = end
        if not out:
            return None
        out.append(data[last:])
        return b"".join(out)

    def _whole(self, rule: MaskRule, v: bytes, oid: int, fmt: int, codec: str) -> bytes | None:
        masker = self.masker
        masker.count(rule)
        replace = None if rule.strategy == "null" else (lambda text: masker.replace(rule, text))
        return masked_value(v, oid, fmt, codec, replace, masker.hash_key if rule.strategy == "hash" else None)

    def _plan_for(self, msg: ServerMessage) -> Plan | None:
        """The column rule for each column of this row's result (computed once per result);
        None: the result's columns are not known."""
        key = (msg.columns, msg.answers, msg.part)
        of = self._plan_of
        if of is not None and of[0] is key[0] and of[1] is key[1] and of[2] == key[2]:
            return self._plan
        cm = self._columns
        if cm is None:  # no statement passed client() (rows before any: fail closed)
            cm = self._columns = ColumnMasks(self.masker.column_rules, None)
        cols = msg.columns
        plan: Plan | None = None
        if cols is not None:
            derived = (self._derived(cm, msg) if 0 in cols.tables or len(cols.tables) < len(cols.names)
                       else None)
            plan = cm.plan(cols, derived)
        for oid in cm.unknown - self._told:
            self._told.add(oid)
            if self.stage.relations is not None:
                self.stage.relations.changed(self.info.connection or "")  # read again before the next statement
            log.info("session {id}: result column of table oid {oid}, which the relation catalog does not"
                     " have yet, masked by rule {rule}", id=self.info.id, oid=oid, rule=cm.fallback.name)
        self._plan_of, self._plan = key, plan  # type: ignore[assignment]
        return plan

    def _answered(self, cm: ColumnMasks, msg: ServerMessage) -> tuple[str | None, int]:
        """The text and statement index of what ``msg`` answers (a FETCH: its cursor's
        DECLARE); (None, 0) when it is not known."""
        p = msg.answers
        if p is None:
            return None, 0
        if p.op == "query":
            sql, part = self._sql(p.msg), msg.part
        elif p.op == "execute":
            portal = self.conversation.portals.get(p.name)
            sql, part = (portal.text if portal is not None else None), 0
        else:
            return None, 0
        stmt = cm.tree(sql, part) if sql is not None and "fetch" in sql.lower() else None  # (a keyword: never quoted)
        if stmt is not None and "FetchStmt" in stmt:
            return self._cursors.get(stmt["FetchStmt"].get("portalname", ""), (None, 0))
        return sql, part

    def _derived(self, cm: ColumnMasks, msg: ServerMessage) -> Derived[MaskRule]:
        """What the statement answered derives from masked columns."""
        return cm.statement(*self._answered(cm, msg))

    def _withheld(self, msg: ServerMessage) -> bytes | None:
        """An error or notice caused by a statement that reads masked columns (or a relation
        that has them) may quote their values (``Failing row contains (...)``, ``invalid
        input syntax for type integer: "..."``): its texts are withheld, its SQLSTATE,
        severity and position kept. None: not such a statement."""
        cm = self._columns
        if cm is None or not self.masker.column_rules or msg.answers is None:
            return None
        sql, part = self._answered(cm, msg)
        if sql is not None and cm.trees(sql) is None:
            return None  # a syntax error quotes what the client typed, not a value
        stmt = cm.tree(sql, part)
        rule = cm.fallback if stmt is None else touches(stmt, cm)
        if rule is None or (_CLASS_42 in msg.body and stmt is not None and opaque_calls(stmt, cm) is None):
            return None  # (class 42, syntax and name errors, come from analysing the statement: no values read)
        self.masker.count(rule)
        text = (f'hoopd: the server\'s message was withheld: the statement reads columns that masking rule'
                f' "{rule.name}" masks for this session, and the message could show their values').encode()
        parts = [bytes([code]) + value + b"\0" for code, value in _field_items(msg.body)
                 if code in _KEEP_FIELDS or code in _NAME_FIELDS]
        return b"".join(parts) + b"M" + text + b"\0\0"

    def _plain(self, cols: Columns | None) -> bool:
        """Whether every value of rows with these columns is its text's bytes (text format,
        or binary of a text type) or never text: then a row's bytes can be prefiltered whole.
        Binary arrays, records and unknown types must be walked (or refused)."""
        if cols is None:
            return True
        if cols is not self._plain_of:  # (the same Columns object serves every row of a result)
            self._plain_of = cols
            self._plain_last = all(f == 0 or oid in NON_TEXT or oid in TEXT_BINARY
                                   for oid, f in zip(cols.types, cols.formats))
        return self._plain_last

    def _value(self, v: bytes, oid: int, fmt: int, codec: str, column: int) -> tuple[bytes | None, bool]:
        if oid == JSON or oid == JSONB:
            binary = fmt == 1 and oid == JSONB
            if binary and v[:1] != b"\x01":
                self._unreadable(oid, column)
            doc = v[1:] if binary else v
            new = self._json(doc, codec)
            return (None if new is None else (b"\x01" + new if binary else new)), False
        if fmt == 0 or oid in TEXT_BINARY:
            return self._text(v, codec)
        # other binary values: arrays and records say what their parts are; anything else is unreadable
        def part(raw: bytes, part_oid: int) -> tuple[bytes | None, bool]:
            return (None, False) if part_oid in NON_TEXT else self._value(raw, part_oid, 1, codec, column)

        for walk in (_map_array, _map_record):
            try:
                return walk(v, part), False
            except ProtocolError:
                continue
        self._unreadable(oid, column)

    def _json(self, raw: bytes, codec: str) -> bytes | None:
        def one(value: str) -> str | None:
            new, null = self.masker.mask(value)
            return self.masker.rules[0].token if null else new

        new = mask_json(raw.decode(codec, "surrogateescape"), one)
        return None if new is None else new.encode(codec, "surrogateescape")

    @staticmethod
    def _unreadable(oid: int, column: int) -> NoReturn:
        raise EndSession(f"hoopd: result column {column + 1} (type oid {oid}) is in binary format, which masking"
                         " cannot read; the session was ended so that no value passes unmasked", "42501",
                         reason=f"masking: binary value of type {oid}")

    def _copy_line(self, body: bytes) -> bytes | None:
        """A COPY line: the fields column rules name (hoopd.masking.copyout), then detectors."""
        masker = self.masker
        changed = False
        if self._copy is not None:
            fmt, marks, header = self._copy
            if header:
                self._copy = (fmt, marks, False)  # (the header line: column names)
            else:
                codec = self._codec()
                new = mask_line(body.decode(codec, "surrogateescape"), fmt, marks, masker.column_rules[0],
                                masker.whole)  # type: ignore[arg-type]
                if new is not None:
                    body, changed = new.encode(codec, "surrogateescape"), True
        if masker.detecting:
            new_body = self._masked(body)
            changed = changed or new_body != body
            body = new_body
        return body if changed else None

    def _masked(self, raw: bytes) -> bytes:
        """A text with no NULL (a message field, a COPY line, a payload), masked."""
        codec = self._codec()
        new, null = self._text(raw, codec)
        if null:
            return self.masker.redact(raw.decode(codec, "surrogateescape")).encode(codec, "surrogateescape")
        return raw if new is None else new

    def _fields(self, body: bytes) -> bytes | None:
        parts: list[bytes] = []
        changed = False
        for code, value in _field_items(body):
            if code not in _KEEP_FIELDS:
                new = self._masked(value)
                changed = changed or new != value
                value = new
            parts.append(bytes([code]) + value + b"\0")
        return b"".join(parts) + b"\0" if changed else None

    def _notification(self, body: bytes) -> bytes | None:
        r = m.Reader(body, "NotificationResponse")
        pid = r.int32()
        channel = r.cstring_bytes()
        payload = r.cstring_bytes()
        new = self._masked(payload)
        return None if new == payload else _I32.pack(pid) + channel + b"\0" + new + b"\0"


def _field_items(body: bytes) -> list[tuple[int, bytes]]:
    """An ErrorResponse / NoticeResponse body as (field code, value) pairs."""
    out = []
    pos = 0
    while pos < len(body) and body[pos] != 0:
        end = body.index(b"\0", pos + 1)
        out.append((body[pos], body[pos + 1:end]))
        pos = end + 1
    return out


def _encode_parts(items: list[bytes | None]) -> list[bytes]:
    return [_I32.pack(-1) if x is None else _I32.pack(len(x)) + x for x in items]


def _apply(element: Part, raw: bytes, oid: int) -> tuple[bytes | None, bool]:
    """(the new part, whether anything changed)."""
    new, null = element(raw, oid)
    return (None if null else (raw if new is None else new)), (null or new is not None)


def _map_array(v: bytes, element: Part) -> bytes | None:
    """A binary array with ``element(bytes, oid)`` applied to each element; None when
    nothing changed. Layout: ndim, has-null flag, element oid, per dimension (size, lower
    bound), then each element as int32 length (-1: NULL) and bytes. Raises ProtocolError
    when ``v`` is not laid out that way, to the byte."""
    r = m.Reader(v, "array")
    ndim, flags, elem = r.int32(), r.int32(), r.int32()
    if not 0 <= ndim <= 6 or flags not in (0, 1):
        raise ProtocolError("not an array")
    dims = [(r.int32(), r.int32()) for _ in range(ndim)]
    count = 1 if ndim else 0
    for size, _ in dims:
        count *= size
    items: list[bytes | None] = []
    changed = False
    for _ in range(count):
        n = r.int32()
        if n < 0:
            items.append(None)
            continue
        new, did = _apply(element, r.bytes(n), elem)
        items.append(new)
        changed = changed or did
    r.end()
    if not changed:
        return None
    head = [_I32.pack(ndim), _I32.pack(1 if any(x is None for x in items) else 0), _I32.pack(elem)]
    return b"".join(head + [_I32.pack(a) + _I32.pack(b) for a, b in dims] + _encode_parts(items))


def _map_record(v: bytes, element: Part) -> bytes | None:
    """A binary record (composite): field count, then per field its type oid, int32
    length (-1: NULL) and bytes. As _map_array."""
    r = m.Reader(v, "record")
    n = r.int32()
    if not 0 <= n <= 1664:  # PostgreSQL's column limit
        raise ProtocolError("not a record")
    fields: list[tuple[int, bytes | None]] = []
    changed = False
    for _ in range(n):
        oid, length = r.int32(), r.int32()
        if length < 0:
            fields.append((oid, None))
            continue
        new, did = _apply(element, r.bytes(length), oid)
        fields.append((oid, new))
        changed = changed or did
    r.end()
    if not changed:
        return None
    parts = _encode_parts([x for _, x in fields])
    return _I32.pack(n) + b"".join(_I32.pack(oid) + p for (oid, _), p in zip(fields, parts))
