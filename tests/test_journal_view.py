"""LiveJournal: the control plane's view of the journal (recent, follow, problem, admin actions)."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from hoopd.identity.base import Identity
from hoopd.journal.stage import JournalStage
from hoopd.journal.view import LiveJournal
from hoopd.journal.writer import JournalUnavailable
from hoopd.pgwire import messages as m
from hoopd.session import SessionInfo
from tests.test_journal_helpers import FlakyOS, Talk, make_writer, records, row, row_description, tag


def start(folder: Path, ops=None):
    w = make_writer(folder, **({"ops": ops} if ops else {}))
    w.startService()
    return w, JournalStage(w, w.config), LiveJournal(w, reactor)


def talk(stage: JournalStage, sid: str, user: str, sql: str) -> Talk:
    t = Talk(stage, SessionInfo(id=sid, peer="p:1", started=stage.clock.seconds(), identity=Identity(user)))
    t.c(b"Q", m.cstr(sql))
    t.s((b"T", row_description(("x", 23))), (b"D", row(b"1")), (b"C", tag("SELECT 1")), (b"Z", b"I"))
    return t


def test_follow_filters_and_stops(tmp_path: Path) -> None:
    w, stage, view = start(tmp_path)
    everything, bobs, sessions = [], [], []
    view.follow(everything.append)
    stop = view.follow(bobs.append, user="bob")
    view.follow(sessions.append, session="aaaa")
    talk(stage, "aaaa0001", "alice", "select 1")
    b = talk(stage, "bbbb0002", "bob", "select 2")
    stop()
    b.end("client terminate")
    assert [e["kind"] for e in bobs] == ["session_start", "statement", "result"]
    assert all(e["session"] == "aaaa0001" for e in sessions) and len(sessions) == 3
    assert len(everything) == 7 and everything[-1]["kind"] == "session_end"
    assert isinstance(everything[0]["ts"], str) and everything[0]["ts"].endswith("Z")
    line = view.format(everything[4])
    assert "bob" in line and "select 2" in line and "bbbb0002" in line
    w.stopService()


def test_a_failing_follower_is_dropped_and_the_write_still_counts(tmp_path: Path) -> None:
    w, stage, view = start(tmp_path)

    def broken(ev):
        raise RuntimeError("console went away")
    view.follow(broken)
    talk(stage, "s1", "alice", "select 1")
    assert view._followers == []
    w.stopService()
    assert len([x for x in records(tmp_path) if x.get("session") == "s1"]) == 3


@pytest_twisted.inlineCallbacks
def test_recent_reads_the_disk(tmp_path: Path):
    w, stage, view = start(tmp_path)
    talk(stage, "aaaa0001", "alice", "select 1")
    talk(stage, "bbbb0002", "bob", "select 2")
    view2 = LiveJournal(w, reactor)  # knows no names yet: they come from the journal
    got = yield view2.recent(user="bob", limit=10)
    assert [e["kind"] for e in got] == ["session_start", "statement", "result"]
    got = yield view2.recent(limit=2)
    assert [(e["session"], e["kind"]) for e in got] == [("bbbb0002", "statement"), ("bbbb0002", "result")]
    assert "bob" in view2.format(got[0])
    got = yield view2.recent(session="aaaa0001", limit=10_000)
    assert len(got) == 3 and got[1]["text"] == "select 1"
    w.stopService()


def test_problem_and_admin_actions(tmp_path: Path) -> None:
    ops = FlakyOS()
    w, stage, view = start(tmp_path, ops)
    assert view.problem() is None
    view.admin_action("kill", "admin@console", session="s9", reason="enough")
    ops.broken = errno.EIO
    try:
        view.admin_action("reload", "admin@api", ok=True, error=None)
    except JournalUnavailable:
        pass
    assert "cannot be written" in view.problem()
    ops.broken = None
    view.admin_action("reload", "admin@api", ok=True, error=None)
    assert view.problem() is None
    w.stopService()
    assert view.problem() == "the journal is not running"
    admin = [x for x in records(tmp_path) if x["kind"] == "admin"]
    assert [(a["action"], a["by"]) for a in admin] == [("kill", "admin@console"), ("reload", "admin@api")]
    assert admin[0]["target_session"] == "s9" and admin[0]["reason"] == "enough" and "session" not in admin[0]
