"""``hoopd journal tail|sessions|replay|export|verify``: the journal tools.

Each reads ``[journal].dir`` of a config file (``--config``, only its [journal] section
is read, so no other secret is needed) or a folder given with ``--dir``.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from hoopd.config import GatewayConfig, read_toml
from hoopd.confkit import ConfigError, Table, read_key
from hoopd.names import name_key
from hoopd.journal import records as r
from hoopd.journal import render, report
from hoopd.journal.anchor import Anchor, anchor_files, read_anchor
from hoopd.journal.config import JournalConfig, parse_journal
from hoopd.journal.reader import Entry, Journal, Progress
from hoopd.journal.verify import KeyNeeded, verify
from hoopd.textsafe import escape

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(Exception):
    pass


class TtyProgress(Progress):
    """A one-line progress bar on stderr, drawn only on a terminal and for long reads."""

    MIN_BYTES = 8 << 20

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.on = False
        self.total = 0
        self.shown = -1

    def start(self, total: int) -> None:
        self.total = total
        self.shown = -1
        self.on = total >= self.MIN_BYTES and self.stream.isatty()

    def advance(self, done: int) -> None:
        if not self.on:
            return
        pct = min(100, done * 100 // max(1, self.total))
        if pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 4)
            self.stream.write(f"\rreading journal [{bar:25}] {pct:3d}% of {self.total >> 20} MiB")
            self.stream.flush()

    def finish(self) -> None:
        if self.on and self.shown >= 0:
            self.stream.write("\r" + " " * 60 + "\r")
            self.stream.flush()
        self.on = False


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An absolute time (ISO 8601; without a zone it is UTC) or an age like 15m, 2h, 7d."""
    now = now or datetime.now(timezone.utc)
    mt = _AGO.match(text.strip())
    if mt:
        return now - timedelta(seconds=float(mt.group(1)) * _AGO_UNITS[mt.group(2)])
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"not a time: {text!r} (use e.g. 2026-11-25T21:00:00Z, 2026-11-25 or 15m, 2h, 7d)") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def journal_config(path: str) -> JournalConfig:
    """The [journal] section of a config file (nothing else is read or checked)."""
    p = Path(path)
    try:
        data = read_toml(p)
        return parse_journal(Table(data.get("journal", {}), "journal"), p.parent.resolve())
    except ConfigError as e:
        raise UsageError(str(e) if not e.path else f"{p}: {e}") from None


def _anchors(args: argparse.Namespace) -> dict[str, Anchor]:
    """The anchors to check against: --anchor files (an anchor file, or a saved syslog line),
    and with --config every node's anchor file in its [gateway].state_dir."""
    files = [Path(f) for f in args.anchor]
    if args.config and not args.anchor:
        try:
            gw = read_toml(Path(args.config)).get("gateway", {})
        except ConfigError as e:
            raise UsageError(f"{args.config}: {e}") from None
        state_dir = gw.get("state_dir", GatewayConfig.state_dir) if isinstance(gw, dict) else GatewayConfig.state_dir
        files = anchor_files(state_dir) if isinstance(state_dir, str) else []
    found = {}
    for f in files:
        try:
            found[str(f)] = read_anchor(f)
        except OSError as e:
            raise UsageError(f"cannot read anchor {f}: {e.strerror}") from None
        except ValueError as e:
            raise UsageError(str(e)) from None
    return found


def _folder(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    if args.config:
        jdir = journal_config(args.config).dir
        if not jdir:
            raise UsageError(f"{args.config}: journal.dir is not set")
        return Path(jdir)
    raise UsageError("give the journal folder with --dir DIR or a config file with --config FILE")


def _journal(args: argparse.Namespace) -> Journal:
    folder = _folder(args)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such journal folder")
    return Journal(folder, TtyProgress())


class _Filter:
    """--session / --user / --connection, resolved through the sessions' start records."""

    def __init__(self, journal: Journal, args: argparse.Namespace, everything: bool = False) -> None:
        self.journal = journal
        self.everything = everything  # without filters: also segment bookkeeping records
        self.session = getattr(args, "session", None)
        self.user = getattr(args, "user", None)
        self.connection = getattr(args, "connection", None)

    @property
    def active(self) -> bool:
        return bool(self.session or self.user or self.connection)

    def user_of(self, rec: dict[str, Any]) -> str | None:
        sid = rec.get("session")
        start = self.journal.session_start(sid) if sid else None
        return start.get("user") if start else None

    def __call__(self, rec: dict[str, Any]) -> bool:
        sid = rec.get("session")
        if not self.active:
            return self.everything or sid is not None or rec.get("kind") not in (r.SEGMENT, r.SEGMENT_END) or bool(rec.get("gap"))
        if sid is None or (self.session and not sid.startswith(self.session)):
            return False
        if self.user or self.connection:
            start = self.journal.session_start(sid) or {}
            if self.user and name_key(start.get("user") or "") != name_key(self.user):
                return False
            if self.connection and start.get("connection") != self.connection:
                return False
        return True


def _print(entries: Iterable[Entry], flt: _Filter, as_json: bool) -> None:
    for e in entries:
        print(render.to_json(e.rec) if as_json else render.line(e.rec, flt.user_of(e.rec)), flush=True)


def _warn(journal: Journal) -> None:
    for w in journal.warnings:
        print(f"hoopd: warning: {w}", file=sys.stderr)
    journal.warnings.clear()


# --- commands -------------------------------------------------------------------------

def cmd_tail(args: argparse.Namespace) -> int:
    j = _journal(args)
    flt = _Filter(j, args)
    start = j.end_positions()
    if args.since:
        _print((e for e in j.records(since=parse_time(args.since)) if flt(e.rec)), flt, args.json)
    else:
        _print(j.last(args.lines, flt, start), flt, args.json)
    _warn(j)
    if args.follow:
        _print((e for e in j.follow(start, poll=args.poll) if flt(e.rec)), flt, args.json)
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    j = _journal(args)
    flt = _Filter(j, args)
    rows: dict[str, dict[str, Any]] = {}
    for e in j.records(since=parse_time(args.since) if args.since else None):
        rec = e.rec
        sid = rec.get("session")
        if sid is None:
            continue
        s = rows.setdefault(sid, {"start": None, "end": None, "first": e.ts, "statements": 0, "errors": 0,
                                  "reason": ""})
        kind = rec.get("kind")
        if kind == r.SESSION_START:
            s["start"] = e.ts
        elif kind == r.SESSION_END:
            s["end"], s["reason"] = e.ts, rec.get("reason", "")
        elif kind == r.STATEMENT and rec.get("op") in ("query", "execute", "call"):
            s["statements"] += 1
        elif kind == r.ERROR:
            s["errors"] += 1
    _warn(j)
    fmt = "{:16}  {:12}  {:12}  {:10}  {:24}  {:24}  {:>10}  {:>6}  {}"
    print(fmt.format("SESSION", "USER", "CONNECTION", "LEVEL", "START", "END", "STATEMENTS", "ERRORS", "END REASON"))
    for sid, s in sorted(rows.items(), key=lambda kv: kv[1]["start"] or kv[1]["first"]):
        if not flt({"session": sid}):
            continue
        st = j.session_start(sid) or {}
        start = render.short_time(s["start"]) if s["start"] else "(before " + render.short_time(s["first"]) + ")"
        end = render.short_time(s["end"]) if s["end"] else "-"
        print(escape(fmt.format(sid, str(st.get("user", "?")), str(st.get("connection", "?")),
                                str(st.get("level", "?")), start, end, s["statements"], s["errors"], s["reason"])))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    j = _journal(args)
    ids = [args.session] if j.session_start(args.session) else j.find_session(args.session)
    if not ids:
        print(f"hoopd: no session {args.session!r} in {j.folder}", file=sys.stderr)
        return 1
    if len(ids) > 1:
        print(f"hoopd: {args.session!r} names {len(ids)} sessions: {', '.join(ids[:10])}", file=sys.stderr)
        return 1
    sid = ids[0]
    start = j.session_start(sid)
    since = start["ts"] if start else None
    out = render.Replay(sys.stdout, args.rows)
    for e in j.records(since=since):
        if e.rec.get("session") == sid:
            out.record(e.rec)
            if e.rec.get("kind") == r.SESSION_END:
                break
    _warn(j)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    j = _journal(args)
    flt = _Filter(j, args, everything=True)
    entries = (e for e in j.records(since=parse_time(args.since) if args.since else None,
                                    until=parse_time(args.until) if args.until else None) if flt(e.rec))
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    try:
        if args.format == "jsonl":
            for e in entries:
                out.write(render.to_json(e.rec) + "\n")
        else:
            w = csv.writer(out, quoting=csv.QUOTE_NONNUMERIC)  # every text cell quoted, numbers bare
            w.writerow(["ts", "node", "session", "seq", "kind", "stmt", "summary", "record"])
            for e in entries:
                rec = e.rec
                w.writerow([render.csv_cell(c) for c in (
                    render.rfc3339(rec["ts"]), rec.get("node"), rec.get("session") or "", rec.get("seq", ""),
                    rec.get("kind"), rec.get("stmt", ""), render.summary(rec), render.to_json(rec))])
    finally:
        if out is not sys.stdout:
            out.close()
    _warn(j)
    return 0


def _key(args: argparse.Namespace) -> bytes | None:
    """The HMAC key of a keyed journal: --key-file, else the config's hmac_key_file."""
    if args.key_file:
        try:
            return read_key(Path(args.key_file))
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot use key file {args.key_file}: {e}") from None
    return journal_config(args.config).hmac_key if args.config else None


def cmd_report(args: argparse.Namespace) -> int:
    key = _key(args)
    j = _journal(args)
    scope = report.Scope(parse_time(args.since) if args.since else None, parse_time(args.until) if args.until else None,
                         args.connection, args.user, args.level, args.application)
    try:
        doc = report.build(j, scope, key, _anchors(args))
    except KeyNeeded as e:
        raise UsageError(str(e)) from None
    text = {"text": report.text, "json": report.to_json, "html": report.html}[args.format](doc)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    _warn(j)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    key = _key(args)
    targets = [Path(p) for p in args.paths] or [_folder(args)]
    segs: list[r.SegmentName] = []
    whole = all(p.is_dir() for p in targets)
    for p in targets:
        if p.is_dir():
            segs.extend(r.list_segments(p))
        elif p.is_file():
            seg = r.SegmentName.parse(p)
            if seg is None:
                raise UsageError(f"{p}: not a journal segment name (<time>-<node>-<counter>.hjs)")
            segs.append(seg)
        else:
            raise UsageError(f"{p}: no such file or folder")
    if not segs:
        print(f"hoopd: no journal segments in {', '.join(map(str, targets))}", file=sys.stderr)
        return 1
    anchors = _anchors(args)
    try:
        rep = verify(segs, key, whole_dir=whole, progress=TtyProgress(), anchors=anchors)
    except KeyNeeded as e:
        raise UsageError(str(e)) from None
    for note in rep.notes:
        print(f"note: {note}")
    for b in rep.broken:
        print(f"BROKEN: {b}")
    if rep.ok:
        nodes = sorted({s.node for s in segs})
        streams = f" of {len(nodes)} streams ({', '.join(nodes)})" if len(nodes) > 1 else ""
        print(f"OK: {rep.segments} segments{streams}, {rep.records} records, hash chain intact"
              + (" (HMAC)" if key else "")
              + ("" if anchors else "; no chain anchor given (--anchor FILE, or --config for the gateway's"
                 " state_dir), so records cut from the end would not show"))
        return 0
    print(f"FAILED: {len(rep.broken)} broken chain(s) in {rep.segments} segments")
    return 1


# --- argparse -------------------------------------------------------------------------

def _run(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except UsageError as e:
            print(f"hoopd: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    return run


def add_commands(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("journal", help="session journals: tail, sessions, replay, export, report, verify")
    js = j.add_subparsers(dest="journal_command", metavar="COMMAND", required=True)

    def cmd(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = js.add_parser(name, help=help, description=help)
        p.add_argument("--config", metavar="FILE", help="read [journal].dir (and hmac_key_file) from this config")
        p.add_argument("--dir", metavar="DIR", help="the journal folder")
        p.set_defaults(func=_run(fn))
        return p

    def filters(p: argparse.ArgumentParser, session: bool = True) -> None:
        if session:
            p.add_argument("--session", metavar="ID", help="only this session (an id or its prefix)")
        p.add_argument("--user", metavar="NAME", help="only sessions of this user")
        p.add_argument("--connection", metavar="NAME", help="only sessions on this connection")

    t = cmd("tail", cmd_tail, "print the newest events; -f follows the journal across rotations")
    t.add_argument("-f", "--follow", action="store_true", help="keep printing events as they are written")
    t.add_argument("-n", "--lines", type=int, default=10, metavar="N", help="how many recent events (default 10)")
    t.add_argument("--since", metavar="TIME", help="every event since TIME (ISO 8601, or an age: 15m, 2h, 7d)")
    t.add_argument("--json", action="store_true", help="JSON lines instead of text")
    t.add_argument("--poll", type=float, default=0.25, help=argparse.SUPPRESS)
    filters(t)

    s = cmd("sessions", cmd_sessions, "one line per session: id, user, connection, level, start, end, counts")
    s.add_argument("--since", metavar="TIME", help="sessions with events since TIME")
    filters(s, session=False)

    rp = cmd("replay", cmd_replay, "a session as a conversation: statements, results, errors, in order")
    rp.add_argument("session", metavar="SESSION", help="the session id (or a unique prefix)")
    rp.add_argument("--rows", type=int, default=50, metavar="N", help="rows shown per result (-1: all; default 50)")

    e = cmd("export", cmd_export, "events for a SIEM: JSON lines or CSV (bytes as base64, RFC 3339 times)")
    e.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    e.add_argument("--since", metavar="TIME")
    e.add_argument("--until", metavar="TIME")
    e.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    filters(e)

    rpt = cmd("report", cmd_report, "evidence and insight over a time range: access, enforcement, workload,"
                                    " integrity (text, json or one self-contained html file)")
    rpt.add_argument("--since", metavar="TIME", help="from TIME (ISO 8601, or an age: 15m, 2h, 7d)")
    rpt.add_argument("--until", metavar="TIME")
    rpt.add_argument("--level", choices=("read_only", "read_write", "admin"), help="only sessions at this level")
    rpt.add_argument("--application", metavar="PREFIX", help='only sessions whose application_name starts so (e.g. "mcp:")')
    rpt.add_argument("--format", choices=("text", "json", "html"), default="text")
    rpt.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    rpt.add_argument("--key-file", metavar="FILE", help="the HMAC key of a keyed journal")
    rpt.add_argument("--anchor", action="append", default=[], metavar="FILE", help="a chain anchor; repeatable")
    filters(rpt, session=False)

    v = cmd("verify", cmd_verify, "check the hash chain; prints OK or the first broken record, exits 1 if broken")
    v.add_argument("paths", nargs="*", metavar="DIR|FILE", help="journal folders or segment files")
    v.add_argument("--key-file", metavar="FILE", help="the HMAC key of a keyed journal")
    v.add_argument("--anchor", action="append", default=[], metavar="FILE",
                   help="a chain anchor (the state_dir file, or a syslog line saved to a file); repeatable")
