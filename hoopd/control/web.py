"""The web console at ``/ui`` on the control port: sessions (live and recent, filters,
kill), a session's replay from the journal (statements, results as tables, errors,
policy decisions, reviews; download as JSON lines), and reviews (approve, deny) and
grants (revoke), for people who would rather look than read journal files.

Server-rendered HTML, no script at all: the Content-Security-Policy allows only this
origin's stylesheet and forms. Sign-in with an API token (``[[control.tokens]]``; its
role decides what the pages offer); the console session is a random id in an HttpOnly,
SameSite=Lax cookie (Secure over TLS) that ends after IDLE seconds without a request
or at sign-out; every form that changes something carries the session's CSRF token.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jwt
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.web.server import Request

from hoopd.control.auth import ApiError, Principal, find_token, oidc_principal
from hoopd.identity.base import AuthError
from hoopd.identity.http import FetchError
from hoopd.journal.records import timestamp
from hoopd.journal.render import whole_seconds
from hoopd.review.requests import ReviewError, check_reviewer

IDLE = 1800.0  # seconds a console session lives without a request
COOKIE = "hoopd_console"
FLOW_TIME = 600.0  # seconds an OIDC sign-in may take from start to callback
HEARTBEAT = 15.0  # seconds between comments on a quiet live stream
MAX_SESSIONS = 1000
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none';"
       " base-uri 'none'")
TAIL_CSP = CSP + "; script-src 'self'; connect-src 'self'"  # the live and overview pages: their own script files
STATIC = Path(__file__).resolve().parent / "static"  # overview.js, and uPlot (MIT, see UPLOT-LICENSE)
SCRIPT = b"""// the live tail: journal events as the gateway writes them (server-sent events)
const box = document.getElementById("events"), toggle = document.getElementById("pause");
let paused = false;
toggle.addEventListener("click", () => { paused = !paused; toggle.textContent = paused ? "Resume" : "Pause"; });
const source = new EventSource("/ui/tail/events" + window.location.search);
source.onmessage = (ev) => {
  if (paused) return;
  const line = document.createElement("div");
  line.textContent = ev.data;
  box.prepend(line);
  while (box.childElementCount > 500) box.lastElementChild.remove();
};
"""
STYLE = b"""body{font:14px system-ui,sans-serif;margin:0;color:#222}header{background:#223;color:#fff;padding:8px 16px}
header a,header button{color:#fff;margin-right:16px;background:none;border:0;font:inherit;cursor:pointer}
main{padding:16px}table{border-collapse:collapse;margin:8px 0 24px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}form.inline{display:inline}.err{color:#b00}
.stmt{font-family:monospace;white-space:pre-wrap;background:#f6f6f6;padding:4px}.masked{background:#ffd}
"""


@dataclass
class ConsoleSession:
    principal: Principal
    csrf: str
    seen: float


class Page(Exception):
    """An answer other than a page: a redirect (``location``) or a refusal (``status``)."""

    def __init__(self, status: int, location: str | None = None, text: str = "") -> None:
        super().__init__(text)
        self.status, self.location, self.text = status, location, text


def request_args(request: Request) -> dict[str, str]:
    """A request's query or form fields (the last value of each)."""
    return {k.decode(): v[-1].decode("utf-8", "replace") for k, v in request.args.items()}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v))


def _when(t: Any) -> str:
    return whole_seconds(timestamp(t)) if isinstance(t, (int, float)) else str(t or "")


class WebConsole:
    def __init__(self, plane: Any) -> None:
        self.plane = plane
        self.sessions: dict[str, ConsoleSession] = {}
        self._flows: dict[str, tuple[str, str, float]] = {}  # OIDC state -> (PKCE verifier, nonce, started)

    # --- OIDC sign-in (authorization code flow with PKCE) ----------------------------------

    def _oidc(self) -> tuple[Any, Any]:
        web, oidc = self.plane.config.control.web, getattr(self.plane.token_verifier, "oidc", None)
        if web is None or oidc is None:
            raise Page(404, text="OIDC sign-in is not configured ([control.web])")
        return web, oidc

    @staticmethod
    def _discovery(oidc: Any) -> Any:
        def failed(f: Any) -> None:
            f.trap(FetchError)
            raise Page(502, text=f"the identity provider cannot be reached: {f.value}")
        return defer.Deferred.fromCoroutine(oidc.discovery()).addErrback(failed)

    @defer.inlineCallbacks
    def oidc_start(self) -> Any:
        """Where to send the browser: the provider's authorization endpoint."""
        web, oidc = self._oidc()
        doc = yield self._discovery(oidc)
        now = self.plane.reactor.seconds()
        for k in [k for k, (_, _, t) in self._flows.items() if now - t > FLOW_TIME]:
            del self._flows[k]
        if len(self._flows) >= MAX_SESSIONS:
            del self._flows[next(iter(self._flows))]
        state, nonce, verifier = os.urandom(16).hex(), os.urandom(16).hex(), _b64(os.urandom(32))
        self._flows[state] = (verifier, nonce, now)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        return str(doc["authorization_endpoint"]) + "?" + urlencode({
            "response_type": "code", "client_id": web.client_id, "redirect_uri": web.redirect_url,
            "scope": "openid profile", "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256"})

    @defer.inlineCallbacks
    def oidc_callback(self, code: str, state: str) -> Any:
        """Trade the code for an ID token, check it (signature, issuer, audience, expiry, nonce)
        and open a console session for its identity: the cookie value."""
        web, oidc = self._oidc()
        flow = self._flows.pop(state, None)
        if flow is None or self.plane.reactor.seconds() - flow[2] > FLOW_TIME:
            raise Page(400, text="this sign-in is unknown or too old; start again")
        verifier, nonce, _ = flow
        doc = yield self._discovery(oidc)
        try:
            answer, _ = yield oidc.post_form(str(doc["token_endpoint"]), {
                "grant_type": "authorization_code", "code": code, "redirect_uri": web.redirect_url,
                "client_id": web.client_id, "client_secret": web.client_secret.value, "code_verifier": verifier})
        except FetchError as err:
            raise Page(502, text=f"the identity provider refused the sign-in: {err}") from None
        token = answer.get("id_token")
        if not isinstance(token, str):
            raise Page(502, text="the identity provider sent no ID token")
        try:
            identity = yield oidc.verify(token, audience=(web.client_id,))
        except AuthError as err:
            raise Page(401, text=f"the ID token was refused: {err.reason}") from None
        if jwt.decode(token, options={"verify_signature": False}).get("nonce") != nonce:
            raise Page(401, text="the ID token was not made for this sign-in (nonce)")
        try:
            return self._open(oidc_principal(self.plane.config.control, identity))
        except ApiError as err:
            raise Page(403, text=err.message) from None

    # --- sign-in --------------------------------------------------------------------------

    def sign_in(self, token: str) -> str:
        """A new console session for a valid API token (a cookie value); Page(401) if not."""
        t = find_token(self.plane.config.control, token)
        if t is None or t.role not in ("viewer", "admin"):
            raise Page(401, text="that token does not open the console")
        groups = frozenset()
        if t.user is not None:
            groups = self.plane.identity_of(Principal(f"web:{t.name}", t.role, t.user)).groups
        return self._open(Principal(f"web:{t.name}", t.role, t.user, groups))

    def _open(self, who: Principal) -> str:
        self._expire()
        if len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[next(iter(self.sessions))]
        sid = os.urandom(24).hex()
        self.sessions[sid] = ConsoleSession(who, os.urandom(16).hex(), self.plane.reactor.seconds())
        return sid

    def session(self, request: Request) -> ConsoleSession:
        """The caller's console session, or Page(303) to the sign-in page."""
        self._expire()
        raw = request.getCookie(COOKIE.encode())
        s = self.sessions.get(raw.decode("ascii", "replace")) if raw else None
        if s is None:
            raise Page(303, "/ui/login")
        s.seen = self.plane.reactor.seconds()
        return s

    def _expire(self) -> None:
        now = self.plane.reactor.seconds()
        for k in [k for k, s in self.sessions.items() if now - s.seen > IDLE]:
            del self.sessions[k]

    def form(self, request: Request, s: ConsoleSession) -> dict[str, str]:
        """The posted form's fields, after its CSRF token was checked (Page(403) if wrong)."""
        fields = request_args(request)
        if not hmac.compare_digest(fields.get("csrf", ""), s.csrf):
            raise Page(403, text="the form is stale or not from this console (CSRF token); reload the page")
        return fields

    def sign_out(self, request: Request) -> None:
        s = self.session(request)
        self.form(request, s)
        for k in [k for k, v in self.sessions.items() if v is s]:
            del self.sessions[k]

    # --- pages ----------------------------------------------------------------------------

    def layout(self, s: ConsoleSession | None, title: str, body: str) -> bytes:
        nav = ""
        if s is not None:
            nav = ("<a href='/ui/overview'>Overview</a><a href='/ui/sessions'>Sessions</a><a href='/ui/tail'>Live</a>"
                   "<a href='/ui/reviews'>Reviews</a><a href='/ui/report'>Report</a>"
                   f"<span>{e(s.principal.name)} ({e(s.principal.role)})</span> "
                   f"<form class='inline' method='post' action='/ui/logout'>{self._csrf(s)}"
                   "<button type='submit'>Sign out</button></form>")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)} - hoopd</title>"
                f"<link rel='stylesheet' href='/ui/style.css'></head><body><header><b>hoopd</b> {nav}</header>"
                f"<main><h1>{e(title)}</h1>{body}</main></body></html>").encode()

    @staticmethod
    def _csrf(s: ConsoleSession) -> str:
        return f"<input type='hidden' name='csrf' value='{e(s.csrf)}'>"

    def login_page(self, error: str | None = None) -> bytes:
        err = f"<p class='err'>{e(error)}</p>" if error else ""
        oidc = ("<p><a href='/ui/oidc/start'>Sign in with your identity provider</a></p><p>or</p>"
                if self.plane.config.control.web is not None else "")
        return self.layout(None, "Sign in", err + oidc + "<form method='post' action='/ui/login'><label>API token "
                           "<input type='password' name='token' autocomplete='off' required></label> "
                           "<button type='submit'>Sign in</button></form>")

    def sessions_page(self, s: ConsoleSession, args: dict[str, str]) -> bytes:
        active = {"true": True, "false": False, "all": None}.get(args.get("active", "all"), None)
        rows = self.plane.sessions(user=args.get("user") or None, connection=args.get("connection") or None,
                                   active=active)
        admin = s.principal.role == "admin"
        head = ["session", "user", "connection", "level", "application", "from", "started", "statements", "state"]
        out = ["<form method='get' action='/ui/sessions'>"
               f"<input name='user' placeholder='user' value='{e(args.get('user'))}'> "
               f"<input name='connection' placeholder='connection' value='{e(args.get('connection'))}'> "
               "<select name='active'>" + "".join(
                   f"<option value='{v}'{' selected' if args.get('active', 'all') == v else ''}>{v}</option>"
                   for v in ("all", "true", "false")) + "</select> <button type='submit'>Filter</button></form>",
               f"<p>{len(rows)} sessions</p><table><tr>" + "".join(f"<th>{h}</th>" for h in head)
               + ("<th>kill</th>" if admin else "") + "</tr>"]
        for r in reversed(rows):
            state = "live" if r.get("active") else f"ended: {r.get('end_reason', '')}"
            if r.get("node"):
                state += f" (node {r['node']})"
            out.append("<tr>" + "".join(f"<td>{c}</td>" for c in (
                f"<a href='/ui/sessions/{quote(r['id'])}'>{e(r['id'])}</a>", e(r.get("user")), e(r.get("connection")),
                e(r.get("level")), e(r.get("application_name")), e(r.get("peer")), e(_when(r.get("started"))),
                e(r.get("statements")), e(state))))
            if admin:
                out.append("<td>" + (f"<form class='inline' method='post' action='/ui/sessions/{quote(r['id'])}/kill'>"
                                     f"{self._csrf(s)}<input name='reason' placeholder='reason' required> "
                                     "<button type='submit'>Kill</button></form>" if r.get("active") else "") + "</td>")
            out.append("</tr>")
        out.append("</table>")
        return self.layout(s, "Sessions", "".join(out))

    @defer.inlineCallbacks
    def replay_page(self, s: ConsoleSession, sid: str) -> Any:
        found = self.plane.session(sid)
        events = yield self._events(sid)
        if found is None and not events:
            raise Page(404, text=f"no session {sid}")
        out = []
        if found is not None:
            out.append("<table>" + "".join(
                f"<tr><th>{e(k)}</th><td>{e(_when(v) if k in ('started', 'ended') else v)}</td></tr>"
                for k, v in found.items() if k not in ("groups",)) + "</table>")
        out.append(f"<p><a href='/ui/sessions/{quote(sid)}/export'>Download as JSON lines</a></p>")
        for ev in events:
            out.append(self._event(ev))
        return self.layout(s, f"Session {sid}", "".join(out))

    def _events(self, sid: str) -> Any:
        if self.plane.journal is None:
            return defer.succeed([])
        return self.plane.journal.recent(session=sid, limit=10_000)

    @defer.inlineCallbacks
    def export(self, sid: str) -> Any:
        events = yield self._events(sid)
        return "".join(json.dumps(ev, default=str) + "\n" for ev in events).encode()

    def _event(self, ev: dict[str, Any]) -> str:
        kind, ts = ev.get("kind"), e(ev.get("ts"))
        if kind == "statement":
            return f"<h3>{ts} {e(ev.get('op'))}</h3><div class='stmt'>{e(ev.get('text'))}</div>" + (
                f"<p>parameters: {e(ev.get('params'))}</p>" if ev.get("params") else "")
        if kind == "result":
            cols = ev.get("columns") or []
            rows = ev.get("rows") or []
            table = ("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in cols) + "</tr>" + "".join(
                "<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows[:200]) + "</table>"
                if cols else "")
            more = f" (showing {min(len(rows), 200)} of {ev.get('rows_total')})" if ev.get("rows_total") else ""
            us = ev.get("us")
            return (f"<p>{e(ev.get('tag'))}{e(more)}" + (f", {us / 1000:.2f} ms" if isinstance(us, int) else "")
                    + f"</p>{table}")
        if kind in ("error", "denied"):
            return f"<p class='err'>{ts} {e(kind)} {e(ev.get('sqlstate'))}: {e(ev.get('message'))}</p>"
        if kind == "masking":
            rules = ", ".join(f"{k} ({n})" for k, n in (ev.get("rules") or {}).items())
            return f"<p class='masked'>{ts} values in the next result masked by {e(rules)}</p>"
        if kind in ("policy", "review", "notice"):
            detail = {k: v for k, v in ev.items() if k not in ("ts", "node", "session", "seq", "kind", "h")}
            return f"<p>{ts} <b>{e(kind)}</b> <code>{e(json.dumps(detail, default=str)[:500])}</code></p>"
        return ""

    def overview_page(self, s: ConsoleSession) -> bytes:
        return self.layout(s, "Overview", (
            "<link rel='stylesheet' href='/ui/uplot.css'><div id='statements'></div><div id='sessions'></div>"
            "<h2>Refusals by user and connection</h2><table id='denials'></table>"
            "<h2>Reviews by user and connection</h2><table id='reviews'></table>"
            "<h2>Journal</h2><p id='journal'></p>"
            "<script src='/ui/uplot.js'></script><script src='/ui/overview.js'></script>"))

    def overview_data(self, s: ConsoleSession) -> dict[str, Any]:
        activity = self.plane.activity
        series = activity.series() if activity is not None else {"t": [], "statements": {}, "sessions": []}
        denials = [{"user": u, "connection": c, "refused": n}
                   for (u, c), n in (activity.denied.most_common(20) if activity is not None else [])]
        by: dict[tuple[str, str], Counter[str]] = {}
        for r in self.plane.reviews():
            by.setdefault((r.get("user") or "?", r.get("connection") or "?"), Counter())[r.get("status")] += 1
        reviews = [{"user": u, "connection": c, "requests": sum(n.values()), "approved": n["approved"],
                    "denied": n["denied"], "other": sum(n.values()) - n["approved"] - n["denied"]}
                   for (u, c), n in sorted(by.items())]
        folder = self.plane.config.journal.dir
        journal = None
        if folder:
            segs = [p for p in Path(folder).glob("*.hjs")]
            journal = {"dir": folder, "segments": len(segs), "bytes": sum(p.stat().st_size for p in segs
                                                                          if p.exists())}
        return {**series, "denials": denials, "reviews": reviews, "journal": journal}

    def report(self, s: ConsoleSession, args: dict[str, str]) -> Any:
        """The journal report (hoopd.journal.report) of the last day, or ``since``: its own
        self-contained HTML page (read on a thread: it reads every segment of the range)."""
        from twisted.internet import threads

        from hoopd.journal import report
        from hoopd.journal.cli import UsageError, parse_time
        from hoopd.journal.reader import Journal
        folder = self.plane.config.journal.dir
        if not folder:
            raise Page(404, text="this gateway has no journal")
        try:
            since = parse_time(args.get("since") or "24h")
        except UsageError as err:
            raise Page(400, text=f"since: {err}") from None
        scope = report.Scope(since=since, user=args.get("user") or None, connection=args.get("connection") or None)
        key = self.plane.config.journal.hmac_key
        d = threads.deferToThreadPool(self.plane.reactor, self.plane.reactor.getThreadPool(), report.build,
                                      Journal(Path(folder)), scope, key)
        return d.addCallback(lambda doc: report.html(doc).encode())

    def tail_page(self, s: ConsoleSession, args: dict[str, str]) -> bytes:
        query = urlencode({k: v for k, v in args.items() if k in ("session", "user") and v})
        return self.layout(s, "Live", (
            "<form method='get' action='/ui/tail'>"
            f"<input name='user' placeholder='user' value='{e(args.get('user'))}'> "
            f"<input name='session' placeholder='session' value='{e(args.get('session'))}'> "
            "<button type='submit'>Filter</button></form>"
            f"<p>events {'for ' + e(query) if query else 'of every session'}, newest first "
            "<button id='pause' type='button'>Pause</button></p><div id='events' class='stmt'></div>"
            "<script src='/ui/console.js'></script>"))

    def follow(self, request: Request, s: ConsoleSession, args: dict[str, str]) -> None:
        """Stream the journal's live events to this request (server-sent events) until it ends."""
        journal = self.plane.journal
        if journal is None:
            request.write(b"data: this gateway has no journal\n\n")
            request.finish()
            return

        def send(ev: dict[str, Any]) -> None:
            text = journal.format(ev).replace("\r", " ").replace("\n", " ")
            request.write(b"data: " + text.encode() + b"\n\n")
        stop = journal.follow(send, session=args.get("session") or None, user=args.get("user") or None)
        beat = LoopingCall(request.write, b": still following\n\n")  # (proxies close quiet streams)
        beat.clock = self.plane.reactor
        beat.start(HEARTBEAT, now=False)

        def ended(_: Any) -> None:
            stop()
            if beat.running:
                beat.stop()
        request.notifyFinish().addBoth(ended)
        request.write(b": following\n\n")

    def reviews_page(self, s: ConsoleSession, error: str | None) -> bytes:
        err = f"<p class='err'>{e(error)}</p>" if error else ""
        pending = self.plane.reviews("pending")
        out = [err, f"<h2>Pending ({len(pending)})</h2><table><tr><th>request</th><th>user</th><th>connection</th>"
                    "<th>statement</th><th>rule</th><th>expires</th><th>decide</th></tr>"]
        for r in pending:
            rid = quote(r["id"])
            if not self._may_decide(s, r):
                out.append(f"<tr><td>{e(r['id'])}</td><td>{e(r.get('user'))}</td><td>{e(r.get('connection'))}</td>"
                           f"<td><div class='stmt'>{e(r.get('statement'))}</div></td><td>{e(r.get('rule'))}</td>"
                           f"<td>{e(_when(r.get('expires')))}</td><td>not one of its reviewers</td></tr>")
                continue
            out.append(
                f"<tr><td>{e(r['id'])}</td><td>{e(r.get('user'))}</td><td>{e(r.get('connection'))}</td>"
                f"<td><div class='stmt'>{e(r.get('statement'))}</div></td><td>{e(r.get('rule'))}</td>"
                f"<td>{e(_when(r.get('expires')))}</td><td>"
                f"<form method='post' action='/ui/reviews/{rid}/approve'>{self._csrf(s)}"
                "<input name='comment' placeholder='comment'> <button type='submit'>Approve</button></form>"
                f"<form method='post' action='/ui/reviews/{rid}/deny'>{self._csrf(s)}"
                "<input name='reason' placeholder='reason' required> <button type='submit'>Deny</button></form>"
                "</td></tr>")
        out.append("</table><h2>Decided</h2><table><tr><th>request</th><th>status</th><th>user</th><th>statement</th>"
                   "<th>by</th><th>why</th></tr>")
        for r in [x for x in self.plane.reviews() if x.get("status") != "pending"][-50:]:
            out.append(f"<tr><td>{e(r['id'])}</td><td>{e(r.get('status'))}</td><td>{e(r.get('user'))}</td>"
                       f"<td><div class='stmt'>{e(r.get('statement'))}</div></td><td>{e(r.get('decided_by'))}</td>"
                       f"<td>{e(r.get('why'))}</td></tr>")
        out.append("</table><h2>Grants</h2><table><tr><th>grant</th><th>user</th><th>connection</th><th>level</th>"
                   "<th>status</th><th>expires</th><th>revoke</th></tr>")
        for g in self.plane.grants():
            action = (f"<form method='post' action='/ui/grants/{quote(g['id'])}/revoke'>{self._csrf(s)}"
                      "<input name='reason' placeholder='reason' required> <button type='submit'>Revoke</button>"
                      "</form>") if g.get("status") == "active" else ""
            out.append(f"<tr><td>{e(g['id'])}</td><td>{e(g.get('user'))}</td><td>{e(g.get('connection'))}</td>"
                       f"<td>{e(g.get('level'))}</td><td>{e(g.get('status'))}</td>"
                       f"<td>{e(_when(g.get('expires')))}</td><td>{action}</td></tr>")
        out.append("</table>")
        return self.layout(s, "Reviews and grants", "".join(out))

    def _may_decide(self, s: ConsoleSession, req: dict[str, Any]) -> bool:
        p = s.principal
        who = self.plane.reviewer(p.name, p.user, p.groups)
        try:
            check_reviewer(who, tuple(req.get("reviewers") or ()), "reviewers", req.get("user"),
                           None if req.get("allow_self_approval") else "own")
        except ReviewError:
            return False
        return True

    # --- acting ---------------------------------------------------------------------------

    def decide(self, request: Request, rid: str, approve: bool) -> str:
        """Approve or deny from a form; where to go next (the reviews page, with an error if any)."""
        s = self.session(request)
        fields = self.form(request, s)
        p = s.principal
        try:
            self.plane.decide(rid, self.plane.reviewer(p.name, p.user, p.groups), approve,
                              fields.get("comment" if approve else "reason", "")[:500])
        except ReviewError as err:
            if err.status == 403:
                raise Page(403, text=err.message) from None
            return "/ui/reviews?" + urlencode({"error": err.message})
        return "/ui/reviews"

    def revoke(self, request: Request, gid: str) -> str:
        s = self.session(request)
        fields = self.form(request, s)
        p = s.principal
        try:
            self.plane.decide_grant(gid, self.plane.reviewer(p.name, p.user, p.groups), "revoke",
                                    fields.get("reason", "")[:500])
        except ReviewError as err:
            return "/ui/reviews?" + urlencode({"error": err.message})
        return "/ui/reviews"

    def kill(self, request: Request, sid: str) -> str:
        s = self.session(request)
        fields = self.form(request, s)
        if s.principal.role != "admin":
            raise Page(403, text="killing a session needs the admin role")
        self.plane.kill(sid, fields.get("reason", "")[:500], s.principal.name)
        return "/ui/sessions"
