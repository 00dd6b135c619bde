"""Nothing a client sends can drive an operator's terminal: a real session through
``twistd hoopd`` whose application_name, SQL, column names, values, notices and errors
carry ESC sequences (OSC title, CSI clear, OSC 8 link, C1 CSI, bidi override) is shown
escaped by ``hoopd journal tail|replay|sessions`` and the SSH console (paramiko), while
the journal and JSON output keep the exact text."""
from __future__ import annotations

import json
import subprocess

import psycopg
import pytest

from hoopd.textsafe import escape, json_escape
from tests.gateway import BIN, Gateway
from tests.test_control_ssh import _read_until, start_with_console

pytestmark = pytest.mark.integration

TITLE = "\x1b]0;pwned\x07"  # OSC 0: set the window title
CLEAR = "\x1b[2J\x1b[H"  # CSI: clear the screen, cursor home
LINK = "\x1b]8;;https://evil.example/\x1b\\click me\x1b]8;;\x1b\\"  # OSC 8 hyperlink
C1 = "\u009b31m"  # CSI as one C1 character
BIDI = "\u202eevil\u202c"  # right-to-left override
RAW = ("\x1b", "\x07", "\u009b", "\u202e", "\r")


def assert_safe(text: str, what: str, raw: tuple[str, ...] = RAW) -> None:
    for c in raw:
        assert c not in text, f"{what} has a raw {c!r}: {text!r}"


def test_escape_shows_every_control_character() -> None:
    hostile = TITLE + CLEAR + LINK + C1 + BIDI + "a\rb\x00\x7f\u2028\t\n"
    shown = escape(hostile)
    assert shown.startswith("\\x1b]0;pwned\\x07\\x1b[2J") and "\\u009b31m" not in shown and "\\x9b31m" in shown
    assert "\\u202eevil\\u202c" in shown and "a\\x0db\\x00\\x7f\\u2028\\x09\\x0a" in shown
    assert escape(shown) == shown  # idempotent: escaping twice changes nothing
    assert escape("line 1\n\tline 2\r", layout=True) == "line 1\n\tline 2\\x0d"
    encoded = json_escape(json.dumps({"v": hostile}, ensure_ascii=False))
    assert json.loads(encoded) == {"v": hostile} and all(c not in encoded for c in RAW)


@pytest.fixture(scope="module")
def gw(pg, tmp_path_factory):
    g = start_with_console(pg, tmp_path_factory.mktemp("escape"))
    yield g
    g.stop()


def journal(gw: Gateway, *args: str) -> str:
    r = subprocess.run([str(BIN / "hoopd"), "journal", *args, "--dir", str(gw.folder / "journal")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_hostile_session_is_rendered_escaped_everywhere(gw):
    app = "psql" + TITLE + BIDI
    with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        value = conn.execute(f"select %s::text as \"col{CLEAR}\", '{LINK}' as link", (C1 + CLEAR,)).fetchone()
        assert value == (C1 + CLEAR, LINK)  # the client gets its exact bytes back
        conn.execute(f"do $$ begin raise notice '{TITLE}notice'; end $$")
        assert notices == [TITLE + "notice"]
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            conn.execute(f"select '{CLEAR}'::int")

        status, out, err = gw.console.exec("sessions --user dev")
        assert status == 0 and err == ""
        sid = out.splitlines()[1].split()[0]
        status, show, _ = gw.console.exec(f"show {sid}")
        assert status == 0 and "application_name:    psql\\x1b]0;pwned\\x07\\u202eevil\\u202c\n" in show
        assert_safe(show, "console show")
        with gw.console.client() as c:  # the interactive shell, through a pty
            chan = c.invoke_shell(term="xterm", width=200, height=40)
            _read_until(chan, b"hoopd> ")
            chan.send(f"show {sid}\r".encode())
            screen = _read_until(chan, b"hoopd> ").decode()
            assert "psql\\x1b]0;pwned" in screen
            answer = screen.split("show " + sid, 1)[1]  # the terminal's own line ends are \r\n
            assert_safe(answer, "interactive show", raw=RAW[:-1])
            chan.send(b"quit\r")

    status, tail, _ = gw.console.exec("tail -n 100 --user dev")
    assert status == 0 and "\\x1b]8;;https://evil.example/\\x1b\\click me" in tail
    assert_safe(tail, "console tail")

    text = journal(gw, "tail", "-n", "100")
    assert "app=psql\\x1b]0;pwned\\x07\\u202eevil\\u202c" in text and "\\x1b]0;pwned\\x07notice" in text
    assert 'invalid input syntax for type integer: "\\x1b[2J\\x1b[H"' in text
    assert_safe(text, "journal tail")
    replay = journal(gw, "replay", sid)
    assert "col\\x1b[2J\\x1b[H" in replay and "\\x9b31m\\x1b[2J\\x1b[H" in replay and "application psql\\x1b]0;" in replay
    assert_safe(replay, "journal replay")
    sessions = journal(gw, "sessions")
    assert sid in sessions
    assert_safe(sessions, "journal sessions")

    lines = [json.loads(ln) for ln in journal(gw, "tail", "-n", "100", "--json").splitlines()]
    (start,) = [x for x in lines if x["kind"] == "session_start" and x["session"] == sid]
    assert start["application_name"] == app  # the journal and its JSON keep the exact text
    assert_safe(journal(gw, "tail", "-n", "100", "--json"), "journal tail --json")
