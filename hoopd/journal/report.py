"""``hoopd journal report``: compliance evidence and workload insight from the journal.

``build`` reads the records of a scope (time range, connection, user, level,
application_name; across every stream of the folder) into one JSON document (schema
``version`` 1, below), with the chain check of the segments it read; ``text`` and
``html`` render it. The HTML is one self-contained file (no script, no fetch: inline
CSS bar charts) that prints.

Document: ``scope``; ``access`` (per user and connection: sessions, first/last seen,
levels, grants, source addresses, TLS versions, applications, statements, errors,
denials, tables read and written: the relations the policy's classification names in
each Query/Parse, "written" when the statement writes at all, an over-approximation); ``enforcement`` (denials by rule and reason, reviews by outcome with time to
decision, tripwires, masked values by rule); ``workload`` (statements by normalized
shape: count, total and p95 time, rows, errors, users; statements per hour and user;
the top shapes of each application; sessions with error bursts); ``integrity``
(verify's verdict, streams and their heads, anchors checked).
"""
from __future__ import annotations

import html as _html
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pglast.parser import ParseError, normalize

from hoopd.journal import records as r
from hoopd.journal.anchor import Anchor
from hoopd.journal.reader import Journal
from hoopd.journal.render import whole_seconds
from hoopd.journal.verify import verify
from hoopd.masking.detect import DETECTORS
from hoopd.names import name_key

VERSION = 1
TOP = 20  # rows per table
ERROR_BURST = 5  # errors in one session that make a burst
FLAGGED = ("email", "card", "iban", "ssn", "jwt", "api_key")  # detectors with few false positives
_RUNS = ("query", "execute", "call")  # statement ops that run something


@dataclass(frozen=True)
class Scope:
    since: datetime | None = None
    until: datetime | None = None
    connection: str | None = None
    user: str | None = None
    level: str | None = None
    application: str | None = None  # a prefix, e.g. "mcp:"

    def admits(self, start: dict[str, Any]) -> bool:
        return ((self.connection is None or start.get("connection") == self.connection)
                and (self.user is None or name_key(start.get("user") or "") == name_key(self.user))
                and (self.level is None or start.get("level") == self.level)
                and (self.application is None or (start.get("application_name") or "").startswith(self.application)))

    def summary(self) -> dict[str, Any]:
        return {"since": _iso(self.since), "until": _iso(self.until), "connection": self.connection,
                "user": self.user, "level": self.level, "application": self.application}


def _iso(t: datetime | None) -> str | None:
    return whole_seconds(t) if t is not None else None


def shape(text: str) -> str:
    """A statement with its constants replaced by $n (PostgreSQL's own normalization)."""
    try:
        return " ".join(normalize(text).split())
    except (ParseError, ValueError):
        return " ".join(text.split())[:200]


def _p95(values: list[float]) -> float:
    v = sorted(values)
    return v[max(0, math.ceil(0.95 * len(v)) - 1)] if v else 0.0


class _Acc:
    """What the records of the scope add up to (one pass)."""

    def __init__(self) -> None:
        self.access: dict[tuple[str, str], dict[str, Any]] = {}
        self.texts: dict[tuple[str, int], str] = {}  # (session, stmt) -> text
        self.shapes: dict[str, dict[str, Any]] = {}
        self.hourly: Counter[tuple[str, str]] = Counter()
        self.apps: dict[str, Counter[str]] = defaultdict(Counter)
        self.denials: Counter[tuple[str, str, str]] = Counter()
        self.reviews: dict[str, dict[str, Any]] = {}
        self.tripwires: Counter[str] = Counter()
        self.masked: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # session -> errors
        self.unmasked: Counter[tuple[str, str, str, str]] = Counter()  # (user, connection, column, detector)
        self.records = 0

    def who(self, start: dict[str, Any]) -> dict[str, Any]:
        key = (start.get("user") or "?", start.get("connection") or "?")
        a = self.access.get(key)
        if a is None:
            a = self.access[key] = {"user": key[0], "connection": key[1], "sessions": 0, "first_seen": None,
                                    "last_seen": None, "levels": set(), "grants": set(), "sources": set(),
                                    "tls": set(), "applications": set(), "statements": 0, "errors": 0,
                                    "denied": 0, "tables_read": set(), "tables_written": set()}
        return a

    def add(self, rec: dict[str, Any], start: dict[str, Any]) -> None:
        self.records += 1
        kind, sid, ts = rec.get("kind"), rec.get("session"), rec["ts"]
        a = self.who(start)
        stamp = _iso(ts)
        a["first_seen"] = min(a["first_seen"] or stamp, stamp)
        a["last_seen"] = max(a["last_seen"] or stamp, stamp)
        if kind == r.SESSION_START:
            a["sessions"] += 1
            a["levels"].add(rec.get("level"))
            a["sources"].add((rec.get("peer") or "").rsplit(":", 1)[0])
            a["tls"].add(rec.get("tls") or "none")
            a["applications"].add(rec.get("application_name") or "(none)")
            if rec.get("grant"):
                a["grants"].add(rec["grant"])
        elif kind == r.STATEMENT:
            text = rec.get("text")
            for rel in rec.get("relations") or ():
                a["tables_written" if rec.get("writes") else "tables_read"].add(rel)
            if isinstance(text, str):
                self.texts[(sid, rec.get("stmt"))] = text
            if rec.get("op") in _RUNS and isinstance(text, str):
                a["statements"] += 1
                s = self._shape(text)
                s["count"] += 1
                s["users"].add(start.get("user") or "?")
                self.hourly[(stamp[:13], start.get("user") or "?")] += 1
                self.apps[start.get("application_name") or ""][s["shape"]] += 1
        elif kind in (r.RESULT, r.ROWS):
            self._scan(rec, start)
        if kind == r.RESULT:
            s = self._of(sid, rec.get("stmt"))
            if s is not None:
                if isinstance(rec.get("us"), int):
                    s["times"].append(rec["us"] / 1000)
                s["rows"] += rec.get("rows_total") or 0
        elif kind == r.ERROR:
            a["errors"] += 1
            self.errors[sid] += 1
            s = self._of(sid, rec.get("stmt"))
            if s is not None:
                s["errors"] += 1
        elif kind == r.DENIED:
            a["denied"] += 1
        elif kind == "policy" and not rec.get("allowed", True):
            if rec.get("action") == "end":
                self.tripwires[rec.get("setting") or "?"] += 1
            elif rec.get("action") != "review":  # (held, not refused: the reviews tell how it ended)
                self.denials[(rec.get("rule") or "(level)", rec.get("reason") or "", rec.get("action") or "")] += 1
        elif kind == "review" and rec.get("id"):
            self.reviews[rec["id"]] = rec
        elif kind == r.MASKING:
            for rule, n in (rec.get("rules") or {}).items():
                self.masked[rule] += n

    def _scan(self, rec: dict[str, Any], start: dict[str, Any]) -> None:
        """Values as the client got them that a detector flags: a finding (a rule may be
        missing), counted by column and detector, never kept."""
        cols = rec.get("columns") or []
        for row in rec.get("rows") or ():
            for i, v in enumerate(row):
                if not isinstance(v, str) or len(v) < 6:
                    continue
                for name in FLAGGED:
                    if DETECTORS[name](v):
                        col = cols[i] if i < len(cols) else f"#{i + 1}"
                        self.unmasked[(start.get("user") or "?", start.get("connection") or "?", col, name)] += 1
                        break

    def _shape(self, text: str) -> dict[str, Any]:
        key = shape(text)
        s = self.shapes.get(key)
        if s is None:
            s = self.shapes[key] = {"shape": key, "count": 0, "times": [], "rows": 0, "errors": 0, "users": set()}
        return s

    def _of(self, sid: str, stmt: Any) -> dict[str, Any] | None:
        text = self.texts.get((sid, stmt))
        return self.shapes.get(shape(text)) if text is not None else None


def build(journal: Journal, scope: Scope, key: bytes | None = None,
          anchors: dict[str, Anchor] | None = None) -> dict[str, Any]:
    segs = journal.select(scope.since, scope.until)
    acc = _Acc()
    for e in journal.records(scope.since, scope.until, segs):
        sid = e.rec.get("session")
        if sid is None:
            continue
        start = e.rec if e.rec.get("kind") == r.SESSION_START else journal.session_start(sid)
        if start is None or not scope.admits(start):
            continue
        acc.add(e.rec, start)
    rep = verify(segs, key, whole_dir=False, anchors=anchors or {}) if segs else None
    return {"version": VERSION, "scope": scope.summary(), "records": acc.records,
            "access": _access(acc), "enforcement": _enforcement(acc), "workload": _workload(acc),
            "integrity": _integrity(journal, segs, rep, anchors or {})}


def _access(acc: _Acc) -> list[dict[str, Any]]:
    out = []
    for a in sorted(acc.access.values(), key=lambda a: (a["user"], a["connection"])):
        out.append({**a, **{k: sorted(x for x in a[k] if x is not None) for k in
                            ("levels", "grants", "sources", "tls", "applications", "tables_read",
                             "tables_written")}})
    return out


def _enforcement(acc: _Acc) -> dict[str, Any]:
    reviews = list(acc.reviews.values())
    outcomes = Counter(x.get("status") for x in reviews)
    waits = [x["decided"] - x["requested"] for x in reviews
             if isinstance(x.get("decided"), (int, float)) and isinstance(x.get("requested"), (int, float))]
    return {
        "denials": [{"rule": rule, "reason": reason, "action": action, "count": n}
                    for (rule, reason, action), n in acc.denials.most_common(TOP)],
        "reviews": {"requests": len(reviews), "by_outcome": dict(sorted(outcomes.items(), key=lambda kv: str(kv[0]))),
                    "median_seconds_to_end": sorted(waits)[len(waits) // 2] if waits else None,
                    "requests_list": [{k: x.get(k) for k in ("id", "status", "user", "connection", "rule",
                                                             "statement", "decided_by", "why")}
                                      for x in reviews[-TOP:]]},
        "tripwires": [{"setting": k, "count": n} for k, n in acc.tripwires.most_common()],
        "masked_values": [{"rule": k, "values": n} for k, n in acc.masked.most_common()],
        "unmasked_findings": [{"user": u, "connection": c, "column": col, "detector": d, "values": n}
                              for (u, c, col, d), n in acc.unmasked.most_common(TOP)],
    }


def _workload(acc: _Acc) -> dict[str, Any]:
    shapes = sorted(acc.shapes.values(), key=lambda s: (-s["count"], s["shape"]))
    return {
        "shapes": [{"shape": s["shape"], "count": s["count"], "total_ms": round(sum(s["times"]), 3),
                    "p95_ms": round(_p95(s["times"]), 3), "rows": s["rows"], "errors": s["errors"],
                    "users": sorted(s["users"])} for s in shapes[:TOP]],
        "hourly": [{"hour": h + ":00Z", "user": u, "statements": n} for (h, u), n in sorted(acc.hourly.items())],
        "applications": [{"application": app or "(none)", "top": [{"shape": k, "count": n}
                                                                  for k, n in c.most_common(5)]}
                         for app, c in sorted(acc.apps.items())],
        "error_bursts": [{"session": sid, "errors": n} for sid, n in acc.errors.most_common(TOP) if n >= ERROR_BURST],
    }


def _integrity(journal: Journal, segs: list[r.SegmentName], rep: Any, anchors: dict[str, Anchor]) -> dict[str, Any]:
    heads = []
    for node, node_segs in journal.by_node(segs).items():
        last = node_segs[-1]
        h = None
        for e in journal.read(last):
            h = e.rec.get("h")
        heads.append({"stream": node, "last_segment": last.base, "head": h.hex() if isinstance(h, bytes) else None})
    return {"verified": bool(rep and rep.ok), "segments": rep.segments if rep else 0,
            "broken": [str(b) for b in rep.broken] if rep else [], "notes": list(rep.notes) if rep else [],
            "anchors": sorted(anchors), "streams": heads}


# --- rendering --------------------------------------------------------------------------

def text(doc: dict[str, Any]) -> str:
    lines = [f"hoopd journal report ({doc['records']} records; scope {_scope(doc['scope'])})", ""]
    lines.append("Access")
    for a in doc["access"]:
        lines.append(f"  {a['user']} on {a['connection']}: {a['sessions']} sessions, {a['statements']} statements,"
                     f" {a['errors']} errors, {a['denied']} denied; levels {', '.join(a['levels']) or '-'};"
                     f" from {', '.join(a['sources']) or '-'}; {a['first_seen']} .. {a['last_seen']}"
                     + (f"; grants {', '.join(a['grants'])}" if a["grants"] else "")
                     + (f"; read {', '.join(a['tables_read'])}" if a["tables_read"] else "")
                     + (f"; wrote {', '.join(a['tables_written'])}" if a["tables_written"] else ""))
    en = doc["enforcement"]
    lines += ["", "Enforcement"]
    lines += [f"  denied {d['count']}x: {d['rule']}: {d['reason']}" for d in en["denials"]] or ["  no denials"]
    rv = en["reviews"]
    lines.append(f"  reviews: {rv['requests']} ({', '.join(f'{k} {v}' for k, v in rv['by_outcome'].items()) or '-'})"
                 + (f", median {rv['median_seconds_to_end']:.0f}s to decision" if rv["median_seconds_to_end"]
                    is not None else ""))
    lines += [f"  tripwire {t['setting']}: {t['count']}" for t in en["tripwires"]]
    lines += [f"  masked by {m['rule']}: {m['values']} values" for m in en["masked_values"]]
    lines += [f"  finding: {f['values']} values of column {f['column']} that {f['user']} got on {f['connection']}"
              f" look like {f['detector']} and were not masked" for f in en["unmasked_findings"]]
    lines += ["", "Workload (statements by shape)"]
    lines += [f"  {s['count']:6}x  p95 {s['p95_ms']:8.2f} ms  rows {s['rows']:8}  errors {s['errors']:4}  "
              f"{s['shape'][:100]}" for s in doc["workload"]["shapes"]]
    for b in doc["workload"]["error_bursts"]:
        lines.append(f"  error burst: session {b['session']} ({b['errors']} errors)")
    ig = doc["integrity"]
    lines += ["", "Integrity", f"  hash chain {'verified' if ig['verified'] else 'NOT verified'} over"
                               f" {ig['segments']} segments" + ("" if ig["anchors"] else " (no anchors given)")]
    lines += [f"  BROKEN: {b}" for b in ig["broken"]]
    lines += [f"  {s['stream']}: head {s['head']} in {s['last_segment']}" for s in ig["streams"]]
    return "\n".join(lines) + "\n"


def _scope(s: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in s.items() if v is not None) or "everything"


_CSS = ("body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}"
        ".bar{background:#4a7bd0;height:10px;display:inline-block}code{font-size:12px}"
        ".bad{color:#b00;font-weight:bold}.ok{color:#070;font-weight:bold}@media print{body{margin:0}}")


def _table(head: list[str], rows: list[list[Any]]) -> str:
    e = _html.escape
    out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else e(str(c))}</td>" for c in row) + "</tr>")
    return "".join(out) + "</table>"


class _Raw(str):
    """Markup made here (not from the journal)."""


def _bar(n: float, top: float) -> _Raw:
    width = 0 if top <= 0 else max(1, round(200 * n / top))
    return _Raw(f'<span class="bar" style="width:{width}px"></span> {n:g}')


def html(doc: dict[str, Any]) -> str:
    e = _html.escape
    en, wl, ig = doc["enforcement"], doc["workload"], doc["integrity"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>hoopd journal report</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>hoopd journal report</h1><p>{doc['records']} records; scope: {e(_scope(doc['scope']))}</p>",
             "<h2>Integrity</h2>",
             f"<p class='{'ok' if ig['verified'] else 'bad'}'>hash chain {'verified' if ig['verified'] else 'NOT verified'}"
             f" over {ig['segments']} segments{'' if ig['anchors'] else ' (no anchors given)'}</p>",
             _table(["stream", "last segment", "head"], [[s["stream"], s["last_segment"], s["head"]]
                                                         for s in ig["streams"]]),
             "<h2>Access</h2>",
             _table(["user", "connection", "sessions", "statements", "errors", "denied", "levels", "grants",
                     "sources", "TLS", "applications", "tables read", "tables written", "first seen", "last seen"],
                    [[a["user"], a["connection"], a["sessions"], a["statements"], a["errors"], a["denied"],
                      ", ".join(a["levels"]), ", ".join(a["grants"]), ", ".join(a["sources"]), ", ".join(a["tls"]),
                      ", ".join(a["applications"]), ", ".join(a["tables_read"]), ", ".join(a["tables_written"]),
                      a["first_seen"], a["last_seen"]] for a in doc["access"]]),
             "<h2>Enforcement</h2><h3>Denials</h3>"]
    top = max((d["count"] for d in en["denials"]), default=0)
    parts.append(_table(["rule", "reason", "count"], [[d["rule"], d["reason"], _bar(d["count"], top)]
                                                       for d in en["denials"]]))
    rv = en["reviews"]
    parts.append(f"<h3>Reviews</h3><p>{rv['requests']} requests: "
                 f"{e(', '.join(f'{k} {v}' for k, v in rv['by_outcome'].items()) or 'none')}</p>")
    parts.append(_table(["id", "status", "user", "connection", "rule", "statement", "decided by", "why"],
                        [[x.get(k) or "" for k in ("id", "status", "user", "connection", "rule", "statement",
                                                   "decided_by", "why")] for x in rv["requests_list"]]))
    parts.append("<h3>Masked values</h3>" + _table(["rule", "values"], [[m["rule"], m["values"]]
                                                                       for m in en["masked_values"]]))
    parts.append("<h3>Unmasked values a detector flags (findings: a masking rule may be missing)</h3>" + _table(
        ["user", "connection", "column", "looks like", "values"],
        [[f["user"], f["connection"], f["column"], f["detector"], f["values"]] for f in en["unmasked_findings"]]))
    parts.append("<h3>Tripwires</h3>" + _table(["setting", "sessions ended"], [[t["setting"], t["count"]]
                                                                              for t in en["tripwires"]]))
    top = max((s["count"] for s in wl["shapes"]), default=0)
    parts.append("<h2>Workload</h2><h3>Statements by shape</h3>" + _table(
        ["count", "p95 ms", "total ms", "rows", "errors", "users", "shape"],
        [[_bar(s["count"], top), s["p95_ms"], s["total_ms"], s["rows"], s["errors"], ", ".join(s["users"]),
          _Raw(f"<code>{e(s['shape'])}</code>")] for s in wl["shapes"]]))
    top = max((h["statements"] for h in wl["hourly"]), default=0)
    parts.append("<h3>Statements per hour</h3>" + _table(["hour", "user", "statements"], [
        [h["hour"], h["user"], _bar(h["statements"], top)] for h in wl["hourly"]]))
    parts.append("<h3>Top shapes per application</h3>" + _table(["application", "shape", "count"], [
        [app["application"], _Raw(f"<code>{e(t['shape'])}</code>"), t["count"]]
        for app in wl["applications"] for t in app["top"]]))
    parts.append("</body></html>\n")
    return "".join(parts)


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
