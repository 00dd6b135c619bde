"""Turning records into text: one-line summaries (tail), JSON (tail --json, export),
and a session replayed as a conversation with psql-style result tables.

Every text rendering passes client-sent text through ``hoopd.textsafe.escape`` (no raw
control characters reach a terminal); JSON stays exact JSON (``json_escape``)."""
from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any, Iterable, TextIO

from hoopd.journal import records as r
from hoopd.textsafe import escape, json_escape

_NUMERIC = {20, 21, 23, 26, 700, 701, 790, 1700}  # right-aligned like psql
_SPACE = re.compile(r"\s+")
_OWN = ("ts", "node", "session", "seq", "kind", "h")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def rfc3339(ts: datetime) -> str:
    return ts.isoformat(timespec="microseconds").replace("+00:00", "Z")


def whole_seconds(ts: datetime) -> str:
    """2026-12-03T17:54:56Z"""
    return ts.isoformat(timespec="seconds").replace("+00:00", "Z")


def short_time(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def jsonable(v: Any, key: str = "") -> Any:
    """A JSON-friendly copy: times as RFC 3339, hashes as hex, other bytes as {"base64": ...}."""
    if isinstance(v, dict):
        return {str(k): jsonable(x, str(k)) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, datetime):
        return rfc3339(v)
    if isinstance(v, bytes):
        return v.hex() if key in ("h", "prev") else {"base64": base64.b64encode(v).decode()}
    return v


def to_json(rec: dict[str, Any]) -> str:
    return json_escape(json.dumps(jsonable(rec), ensure_ascii=False, separators=(",", ":")))


def csv_cell(v: Any) -> Any:
    """A CSV cell a spreadsheet shows as text (OWASP CSV injection): a string that begins
    with = + - @ tab or CR gets a leading single quote; write rows with QUOTE_NONNUMERIC."""
    if isinstance(v, str) and v[:1] in _FORMULA:
        return "'" + v
    return v


def one_line(text: Any, limit: int = 500) -> str:
    s = escape(_SPACE.sub(" ", str(text)).strip())
    return s if len(s) <= limit else s[:limit - 1] + "…"


def value(v: Any) -> str:
    """A value as psql shows it (NULL empty, binary as \\x hex)."""
    if v is None:
        return ""
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    return escape(str(v).replace("\n", "\\n"))


def _ms(us: Any) -> str:
    return f"{us / 1000:.3f} ms" if isinstance(us, int) else "?"


def literal(v: Any) -> str:
    """A parameter as an SQL-ish literal: NULL, 'text' or \\x hex for binary."""
    if v is None:
        return "NULL"
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    return "'" + escape(str(v)).replace("'", "''") + "'"


def _params(vals: Iterable[Any]) -> str:
    return "[" + ", ".join(literal(v) for v in vals) + "]"


def statement(rec: dict[str, Any]) -> str:
    """What a statement record (or a denied record with the statement inline) asked for."""
    return escape(_statement(rec))


def _statement(rec: dict[str, Any]) -> str:
    op = rec.get("op")
    if op == "query":
        return one_line(rec.get("text", ""))
    if op == "parse":
        return f"parse {rec.get('name') or '(unnamed)'}: {one_line(rec.get('text', ''))}"
    if op == "bind":
        return f"bind {rec.get('portal') or '(unnamed)'} to {rec.get('name') or '(unnamed)'} {_params(rec.get('params', ()))}"
    if op == "execute":
        rows = f" (max {rec['max_rows']} rows)" if rec.get("max_rows") else ""
        return f"execute {rec.get('portal') or '(unnamed)'}{rows}: {one_line(rec.get('text') or '?')}"
    if op == "close":
        return f"close {rec.get('target')} {rec.get('name') or '(unnamed)'}"
    if op == "call":
        return f"call function {rec.get('oid')} {_params(rec.get('args', ()))}"
    return f"{op} {one_line({k: v for k, v in rec.items() if k not in _OWN})}"


def summary(rec: dict[str, Any]) -> str:
    """One line about a record, whatever its kind."""
    return escape(_summary(rec))


def _summary(rec: dict[str, Any]) -> str:
    k = rec.get("kind")
    g = rec.get
    if k == r.STATEMENT:
        return statement(rec)
    if k == r.RESULT:
        if "value" in rec:
            return f"function result {value(g('value'))!r} ({_ms(g('us'))})"
        tag = g("tag") or ("empty query" if g("empty") else "suspended" if g("suspended") else "incomplete")
        n = g("rows_total", 0)
        rows = f"{n} row{'' if n == 1 else 's'}" + (" (truncated)" if g("truncated") else "")
        return f"{tag}: {rows} ({_ms(g('us'))})"
    if k == r.ROWS:
        return f"{len(g('rows') or ())} rows from row {g('first')}"
    if k in (r.ERROR, r.NOTICE):
        return f"{g('severity', '')} {g('sqlstate', '')}: {one_line(g('message', ''))}"
    if k == r.COPY:
        state = f" failed: {g('failed')}" if g("failed") not in (None, False) else ""
        return f"copy {g('direction')}: {g('bytes')} bytes, {g('rows') if g('rows') is not None else '?'} rows{state}"
    if k == r.NOTIFICATION:
        return f"notification on {g('channel')}: {one_line(g('payload', ''))}"
    if k == r.DENIED:
        what = f" statement #{g('stmt')}" if g("stmt") else (f": {statement(rec)}" if g("op") else "")
        return f"denied ({g('sqlstate')}) {one_line(g('message', ''))}{what}"
    if k == r.SESSION_START:
        return (f"{g('user')} ({', '.join(g('groups') or ())}; {g('source')}) -> {g('connection')} [{g('level')}]"
                f" from {g('peer')} app={g('application_name') or '-'} tls={g('tls') or 'off'}")
    if k == r.SESSION_END:
        return (f"ended: {g('reason')}; {g('statements')} statements, {g('errors')} errors, {g('rows')} rows,"
                f" {(g('duration_us') or 0) / 1e6:.3f} s")
    if k == r.SEGMENT:
        gap = f"; {g('gap')}" if g("gap") else ""
        return f"segment {g('segment')} (format v{g('v')}, after {g('prev_segment') or 'nothing'}){gap}"
    if k == r.SEGMENT_END:
        return f"end of segment ({g('records')} records)"
    if k == r.RETENTION:
        return f"retention deleted {len(g('deleted') or ())} segments"
    if k == r.MASKING:
        rules = ", ".join(f"{name} {n}" for name, n in sorted((g("rules") or {}).items()))
        return f"masked {g('values')} values ({rules})"
    if k == r.ADMIN:
        rest = {x: v for x, v in rec.items() if x not in _OWN + ("by", "action")}
        return f"{g('by')}: {g('action')} {one_line(json.dumps(jsonable(rest), ensure_ascii=False))}"
    return one_line(json.dumps(jsonable({x: v for x, v in rec.items() if x not in _OWN}), ensure_ascii=False))


def line(rec: dict[str, Any], user: str | None) -> str:
    sid = (rec.get("session") or "-")[:8]
    return escape(f"{short_time(rec['ts'])} {sid:8} {(user or '-'):12} {rec.get('kind', '?'):13} {summary(rec)}")


def table(columns: list[str], types: list[int], rows: list[list[Any]]) -> list[str]:
    """Rows as psql's aligned format draws them (without the row count line)."""
    cells = [[value(v) for v in row] for row in rows]
    n = max([len(columns)] + [len(c) for c in cells])
    names = [escape(str(c)) for c in columns] + [f"?column{i}?" for i in range(len(columns), n)]
    widths = [max([len(names[i])] + [len(c[i]) for c in cells if i < len(c)]) for i in range(n)]
    right = [i < len(types) and types[i] in _NUMERIC for i in range(n)]
    out = [" " + " | ".join(names[i].center(widths[i]) for i in range(n)).rstrip(),
           "-" + "-+-".join("-" * w for w in widths) + "-"]
    for c in cells:
        c = c + [""] * (n - len(c))
        out.append((" " + " | ".join(c[i].rjust(widths[i]) if right[i] else c[i].ljust(widths[i])
                                     for i in range(n))).rstrip())
    return out


class Replay:
    """Prints one session's records as a conversation, in order, with timing."""

    def __init__(self, out: TextIO, max_rows: int = 50) -> None:
        self.out = out
        self.max_rows = max_rows
        self.t0: datetime | None = None
        self.rows: list[list[Any]] = []  # rows of ``rows`` records before their result

    def write(self, text: str = "") -> None:
        self.out.write(escape(text, layout=True) + "\n")

    def at(self, rec: dict[str, Any]) -> str:
        if self.t0 is None:
            self.t0 = rec["ts"]
        return f"[+{(rec['ts'] - self.t0).total_seconds():.3f}s]"

    def record(self, rec: dict[str, Any]) -> None:
        k = rec.get("kind")
        when = self.at(rec)
        if k == r.SESSION_START:
            g = rec.get
            self.write(f"session {rec.get('session')} on node {rec.get('node')}, started {rfc3339(rec['ts'])}")
            self.write(f"  user {g('user')} (groups {', '.join(g('groups') or ()) or '-'}; {g('source')})"
                       f" -> connection {g('connection')} [{g('level')}]")
            self.write(f"  from {g('peer')}, application {g('application_name') or '-'}, TLS {g('tls') or 'off'},"
                       f" protocol {g('protocol')}")
            self.write()
        elif k == r.STATEMENT:
            text = rec.get("text")
            if rec.get("op") in ("query", "parse") and text is not None:
                name = f" {rec.get('name')}" if rec.get("name") else ""
                self.write(f"{when} #{rec.get('stmt')} {rec.get('op')}{name}")
                parts = rec.get("parts")
                for i, p in enumerate(parts or [text]):
                    self.write(("    " + (f"[{i}] " if parts else "")) + str(p).replace("\n", "\n    "))
            else:
                self.write(f"{when} #{rec.get('stmt')} {statement(rec)}")
        elif k == r.ROWS:
            self.rows.extend(rec.get("rows") or ())
        elif k == r.RESULT:
            self.result(rec, when)
        elif k == r.SESSION_END:
            self.write(f"{when} session ended: {rec.get('reason')}")
            self.write(f"    {summary(rec)}")
        elif k in (r.SEGMENT, r.SEGMENT_END, r.RETENTION):
            return
        else:
            about = f" (#{rec['stmt']})" if rec.get("stmt") is not None and k != r.DENIED else ""
            self.write(f"{when} {k}{about}: {summary(rec)}")

    def result(self, rec: dict[str, Any], when: str) -> None:
        part = f".{rec['part']}" if rec.get("part") is not None else ""
        if "value" in rec:
            self.write(f"{when} #{rec.get('stmt')} {summary(rec)}")
            return
        rows = self.rows + list(rec.get("rows") or ())
        self.rows = []
        total = rec.get("rows_total", len(rows))
        head = rec.get("tag") or ("(empty query)" if rec.get("empty") else
                                  "(portal suspended)" if rec.get("suspended") else "(incomplete)")
        self.write(f"{when} #{rec.get('stmt')}{part} {head} ({_ms(rec.get('us'))})")
        if rec.get("columns") is not None:
            shown = rows[:self.max_rows] if self.max_rows >= 0 else rows
            for ln in table(rec["columns"], rec.get("types") or [], shown):
                self.write("    " + ln)
            note = f"({total} row{'s' if total != 1 else ''}"
            if len(shown) < total:
                kept = f"; the journal kept {len(rows)}" if len(rows) < total else ""
                note += f", showing {len(shown)}{kept}"
            self.write("    " + note + ")")
        self.write()
