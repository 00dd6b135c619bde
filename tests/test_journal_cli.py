"""`hoopd journal tail|sessions|replay|export|verify` on a journal written by the real stage."""
from __future__ import annotations

import csv
import io
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from hoopd import cli
from hoopd.identity.base import Identity
from hoopd.journal import records as r
from hoopd.journal import render
from hoopd.journal.cli import parse_time
from hoopd.journal.stage import JournalStage
from hoopd.pgwire import messages as m
from hoopd.session import SessionInfo
from tests.test_journal_helpers import T0, Talk, bind, error, execute, make_writer, parse, row, row_description, tag

KEY = b"an hmac key of some length, 32b"


def session(stage: JournalStage, clock: Clock, sid: str, user: str, conn: str, level: str = "read_only") -> Talk:
    info = SessionInfo(id=sid, peer="127.0.0.1:4000", started=clock.seconds(), identity=Identity(user, frozenset({"g"})),
                       connection=conn, level=level, application_name="psql")
    return Talk(stage, info)


def converse(clock: Clock, talk: Talk, n: int) -> None:
    talk.c(b"Q", m.cstr(f"select id, name from items where id <= {n}"))
    clock.advance(0.003)
    talk.s((b"T", row_description(("id", 23), ("name", 25))),
           *[(b"D", row(str(i).encode(), f"item {i}".encode())) for i in range(1, n + 1)],
           (b"C", tag(f"SELECT {n}")), (b"Z", b"I"))
    clock.advance(1)


def build(folder: Path, key: bytes | None = None) -> dict[str, Any]:
    """Two sessions; alice's spans a writer restart (two segments); bob hits an error."""
    clock = Clock()
    clock.advance(T0)
    w = make_writer(folder, clock, hmac_key=key)
    w.startService()
    st = JournalStage(w, w.config)
    alice = session(st, clock, "aaaa1111aaaa1111", "alice", "shop", "admin")
    converse(clock, alice, 3)
    w.stopService()
    w = make_writer(folder, clock, hmac_key=key)
    w.startService()
    st.writer = w
    bob = session(st, clock, "bbbb2222bbbb2222", "bob", "crm")
    converse(clock, alice, 2)
    bob.c(b"P", parse("", "select $1::bytea"))
    bob.c(b"B", bind("", "", [b"\x00\xffbin"], formats=[1]))
    bob.c(b"E", execute())
    bob.c(b"S", b"")
    bob.s((b"1", b""), (b"2", b""), (b"E", error("42501", "permission denied for table secrets")), (b"Z", b"I"))
    clock.advance(1)
    alice.end("client terminate")
    bob.end("client disconnect")
    w.stopService()
    return {"clock": clock}


@pytest.fixture
def jdir(tmp_path: Path) -> Path:
    folder = tmp_path / "journal"
    build(folder)
    return folder


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["journal", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tail_last_lines(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "tail", "--dir", str(jdir), "-n", "3")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert "error" in lines[0] and "42501: permission denied" in lines[0] and "bob" in lines[0]
    assert "session_end" in lines[1] and "alice" in lines[1] and "client terminate" in lines[1]
    assert "bbbb2222" in lines[2] and "client disconnect" in lines[2]


def test_tail_filters(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, _ = run(capsys, "tail", "--dir", str(jdir), "-n", "100", "--user", "alice")
    assert "select id, name from items where id <= 3" in out and "where id <= 2" in out  # across segments
    assert "bob" not in out and all(" alice " in ln for ln in out.splitlines())
    _, out, _ = run(capsys, "tail", "--dir", str(jdir), "-n", "100", "--connection", "crm")
    assert out and all("bbbb2222" in ln for ln in out.splitlines())
    _, out, _ = run(capsys, "tail", "--dir", str(jdir), "-n", "100", "--session", "aaaa")
    assert len(out.splitlines()) == 6  # start, 2 x (statement, result), end
    _, out, _ = run(capsys, "tail", "--dir", str(jdir), "--since", "2025-11-24T16:00:02Z")
    assert "where id <= 3" not in out and "permission denied" in out


def test_tail_json(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, _ = run(capsys, "tail", "--dir", str(jdir), "-n", "100", "--json", "--session", "bbbb")
    recs = [json.loads(ln) for ln in out.splitlines()]
    bind_rec = next(x for x in recs if x.get("op") == "bind")
    assert bind_rec["params"] == [{"base64": "AP9iaW4="}]
    assert recs[0]["ts"].endswith("Z") and recs[0]["ts"].startswith("2025-11-24T16:00:")
    assert all(len(x["h"]) == 64 for x in recs)


def test_tail_follow_across_rotation(tmp_path: Path) -> None:
    folder = tmp_path / "j"
    clock = Clock()
    clock.advance(T0)
    w = make_writer(folder, clock, rotate_bytes=4096)
    w.startService()
    w.write({"session": "s", "seq": 0, "kind": "statement", "op": "query", "text": "before"})
    proc = subprocess.Popen([sys.executable, "-m", "hoopd.cli", "journal", "tail", "-f", "-n", "1", "--dir",
                             str(folder), "--poll", "0.02"], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    try:
        assert "before" in lines.get(timeout=30)
        for i in range(60):  # a few rotations
            w.write({"session": "s", "seq": i + 1, "kind": "statement", "op": "query", "text": f"q{i} " + "x" * 200})
        assert len(r.list_segments(folder)) > 3
        got = [lines.get(timeout=30) for _ in range(60)]
        assert [ln.split()[-2] for ln in got] == [f"q{i}" for i in range(60)]
    finally:
        proc.kill()
        proc.wait()
        w.stopService()


def test_sessions(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "sessions", "--dir", str(jdir))
    head, a, b = out.splitlines()
    assert head.split()[:4] == ["SESSION", "USER", "CONNECTION", "LEVEL"]
    assert a.split()[:4] == ["aaaa1111aaaa1111", "alice", "shop", "admin"]
    assert a.split()[6:8] == ["2", "0"] and "client terminate" in a
    assert b.split()[:4] == ["bbbb2222bbbb2222", "bob", "crm", "read_only"] and b.split()[6:8] == ["1", "1"]
    _, out, _ = run(capsys, "sessions", "--dir", str(jdir), "--user", "bob")
    assert len(out.splitlines()) == 2 and "bob" in out


def test_replay(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "replay", "--dir", str(jdir), "aaaa")
    assert code == 0
    assert "user alice" in out and "connection shop [admin]" in out
    i1, i2 = out.index("where id <= 3"), out.index("where id <= 2")
    assert i1 < out.index("(3 rows)") < i2 < out.index("(2 rows)") < out.index("session ended: client terminate")
    assert " id |  name" in out and "  3 | item 3" in out and "SELECT 3 (3.000 ms)" in out
    code, out, _ = run(capsys, "replay", "--dir", str(jdir), "bbbb2222bbbb2222", "--rows", "1")
    assert "#2 bind (unnamed) to (unnamed) [\\x00ff62696e]" in out
    assert "error (#3): ERROR 42501: permission denied" in out
    code, _, err = run(capsys, "replay", "--dir", str(jdir), "cccc")
    assert code == 1 and "no session" in err


def test_replay_row_cap(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    _, out, _ = run(capsys, "replay", "--dir", str(jdir), "aaaa", "--rows", "1")
    assert "(3 rows, showing 1)" in out and "item 2" not in out.split("where id <= 2")[0]


def test_export_jsonl_and_csv(jdir: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, out, _ = run(capsys, "export", "--dir", str(jdir))
    recs = [json.loads(ln) for ln in out.splitlines()]
    assert code == 0 and {x["kind"] for x in recs} >= {"segment", "session_start", "statement", "result", "error"}
    assert recs == sorted(recs, key=lambda x: x["ts"])
    dest = tmp_path / "out.csv"
    code, _, _ = run(capsys, "export", "--dir", str(jdir), "--format", "csv", "-o", str(dest),
                     "--since", "2025-11-24T16:00:03Z", "--until", "2025-11-24T16:00:04.5Z")
    rows = list(csv.DictReader(io.StringIO(dest.read_text())))
    assert rows and all("2025-11-24T16:00:03" <= x["ts"] <= "2025-11-24T16:00:04.5" for x in rows)
    assert json.loads(rows[0]["record"])["kind"] == rows[0]["kind"]


@pytest.mark.parametrize("sql", ["=HYPERLINK(\"https://evil.example\",\"x\")", "+1+cmd|' /C calc'!A0",
                                 "-2+3", "@SUM(1+1)*cmd|' /C calc'!A0", "\tselect 1", "\rselect 1"])
def test_csv_export_neutralises_formulas(tmp_path: Path, capsys: pytest.CaptureFixture, sql: str) -> None:
    clock = Clock()
    clock.advance(T0)
    w = make_writer(tmp_path / "j", clock)
    w.startService()
    st = JournalStage(w, w.config)
    talk = session(st, clock, "cccc3333cccc3333", "mallory", "shop")
    talk.c(b"Q", m.cstr(sql))
    talk.end("client terminate")
    w.stopService()
    code, out, _ = run(capsys, "export", "--dir", str(tmp_path / "j"), "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    (stmt,) = [x for x in rows if x["kind"] == "statement"]
    shown = render.summary(json.loads(stmt["record"]))
    assert stmt["summary"] == ("'" + shown if sql[0] in "=+-@" else shown)  # tab/CR: stripped from a summary
    assert [render.csv_cell(c) for c in ("\tx", "\rx", "=1", "a=1", 5, None)] == ["'\tx", "'\rx", "'=1", "a=1", 5, None]
    assert json.loads(stmt["record"])["text"] == sql  # the record stays exact, inside a quoted cell
    for line in out.splitlines()[1:]:
        if line:
            assert line.startswith('"'), line  # every text cell is quoted (OWASP)
    _, jsonl, _ = run(capsys, "export", "--dir", str(tmp_path / "j"))
    assert any(json.loads(ln).get("text") == sql for ln in jsonl.splitlines())  # JSON lines unchanged


def test_verify_ok_and_broken(jdir: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "verify", str(jdir))
    assert code == 0 and out.startswith("OK: 2 segments")
    seg = sorted(jdir.glob("*.hjs"))[1]
    data = bytearray(seg.read_bytes())
    pos = data.index(b"permission denied")
    data[pos] ^= 0x20
    seg.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", "--dir", str(jdir))
    assert code == 1 and "BROKEN" in out and seg.name in out and "session bbbb2222bbbb2222 seq" in out
    code, out, _ = run(capsys, "verify", str(sorted(jdir.glob("*.hjs"))[0]))
    assert code == 0


def test_verify_with_key_from_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "key").write_bytes(KEY + b"\n")
    build(tmp_path / "journal", key=KEY)
    conf = tmp_path / "hoopd.toml"
    conf.write_text('[journal]\ndir = "journal"\nhmac_key_file = "key"\n[connections.x]\nhost = "h"\n')
    code, out, _ = run(capsys, "verify", "--config", str(conf))
    assert code == 0 and "(HMAC)" in out
    code, out, _ = run(capsys, "verify", "--key-file", str(tmp_path / "key"), str(tmp_path / "journal"))
    assert code == 0
    code, _, err = run(capsys, "verify", str(tmp_path / "journal"))
    assert code == 2 and "keyed" in err and "--key-file" in err
    code, out, _ = run(capsys, "tail", "--config", str(conf), "-n", "1")
    assert code == 0 and "client disconnect" in out


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run(capsys, "tail")
    assert code == 2 and "--dir" in err
    code, _, err = run(capsys, "sessions", "--dir", str(tmp_path / "nope"))
    assert code == 2 and "no such journal folder" in err
    code, _, err = run(capsys, "tail", "--dir", str(tmp_path), "--since", "yesterday-ish")
    assert code == 2 and "not a time" in err
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 1 and "no journal segments" in err


def test_parse_time() -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_time("2h", now) == datetime(2026, 1, 2, 1, 4, 5, tzinfo=timezone.utc)
    assert parse_time("2026-01-01", now) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_time("2026-01-01T10:00:00+02:00", now) == datetime(2026, 1, 1, 8, tzinfo=timezone.utc)


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    from hoopd.journal.cli import TtyProgress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = TtyProgress(stream)
        p.start(64 << 20)
        p.advance(32 << 20)
        p.finish()
    assert "50% of 64 MiB" in tty.getvalue() and pipe.getvalue() == ""
