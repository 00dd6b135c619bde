"""hoopd journal report over a journal written by the real writer: sections, scope filters,
the three renderings, and a broken chain said plainly."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hoopd.journal import records as r
from hoopd.pgwire import messages as m
from hoopd.journal.reader import Journal
from hoopd.journal.report import Scope, build, html, shape, text
from tests.test_journal_helpers import make_writer


def _session(w: Any, sid: str, user: str, level: str, app: str, stmts: list[tuple[str, int | None]]) -> None:
    seq = iter(range(1, 100))
    head = lambda kind: {"session": sid, "seq": next(seq), "kind": kind}  # noqa: E731
    w.write({"user": user, "groups": [], "source": "local", "connection": "shop", "database": "shop",
             "level": level, "peer": "10.0.0.9:4000", "application_name": app, "tls": "TLSv1.3",
             "protocol": "3.0"}, **head(r.SESSION_START))
    for i, (sql, us) in enumerate(stmts, 1):
        w.write({"stmt": i, "op": "query", "text": sql, "relations": ["t"], "writes": sql.startswith("delete")},
                **head(r.STATEMENT))
        if us is None:
            w.write({"stmt": i, "sqlstate": "42P01", "message": "no such table"}, **head(r.ERROR))
        else:
            w.write({"stmt": i, "rows_total": 1, "tag": "SELECT 1", "us": us, "columns": ["contact"],
                     "formats": [0], "wire": m.frame(b"D", m.encode_data_row([b"ann@example.com"]))},
                    **head(r.RESULT))
    w.write({"action": "deny", "allowed": False, "reason": "read_only does not allow delete", "rule": None},
            **head("policy"))
    w.write({"rules": {"emails": 3}, "values": 3}, **head(r.MASKING))
    w.write({"event": "approved", "id": "r1", "status": "approved", "user": user, "requested": 10.0,
             "decided": 40.0, "decided_by": "ssh:boss", "statement": "delete from t"}, **head("review"))
    w.write({"reason": "client terminate"}, **head(r.SESSION_END))


def _journal(tmp_path: Path) -> Journal:
    w = make_writer(tmp_path)
    w.startService()
    _session(w, "s-ann", "ann", "admin", "psql", [("select * from t where id = 1", 1000),
                                                 ("select * from t where id = 2", 3000), ("delete from t", 10)])
    _session(w, "s-bot", "bot", "read_only", "mcp:cursor", [("select * from nope", None)] * 6)
    w.stopService()
    return Journal(tmp_path)


def test_sections_add_up(tmp_path: Path) -> None:
    doc = build(_journal(tmp_path), Scope())
    ann, bot = doc["access"]
    assert (ann["user"], ann["sessions"], ann["statements"], ann["levels"], ann["sources"], ann["tls"]) == (
        "ann", 1, 3, ["admin"], ["10.0.0.9"], ["TLSv1.3"])
    assert (ann["tables_read"], ann["tables_written"]) == (["t"], ["t"])
    assert (bot["errors"], bot["applications"]) == (6, ["mcp:cursor"])
    s = {x["shape"]: x for x in doc["workload"]["shapes"]}
    t = s[shape("select * from t where id = 1")]
    assert t["count"] == 2 and t["total_ms"] == 4.0 and t["p95_ms"] == 3.0 and t["users"] == ["ann"]
    assert s[shape("select * from nope")]["errors"] == 6
    assert doc["workload"]["error_bursts"] == [{"session": "s-bot", "errors": 6}]
    en = doc["enforcement"]
    assert en["denials"][0]["count"] == 2 and en["masked_values"] == [{"rule": "emails", "values": 6}]
    assert en["reviews"]["by_outcome"] == {"approved": 1} and en["reviews"]["median_seconds_to_end"] == 30.0
    assert doc["integrity"]["verified"] and doc["integrity"]["streams"][0]["head"]
    assert en["unmasked_findings"] == [{"user": "ann", "connection": "shop", "column": "contact", "detector": "email",
                                        "values": 3}]  # counted, the value itself nowhere
    assert "ann@example.com" not in json.dumps(doc)


def test_scope_filters(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    assert [a["user"] for a in build(j, Scope(application="mcp:"))["access"]] == ["bot"]
    assert [a["user"] for a in build(j, Scope(level="admin"))["access"]] == ["ann"]
    assert [a["user"] for a in build(j, Scope(user="ANN"))["access"]] == ["ann"]
    assert build(j, Scope(connection="other"))["access"] == []


def test_renderings_and_a_broken_chain(tmp_path: Path) -> None:
    j = _journal(tmp_path)
    doc = build(j, Scope())
    out = text(doc)
    assert "ann on shop: 1 sessions, 3 statements" in out and "hash chain verified" in out and "wrote t" in out
    page = html(doc)
    assert page.startswith("<!doctype html>") and "<script" not in page and "src=" not in page
    seg = sorted(tmp_path.glob("*.hjs"))[0]
    data = bytearray(seg.read_bytes())
    i = data.index(b"select * from t where id = 2")
    data[i] ^= 0x20  # one byte changed inside a record
    seg.write_bytes(bytes(data))
    broken = build(Journal(tmp_path), Scope())
    assert not broken["integrity"]["verified"] and broken["integrity"]["broken"]
    assert "NOT verified" in text(broken) and "NOT verified" in html(broken)
