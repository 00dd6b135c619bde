"""The admin console's commands, independent of SSH and terminals.

A Console runs one command line at a time and writes text (``\\n`` line ends) to a
callback, errors to a second one (stderr in exec mode); ``run`` fires with the exit
status. Bad input is a one-line ``error: ...`` and status 2 (usage) or 1 (failed),
never a traceback; unexpected failures are logged and reported in one line too.
Everything written passes ``hoopd.textsafe.escape`` (newlines and tabs kept): names, SQL
and application names from clients never drive the operator's terminal.
"""
from __future__ import annotations

import shlex
import time
from typing import Any, Callable

from twisted.internet import defer

from hoopd.control.plane import ControlPlane
from hoopd.log import get_logger
from hoopd.review.requests import ReviewError
from hoopd.textsafe import escape

log = get_logger("hoopd.control.console")

HELP = [
    ("help", "this list"),
    ("whoami", "who you are logged in as"),
    ("sessions [--all] [--user NAME] [--connection NAME]", "live sessions (--all: with recently ended ones)"),
    ("show ID", "one session in detail"),
    ("kill ID [REASON...]", "terminate a live session (57P01); the reason is logged and sent to the client"),
    ("tail [-f] [-n N] [--session ID] [--user NAME]", "journal events (-f: follow; Ctrl-C stops)"),
    ("stats", "counters at a glance"),
    ("reload", "re-read the config file (new sessions use it)"),
    ("reviews [--all]", "statements waiting for approval (--all: with recently decided ones)"),
    ("show-review ID", "one review request in detail"),
    ("approve ID [COMMENT...]", "approve a held statement (your [[users]] groups must be reviewers)"),
    ("deny ID REASON...", "deny a held statement; the client gets the reason"),
    ("grants [--all]", "access grants pending and active (--all: every one)"),
    ("approve-grant ID [COMMENT...]", "approve an access grant (your groups must be the connection's grant_reviewers)"),
    ("deny-grant ID REASON...", "deny an access grant"),
    ("revoke-grant ID REASON...", "end an active grant; live sessions that use it end too"),
    ("quit", "leave the console"),
]


class CommandError(Exception):
    """A one-line complaint about the command line (exit status 2) or its outcome (1)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _options(args: list[str], flags: set[str], valued: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Split ``--name value`` / ``--flag`` options from positional arguments."""
    opts: dict[str, Any] = {}
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a in flags:
            opts[a] = True
        elif a in valued:
            v = next(it, None)
            if v is None:
                raise CommandError(f"{a} needs a value", 2)
            opts[a] = v
        elif a.startswith("-") and len(a) > 1:
            raise CommandError(f"unknown option {a}", 2)
        else:
            rest.append(a)
    return opts, rest


def _age(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _table(rows: list[list[str]]) -> str:
    rows = [[escape(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)


class Console:
    def __init__(self, plane: ControlPlane, who: str, whoami: str, write: Callable[[str], None],
                 write_error: Callable[[str], None] | None = None) -> None:
        self.plane = plane
        self.who = who  # how actions are attributed, e.g. "ssh:alice"
        self.user = who.partition(":")[2] or None  # the [[users]] account whose groups decide reviews
        self.whoami = whoami  # the longer text `whoami` prints
        self.write: Callable[[str], None] = lambda text: write(escape(text, layout=True))
        self.write_error: Callable[[str], None] = lambda text: (write_error or write)(escape(text, layout=True))
        self.finished = False  # `quit` was run
        self._stop_follow: Callable[[], None] | None = None
        self._following: defer.Deferred[int] | None = None
        self._watching: Callable[[str, Any], None] | None = None  # the review listener of watch_reviews

    def watch_reviews(self, say: Callable[[str], None]) -> None:
        """Tell an interactive console of new review requests and their ends, as they happen."""
        def heard(event: str, req: Any) -> None:
            if event == "requested":
                text = " ".join(req.statement.split())
                say(escape(f"[review] #{req.id} from {req.user or '-'} on {req.connection or '-'} needs"
                           f" {req.settings.min_approvals} approval(s) by {', '.join(req.settings.reviewers)}:"
                           f" {text[:100]}  (approve {req.id} / deny {req.id} REASON)") + "\n")
            elif event != "approval":
                say(escape(f"[review] #{req.id} {event}" + (f" by {req.decided_by}" if req.decided_by else "")) + "\n")

        self.unwatch_reviews()
        self._watching = heard
        self.plane.review_listeners.append(heard)

    def unwatch_reviews(self) -> None:
        heard, self._watching = self._watching, None
        if heard is not None and heard in self.plane.review_listeners:
            self.plane.review_listeners.remove(heard)

    def run(self, line: str) -> defer.Deferred[int]:
        """Run one command line; fires with its exit status (never fails)."""
        d = defer.maybeDeferred(self._run, line)

        def failed(f: Any) -> int:
            if f.check(CommandError):
                self.write_error(f"error: {f.value}\n")
                return f.value.status
            log.failure("console command {line!r} by {who} failed", failure=f, line=line, who=self.who)
            self.write_error("error: internal error (details in the gateway log)\n")
            return 1

        return d.addErrback(failed)

    def interrupt(self) -> bool:
        """Ctrl-C or the client went away: stop a running ``tail -f``. True if one was stopped."""
        if self._following is None:
            return False
        stop, d = self._stop_follow, self._following
        self._stop_follow = self._following = None
        if stop is not None:
            stop()
        d.callback(0)
        return True

    def _run(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise CommandError(f"cannot parse the line: {e}", 2) from None
        if not words:
            return 0
        name, args = words[0].lower(), words[1:]
        handler = getattr(self, f"cmd_{name.replace('-', '_')}", None)
        if handler is None:
            raise CommandError(f"unknown command {words[0]!r} (try help)", 2)
        result = handler(args)
        return 0 if result is None else result

    # --- commands ---------------------------------------------------------------------

    def cmd_help(self, args: list[str]) -> None:
        width = max(len(u) for u, _ in HELP)
        self.write("".join(f"  {u.ljust(width)}  {h}\n" for u, h in HELP))

    def cmd_whoami(self, args: list[str]) -> None:
        self.write(self.whoami + "\n")

    def cmd_quit(self, args: list[str]) -> None:
        self.finished = True

    cmd_exit = cmd_quit

    def cmd_sessions(self, args: list[str]) -> None:
        opts, rest = _options(args, {"--all"}, {"--user", "--connection"})
        if rest:
            raise CommandError(f"sessions takes no argument {rest[0]!r}", 2)
        found = self.plane.sessions(user=opts.get("--user"), connection=opts.get("--connection"),
                                    active=None if opts.get("--all") else True)
        if not found:
            self.write("no sessions\n")
            return
        now = self.plane.reactor.seconds()
        rows = [["ID", "USER", "CONNECTION", "LEVEL", "PEER", "AGE", "STMTS", "IN", "OUT", "STATE"]]
        for s in found:
            state = ({"I": "idle", "T": "in-tx", "E": "failed-tx"}.get(s["transaction_status"], "?")
                     if s["active"] else "ended")
            rows.append([s["id"], s["user"] or "-", s["connection"] or "-", s["level"] or "-", s["peer"],
                         _age(now - s["started"]), str(s["statements"]), str(s["bytes_in"]),
                         str(s["bytes_out"]), state])
        self.write(_table(rows))

    def cmd_show(self, args: list[str]) -> None:
        if len(args) != 1:
            raise CommandError("usage: show ID", 2)
        s = self.plane.session(args[0])
        if s is None:
            raise CommandError(f"no session {args[0]}")
        self._fields(s, ("started", "ended"))

    def cmd_kill(self, args: list[str]) -> None:
        if not args:
            raise CommandError("usage: kill ID [REASON...]", 2)
        reason = " ".join(args[1:])
        if not self.plane.kill(args[0], reason, self.who):
            raise CommandError(f"no live session {args[0]}")
        self.write(f"killed session {args[0]}\n")

    def cmd_stats(self, args: list[str]) -> None:
        st = self.plane.stats()
        fails = st.pop("login_failures")
        st["login_failures"] = ", ".join(f"{k}={v}" for k, v in sorted(fails.items())) or "0"
        st["connections"] = ", ".join(st["connections"]) or "-"
        self.write("".join(f"{k + ':':20} {v}\n" for k, v in st.items()))

    def cmd_reload(self, args: list[str]) -> None:
        err = self.plane.reload(self.who)
        if err is not None:
            raise CommandError(f"reload rejected, the running config stays: {err}")
        self.write("reloaded: new sessions use the new config\n")

    def cmd_reviews(self, args: list[str]) -> None:
        opts, rest = _options(args, {"--all"}, set())
        if rest:
            raise CommandError(f"reviews takes no argument {rest[0]!r}", 2)
        found = self.plane.reviews(None if opts.get("--all") else "pending")
        if not found:
            self.write("no review requests\n")
            return
        now = self.plane.reactor.seconds()
        rows = [["ID", "STATUS", "USER", "CONNECTION", "RULE", "AGE", "APPROVALS", "STATEMENT"]]
        for r in found:
            text = " ".join(r["statement"].split())
            rows.append([r["id"], r["status"], r["user"] or "-", r["connection"] or "-", r["rule"],
                         _age(now - r["requested"]), f'{len(r["approvals"])}/{r["min_approvals"]}',
                         text if len(text) <= 60 else text[:57] + "..."])
        self.write(_table(rows))

    def cmd_show_review(self, args: list[str]) -> None:
        if len(args) != 1:
            raise CommandError("usage: show-review ID", 2)
        r = self.plane.review(args[0])
        if r is None:
            raise CommandError(f"no review request {args[0]}")
        r["approvals"] = [f'{a["by"]} ({a["comment"] or "no comment"})' for a in r["approvals"]]
        self._fields(r, ("requested", "expires", "decided"))

    def _fields(self, record: dict[str, Any], times: tuple[str, ...]) -> None:
        """One ``key: value`` line per field; ``times``: epoch seconds shown as UTC."""
        for k, v in record.items():
            if k in times and v is not None:
                v = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(v))
            elif isinstance(v, list):
                v = ", ".join(map(str, v)) or "-"
            self.write(f"{k + ':':20} {v if v is not None else '-'}\n")

    def cmd_approve(self, args: list[str]) -> None:
        if not args:
            raise CommandError("usage: approve ID [COMMENT...]", 2)
        r = self._decide(args[0], True, " ".join(args[1:]))
        self.write(f"request {r['id']}: {r['status']}"
                   + (f" ({len(r['approvals'])} of {r['min_approvals']} approvals)" if r["status"] == "pending"
                      else "") + "\n")

    def cmd_deny(self, args: list[str]) -> None:
        if len(args) < 2:
            raise CommandError("usage: deny ID REASON...", 2)
        r = self._decide(args[0], False, " ".join(args[1:]))
        self.write(f"request {r['id']}: {r['status']}\n")

    def cmd_grants(self, args: list[str]) -> None:
        opts, rest = _options(args, {"--all"}, set())
        if rest:
            raise CommandError(f"grants takes no argument {rest[0]!r}", 2)
        found = [g for g in self.plane.grants() if opts.get("--all") or g["status"] in ("pending", "active")]
        if not found:
            self.write("no grants\n")
            return
        now = self.plane.reactor.seconds()
        rows = [["ID", "STATUS", "USER", "CONNECTION", "LEVEL", "FOR", "LEFT", "REASON"]]
        for g in found:
            left = _age(g["expires"] - now) if g["status"] == "active" and g["expires"] else "-"
            rows.append([g["id"], g["status"], g["user"], g["connection"], g["level"], _age(g["duration"]), left,
                         g["reason"][:40]])
        self.write(_table(rows))

    def cmd_approve_grant(self, args: list[str]) -> None:
        self._grant("approve", args, 1, "approve-grant ID [COMMENT...]")

    def cmd_deny_grant(self, args: list[str]) -> None:
        self._grant("deny", args, 2, "deny-grant ID REASON...")

    def cmd_revoke_grant(self, args: list[str]) -> None:
        self._grant("revoke", args, 2, "revoke-grant ID REASON...")

    def _grant(self, action: str, args: list[str], least: int, usage: str) -> None:
        if len(args) < least:
            raise CommandError(f"usage: {usage}", 2)
        try:
            g = self.plane.decide_grant(args[0], self.plane.reviewer(self.who, self.user), action, " ".join(args[1:]))
        except ReviewError as e:
            raise CommandError(e.message) from None
        self.write(f"grant {g['id']}: {g['status']}\n")

    def _decide(self, rid: str, approve: bool, text: str) -> dict[str, Any]:
        try:
            return self.plane.decide(rid, self.plane.reviewer(self.who, self.user), approve, text)
        except ReviewError as e:
            raise CommandError(e.message) from None

    @defer.inlineCallbacks
    def cmd_tail(self, args: list[str]) -> Any:
        opts, rest = _options(args, {"-f", "--follow"}, {"--session", "--user", "-n"})
        if rest:
            raise CommandError(f"tail takes no argument {rest[0]!r}", 2)
        n = opts.get("-n", "20")
        if not n.isdigit():
            raise CommandError("-n needs a number", 2)
        journal = self.plane.journal
        if journal is None:
            raise CommandError("tail is not available: this gateway has no journal")
        filters = {"session": opts.get("--session"), "user": opts.get("--user")}
        events = (yield journal.recent(limit=int(n), **filters)) if int(n) else []
        for ev in events:
            self.write(journal.format(ev) + "\n")
        if not (opts.get("-f") or opts.get("--follow")):
            return 0
        self._following = defer.Deferred()
        done = self._following
        self._stop_follow = journal.follow(lambda ev: self.write(journal.format(ev) + "\n"), **filters)
        return (yield done)
