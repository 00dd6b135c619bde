"""The HTTP control port: health, readiness, Prometheus metrics and the JSON API.

One leaf resource routes every path through a small table (method, path pattern, who may
call it, handler), so unknown paths and wrong methods get JSON errors like everything
else, and the table is what the OpenAPI document is tested against.

The port reads no body it would refuse: when a request's headers are in, ControlChannel
asks ControlResource.admit whether the path exists, the body fits (MAX_BODY) and the
caller may call it; a refusal is answered at once and the connection closed. A bearer
token that needs an OIDC check pauses reading until it is verified. Chunked bodies are
capped while read. Each connection has an idle timeout, each request a deadline for its
headers and body (slowloris), and the port a cap on open connections (all in [control]).
"""
from __future__ import annotations

import json
from html import escape as html_escape
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from twisted.internet import defer
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from hoopd.control.auth import ApiError, Principal, authenticate
from hoopd.control.metrics import CONTENT_TYPE
from hoopd.control.web import COOKIE, CSP, SCRIPT, STATIC, STYLE, TAIL_CSP, Page, WebConsole, request_args
from hoopd.control.openapi import DOCUMENT
from hoopd.control.plane import ControlPlane
from hoopd.log import get_logger
from hoopd.confkit import parse_duration
from hoopd.review.grants import GRANT_STATES
from hoopd.review.requests import OUTCOMES, ReviewError

log = get_logger("hoopd.control.http")
MAX_BODY = 64 * 1024
LINGER_SECONDS = 2.0  # after an early refusal, how long input is drained so the answer is not lost to a RST
LINGER_BYTES = 1 << 20  # ...and how much of it at most
_PENDING = object()
_ACTIVE = {"true": True, "false": False, "all": None}


REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"  # (no script)
UI_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
              "X-Frame-Options": "DENY"}


@dataclass(frozen=True)
class Reply:
    body: Any  # JSON-able, or bytes sent as they are
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Callable[[Request], Any] | None = None  # writes the body itself (server-sent events) and finishes


@dataclass(frozen=True)
class Route:
    method: str
    path: tuple[str, ...]  # segments; "{id}" matches one segment
    access: str  # health | metrics | public | identity (any caller with a user: MCP) | viewer | admin
    handler: Callable[..., Any]  # (api, request, principal, *path params) -> Reply | Deferred[Reply]

    def match(self, segments: list[str]) -> list[str] | None:
        if len(segments) != len(self.path):
            return None
        params = []
        for want, got in zip(self.path, segments):
            if want.startswith("{"):
                params.append(got)
            elif want != got:
                return None
        return params


def _arg(request: Request, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[-1].decode("utf-8", "replace") if values else None


def _segments(path: bytes) -> list[str]:
    """The decoded path segments of a request target (as twisted.web's postpath has them)."""
    return [unquote_to_bytes(s).decode("utf-8", "replace") for s in path.split(b"?", 1)[0].split(b"/") if s]


def _body(request: Request) -> dict[str, Any]:
    raw = request.content.read(MAX_BODY + 1) if request.content else b""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too_large", f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return data


class ControlApi:
    """The handlers; each takes (request, principal, *path params)."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.web = WebConsole(plane)

    def healthz(self, request: Request, who: Principal | None) -> Reply:
        return Reply({"status": "ok", "node": self.plane.config.gateway.node})

    @defer.inlineCallbacks
    def readyz(self, request: Request, who: Principal | None) -> Any:
        ready, checks = yield self.plane.readiness()
        return Reply({"ready": ready, "checks": checks}, 200 if ready else 503)

    def metrics(self, request: Request, who: Principal | None) -> Any:
        return self.plane.metrics_text().addCallback(lambda text: Reply(text, content_type=CONTENT_TYPE))

    def openapi(self, request: Request, who: Principal | None) -> Reply:
        return Reply(DOCUMENT)

    def list_sessions(self, request: Request, who: Principal) -> Reply:
        active = _arg(request, "active") or "true"
        if active not in _ACTIVE:
            raise ApiError(400, "bad_parameter", "active must be true, false or all")
        return Reply({"sessions": self.plane.sessions(user=_arg(request, "user"),
                                                      connection=_arg(request, "connection"),
                                                      active=_ACTIVE[active])})

    @defer.inlineCallbacks
    def get_session(self, request: Request, who: Principal, session_id: str) -> Any:
        found = self.plane.session(session_id)
        if found is None:
            raise ApiError(404, "not_found", f"no session {session_id}")
        events = None
        if self.plane.journal is not None:
            events = yield self.plane.journal.recent(session=session_id, limit=10_000)
        return Reply({**found, "events": events})

    def kill(self, request: Request, who: Principal, session_id: str) -> Reply:
        reason = _body(request).get("reason", "")
        if not isinstance(reason, str) or len(reason) > 500:
            raise ApiError(400, "bad_parameter", "reason must be a string of at most 500 characters")
        if not self.plane.kill(session_id, reason, who.name):
            raise ApiError(404, "not_found", f"no live session {session_id}")
        return Reply({"killed": session_id, "reason": reason})

    def list_reviews(self, request: Request, who: Principal) -> Reply:
        status = _arg(request, "status")
        if status not in (None, "pending", *OUTCOMES):
            raise ApiError(400, "bad_parameter", f"status must be pending or one of {', '.join(OUTCOMES)}")
        return Reply({"reviews": self.plane.reviews(status)})

    def get_review(self, request: Request, who: Principal, rid: str) -> Reply:
        found = self.plane.review(rid)
        if found is None:
            raise ApiError(404, "not_found", f"no review request {rid}")
        return Reply(found)

    def approve_review(self, request: Request, who: Principal, rid: str) -> Reply:
        return self._decide(request, who, rid, True, "comment")

    def deny_review(self, request: Request, who: Principal, rid: str) -> Reply:
        return self._decide(request, who, rid, False, "reason")

    def _decide(self, request: Request, who: Principal, rid: str, approve: bool, key: str) -> Reply:
        text = self._text(request, key, required=not approve)
        reviewer = self.plane.reviewer(who.name, who.user, who.groups)
        return self._reviewed(lambda: self.plane.decide(rid, reviewer, approve, text))

    @staticmethod
    def _text(request: Request, key: str, required: bool) -> str:
        text = _body(request).get(key, "")
        if not isinstance(text, str) or len(text) > 500 or (required and not text.strip()):
            raise ApiError(400, "bad_parameter", f"{key} must be a{' non-empty' if required else ''} string"
                                                 " of at most 500 characters")
        return text

    @staticmethod
    def _reviewed(act: Callable[[], dict[str, Any]]) -> Reply:
        """``act``'s answer, or its ReviewError as an API error."""
        try:
            return Reply(act())
        except ReviewError as e:
            code = {400: "bad_parameter", 403: "forbidden", 404: "not_found", 503: "unavailable"}.get(e.status,
                                                                                                     "conflict")
            raise ApiError(e.status, code, e.message) from None

    def list_grants(self, request: Request, who: Principal) -> Reply:
        status = _arg(request, "status")
        if status not in (None, *GRANT_STATES):
            raise ApiError(400, "bad_parameter", f"status must be one of {', '.join(GRANT_STATES)}")
        return Reply({"grants": self.plane.grants(status)})

    # --- the web console (hoopd.control.web) ------------------------------------------------

    @staticmethod
    def _page(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return Reply(body, status, "text/html; charset=utf-8", headers={**UI_HEADERS, **(headers or {})})

    def _ui(self, request: Request, make: Callable[[], Any], headers: dict[str, str] | None = None) -> Any:
        """A console page (bytes), a redirect (a str), or the Page that says otherwise;
        ``headers`` go with any of them."""
        more = headers or {}

        def answer(out: Any) -> Reply:
            if isinstance(out, str):
                return self._page(b"", 303, {"Location": out, **more})
            return self._page(out, headers=more)

        def refused(f: Failure) -> Reply:
            f.trap(Page)
            p = f.value
            if p.location:
                return self._page(b"", p.status, {"Location": p.location, **more})
            return self._page(self.web.layout(None, "Refused", f"<p class='err'>{html_escape(p.text)}</p>"),
                              p.status, more)
        return defer.maybeDeferred(make).addCallbacks(answer, refused)

    def ui_root(self, request: Request, who: Principal | None) -> Any:
        return self._ui(request, lambda: "/ui/sessions")

    def ui_style(self, request: Request, who: Principal | None) -> Reply:
        return Reply(STYLE, content_type="text/css", headers=UI_HEADERS)

    def ui_login_page(self, request: Request, who: Principal | None) -> Any:
        return self._ui(request, lambda: self.web.login_page(_arg(request, "error")))

    def ui_login(self, request: Request, who: Principal | None) -> Any:
        token = request_args(request).get("token", "")
        try:
            sid = self.web.sign_in(token)
        except Page as p:
            return self._page(self.web.login_page(p.text), 401)
        return self._signed_in(request, sid)

    def ui_logout(self, request: Request, who: Principal | None) -> Any:
        def out() -> str:
            self.web.sign_out(request)
            return "/ui/login"
        return self._ui(request, out, {"Set-Cookie": f"{COOKIE}=; Max-Age=0; HttpOnly; SameSite=Lax; Path=/ui"})

    def ui_oidc_start(self, request: Request, who: Principal | None) -> Any:
        return self._ui(request, self.web.oidc_start)

    def ui_oidc_callback(self, request: Request, who: Principal | None) -> Any:
        code, state = _arg(request, "code") or "", _arg(request, "state") or ""
        if _arg(request, "error"):
            return self._page(self.web.login_page(f"the identity provider said: {_arg(request, 'error')}"), 401)
        d = defer.maybeDeferred(self.web.oidc_callback, code, state)
        return d.addCallbacks(lambda sid: self._signed_in(request, sid),
                              lambda f: self._ui(request, lambda: f))

    def _signed_in(self, request: Request, sid: str) -> Reply:
        secure = "; Secure" if request.isSecure() else ""
        return self._page(b"", 303, {"Location": "/ui/sessions",
                                     "Set-Cookie": f"{COOKIE}={sid}; HttpOnly; SameSite=Lax; Path=/ui{secure}"})

    def ui_sessions(self, request: Request, who: Principal | None) -> Any:
        args = request_args(request)
        return self._ui(request, lambda: self.web.sessions_page(self.web.session(request), args))

    def ui_replay(self, request: Request, who: Principal | None, sid: str) -> Any:
        return self._ui(request, lambda: self.web.replay_page(self.web.session(request), sid))

    def ui_export(self, request: Request, who: Principal | None, sid: str) -> Any:
        self_check = self.web.session  # signed in, or the redirect

        def body() -> Any:
            self_check(request)
            return self.web.export(sid)
        d = defer.maybeDeferred(body)
        return d.addCallbacks(
            lambda data: Reply(data, content_type="application/x-ndjson", headers={
                **UI_HEADERS, "Content-Disposition": f'attachment; filename="session-{sid}.jsonl"'}),
            lambda f: self._ui(request, lambda: f))

    def ui_tail(self, request: Request, who: Principal | None) -> Any:
        args = request_args(request)
        return self._ui(request, lambda: self.web.tail_page(self.web.session(request), args),
                        {"Content-Security-Policy": TAIL_CSP})

    def ui_overview(self, request: Request, who: Principal | None) -> Any:
        return self._ui(request, lambda: self.web.overview_page(self.web.session(request)),
                        {"Content-Security-Policy": TAIL_CSP})

    def ui_overview_data(self, request: Request, who: Principal | None) -> Any:
        try:
            s = self.web.session(request)
        except Page:
            return Reply({"error": "unauthorized"}, 401, headers=UI_HEADERS)
        return Reply(self.web.overview_data(s), headers=UI_HEADERS)

    def ui_script(self, request: Request, who: Principal | None) -> Reply:
        return Reply(SCRIPT, content_type="text/javascript", headers=UI_HEADERS)

    def ui_events(self, request: Request, who: Principal | None) -> Any:
        args = request_args(request)
        try:
            s = self.web.session(request)
        except Page:
            return Reply(b"", 401, "text/plain", headers=UI_HEADERS)
        return Reply(None, content_type="text/event-stream", headers=UI_HEADERS,
                     stream=lambda req: self.web.follow(req, s, args))

    def ui_report(self, request: Request, who: Principal | None) -> Any:
        args = request_args(request)
        return self._ui(request, lambda: self.web.report(self.web.session(request), args),
                        {"Content-Security-Policy": REPORT_CSP})

    def ui_kill(self, request: Request, who: Principal | None, sid: str) -> Any:
        return self._ui(request, lambda: self.web.kill(request, sid))

    def ui_reviews(self, request: Request, who: Principal | None) -> Any:
        return self._ui(request, lambda: self.web.reviews_page(self.web.session(request), _arg(request, "error")))

    def ui_approve(self, request: Request, who: Principal | None, rid: str) -> Any:
        return self._ui(request, lambda: self.web.decide(request, rid, True))

    def ui_deny(self, request: Request, who: Principal | None, rid: str) -> Any:
        return self._ui(request, lambda: self.web.decide(request, rid, False))

    def ui_revoke(self, request: Request, who: Principal | None, gid: str) -> Any:
        return self._ui(request, lambda: self.web.revoke(request, gid))

    # --- MCP (hoopd.mcp.server) -----------------------------------------------------------

    def _mcp(self, who: Principal) -> tuple[Any, Any]:
        endpoint = self.plane.mcp
        if endpoint is None:
            raise ApiError(404, "not_found", "the MCP endpoint is off ([mcp] enabled = false)")
        return endpoint, self.plane.identity_of(who)

    def mcp_post(self, request: Request, who: Principal) -> Any:
        endpoint, identity = self._mcp(who)
        raw = request.content.read(MAX_BODY + 1) if request.content else b""
        try:
            body = json.loads(raw)
        except ValueError:
            return Reply({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}}, 400)
        sid = (request.getHeader("mcp-session-id") or "") or None
        stream = ("text/event-stream" in (request.getHeader("accept") or "") and isinstance(body, dict)
                  and body.get("method") == "tools/call")
        if not stream:
            d = endpoint.post(identity, sid, body, None)
            return d.addCallback(lambda a: Reply(a.body if a.body is not None else b"", a.status, headers=a.headers))

        def events(req: Request) -> None:
            def send(msg: dict[str, Any]) -> None:
                if not req.finished and not req._disconnected:
                    req.write(b"event: message\ndata: " + json.dumps(msg).encode() + b"\n\n")
            d = endpoint.post(identity, sid, body, send)

            def done(a: Any) -> None:
                if a.body is not None:
                    send(a.body)
                if not req.finished and not req._disconnected:
                    req.finish()
            d.addCallback(done)
        return Reply(None, content_type="text/event-stream", stream=events)

    def mcp_delete(self, request: Request, who: Principal) -> Reply:
        endpoint, identity = self._mcp(who)
        status = endpoint.delete(identity, request.getHeader("mcp-session-id"))
        return Reply(b"", status)

    def request_grant(self, request: Request, who: Principal) -> Reply:
        body = _body(request)
        conn, level, reason, duration = (body.get("connection"), body.get("level"), body.get("reason", ""),
                                         body.get("duration"))
        if not all(isinstance(x, str) for x in (conn, level, reason)) or len(reason) > 500:
            raise ApiError(400, "bad_parameter", "connection, level and reason (at most 500 characters) are strings")
        if isinstance(duration, str):
            try:
                duration = parse_duration(duration)
            except ValueError as e:
                raise ApiError(400, "bad_parameter", f"duration: {e}") from None
        if not isinstance(duration, (int, float)) or isinstance(duration, bool):
            raise ApiError(400, "bad_parameter", 'duration is seconds or a duration like "30m"')
        return self._reviewed(lambda: self.plane.request_grant(who.user, conn, level, float(duration), reason))

    def approve_grant(self, request: Request, who: Principal, gid: str) -> Reply:
        return self._grant(request, who, gid, "approve", "comment")

    def deny_grant(self, request: Request, who: Principal, gid: str) -> Reply:
        return self._grant(request, who, gid, "deny", "reason")

    def revoke_grant(self, request: Request, who: Principal, gid: str) -> Reply:
        return self._grant(request, who, gid, "revoke", "reason")

    def _grant(self, request: Request, who: Principal, gid: str, action: str, key: str) -> Reply:
        text = self._text(request, key, required=action != "approve")
        reviewer = self.plane.reviewer(who.name, who.user, who.groups)
        return self._reviewed(lambda: self.plane.decide_grant(gid, reviewer, action, text))

    def reload(self, request: Request, who: Principal) -> Reply:
        err = self.plane.reload(who.name)
        if err is not None:
            raise ApiError(422, "invalid_config", f"config not reloaded, the running one stays: {err}")
        return Reply({"reloaded": True})

    def config(self, request: Request, who: Principal) -> Reply:
        return Reply(self.plane.config_summary())

    def stats(self, request: Request, who: Principal) -> Reply:
        return Reply(self.plane.stats())


def _static(name: str, content_type: str) -> Callable[..., Reply]:
    """A handler for one of the console's static files (read once)."""
    body = (STATIC / name).read_bytes()
    return lambda api, request, who: Reply(body, content_type=content_type, headers=UI_HEADERS)


ROUTES = (
    Route("GET", ("healthz",), "health", ControlApi.healthz),
    Route("GET", ("readyz",), "health", ControlApi.readyz),
    Route("GET", ("metrics",), "metrics", ControlApi.metrics),
    Route("GET", ("api", "v1", "openapi.json"), "public", ControlApi.openapi),
    Route("GET", ("api", "v1", "sessions"), "viewer", ControlApi.list_sessions),
    Route("GET", ("api", "v1", "sessions", "{id}"), "viewer", ControlApi.get_session),
    Route("POST", ("api", "v1", "sessions", "{id}", "kill"), "admin", ControlApi.kill),
    Route("POST", ("api", "v1", "reload"), "admin", ControlApi.reload),
    Route("GET", ("api", "v1", "reviews"), "viewer", ControlApi.list_reviews),
    Route("GET", ("api", "v1", "reviews", "{id}"), "viewer", ControlApi.get_review),
    Route("POST", ("api", "v1", "reviews", "{id}", "approve"), "viewer", ControlApi.approve_review),
    Route("POST", ("api", "v1", "reviews", "{id}", "deny"), "viewer", ControlApi.deny_review),
    Route("GET", ("ui",), "public", ControlApi.ui_root),
    Route("GET", ("ui", "style.css"), "public", ControlApi.ui_style),
    Route("GET", ("ui", "login"), "public", ControlApi.ui_login_page),
    Route("POST", ("ui", "login"), "public", ControlApi.ui_login),
    Route("POST", ("ui", "logout"), "public", ControlApi.ui_logout),
    Route("GET", ("ui", "oidc", "start"), "public", ControlApi.ui_oidc_start),
    Route("GET", ("ui", "oidc", "callback"), "public", ControlApi.ui_oidc_callback),
    Route("GET", ("ui", "sessions"), "public", ControlApi.ui_sessions),
    Route("GET", ("ui", "sessions", "{id}"), "public", ControlApi.ui_replay),
    Route("GET", ("ui", "sessions", "{id}", "export"), "public", ControlApi.ui_export),
    Route("POST", ("ui", "sessions", "{id}", "kill"), "public", ControlApi.ui_kill),
    Route("GET", ("ui", "tail"), "public", ControlApi.ui_tail),
    Route("GET", ("ui", "tail", "events"), "public", ControlApi.ui_events),
    Route("GET", ("ui", "console.js"), "public", ControlApi.ui_script),
    Route("GET", ("ui", "overview"), "public", ControlApi.ui_overview),
    Route("GET", ("ui", "overview", "data"), "public", ControlApi.ui_overview_data),
    Route("GET", ("ui", "overview.js"), "public", _static("overview.js", "text/javascript")),
    Route("GET", ("ui", "uplot.js"), "public", _static("uplot.min.js", "text/javascript")),
    Route("GET", ("ui", "uplot.css"), "public", _static("uplot.min.css", "text/css")),
    Route("GET", ("ui", "report"), "public", ControlApi.ui_report),
    Route("GET", ("ui", "reviews"), "public", ControlApi.ui_reviews),
    Route("POST", ("ui", "reviews", "{id}", "approve"), "public", ControlApi.ui_approve),
    Route("POST", ("ui", "reviews", "{id}", "deny"), "public", ControlApi.ui_deny),
    Route("POST", ("ui", "grants", "{id}", "revoke"), "public", ControlApi.ui_revoke),
    Route("POST", ("mcp",), "identity", ControlApi.mcp_post),
    Route("DELETE", ("mcp",), "identity", ControlApi.mcp_delete),
    Route("GET", ("api", "v1", "grants"), "viewer", ControlApi.list_grants),
    Route("POST", ("api", "v1", "grants"), "viewer", ControlApi.request_grant),
    Route("POST", ("api", "v1", "grants", "{id}", "approve"), "viewer", ControlApi.approve_grant),
    Route("POST", ("api", "v1", "grants", "{id}", "deny"), "viewer", ControlApi.deny_grant),
    Route("POST", ("api", "v1", "grants", "{id}", "revoke"), "viewer", ControlApi.revoke_grant),
    Route("GET", ("api", "v1", "config"), "viewer", ControlApi.config),
    Route("GET", ("api", "v1", "stats"), "viewer", ControlApi.stats),
)


class ControlResource(Resource):
    isLeaf = True

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__()
        self.plane = plane
        self.api = ControlApi(plane)

    def _route(self, method: str, segments: list[str]) -> tuple[Route, list[str]]:
        found = [(r, p) for r in ROUTES if (p := r.match(segments)) is not None]
        if not found:
            raise ApiError(404, "not_found", "no such path")
        for route, params in found:
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, params
        raise ApiError(405, "method_not_allowed", f"{method} is not allowed here",
                       {"Allow": ", ".join(sorted({r.method for r, _ in found}))})

    def admit(self, method: bytes, path: bytes, headers: Headers, length: int | None) -> Any:
        """Whether a request may go on, from its head alone (its body is not read yet).

        Raises ApiError (404, 405) or returns a Deferred firing with the caller (a Principal,
        None on an open path) or failing with ApiError (401, 403, then 413). ``length`` is the
        Content-Length, None for a chunked body (capped while it is read)."""
        route, _ = self._route(method.decode("ascii", "replace"), _segments(path))

        def allowed(who: Principal | None) -> Principal | None:
            if who is not None and route.access == "identity":
                if who.user is None:
                    raise ApiError(403, "forbidden", f"{who.name} is not bound to a user (give the token a user)")
            elif who is not None:
                who.require("admin" if route.access == "admin" else "viewer")
            if length is not None and length > MAX_BODY:  # told only to callers who may call
                raise ApiError(413, "too_large", f"request body of {length} bytes is over the {MAX_BODY} byte limit")
            return who
        if self._is_open(route.access):
            return defer.maybeDeferred(allowed, None)
        d = authenticate(self.plane.config.control, self.plane.token_verifier,
                         headers.getRawHeaders(b"authorization", [None])[0], anyone=route.access == "identity")
        return d.addCallback(allowed)

    def render(self, request: Request) -> Any:
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)  # the client left: nothing to answer
        d = defer.maybeDeferred(self._dispatch, request)
        d.addCallbacks(lambda reply: gone or self._send(request, reply), lambda f: gone or self._failed(request, f))
        return NOT_DONE_YET

    def _is_open(self, access: str) -> bool:
        c = self.plane.config.control
        return access == "public" or (access == "health" and c.open_health) or (access == "metrics" and c.open_metrics)

    @defer.inlineCallbacks
    def _dispatch(self, request: Request) -> Any:
        route, params = self._route(request.method.decode("ascii", "replace"),
                                    [s.decode("utf-8", "replace") for s in request.postpath if s])
        if isinstance(request, ControlRequest):  # the channel checked the caller from the headers
            who = yield request.caller()
        else:  # served by another Site (e.g. treq.testing.StubTreq): check it here
            who = yield self.admit(request.method, request.uri, request.requestHeaders, None)
        request.hoopd_who = who.name if who else "-"
        return (yield route.handler(self.api, request, who, *params))

    def _send(self, request: Request, reply: Reply) -> None:
        request.setResponseCode(reply.status)
        request.setHeader(b"Content-Type", reply.content_type.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        for name, value in reply.headers.items():
            request.setHeader(name.encode(), value.encode())
        if reply.stream is not None:
            reply.stream(request)
            return
        body = reply.body if isinstance(reply.body, bytes) else (json.dumps(reply.body) + "\n").encode()
        request.write(body)
        request.finish()

    def _failed(self, request: Request, f: Failure) -> None:
        e = _api_error(f)
        for name, value in e.headers.items():
            request.setHeader(name.encode(), value.encode())
        self._send(request, Reply({"error": e.code, "message": e.message}, e.status))


def _api_error(f: Failure) -> ApiError:
    """The error to answer; anything but an ApiError is logged and answered 500."""
    if f.check(ApiError):
        return f.value
    log.failure("control port: a request failed", failure=f)
    return ApiError(500, "internal", "internal error (details in the gateway log)")


class ControlRequest(Request):
    """A request whose caller the channel checks from the headers, before the body is read."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._outcome: Any = _PENDING  # Principal | None | Failure once checked
        self._waiting: list[defer.Deferred[Principal | None]] = []
        self._body_bytes = 0

    def admitted(self, outcome: Principal | None | Failure) -> bool:
        """The channel's verdict; True when the request is already waiting to be answered."""
        self._outcome = outcome
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(outcome) if isinstance(outcome, Failure) else d.callback(outcome)
        return bool(waiting)

    def caller(self) -> defer.Deferred[Principal | None]:
        """Fires with the verified caller (None on an open path), or fails with its ApiError."""
        if self._outcome is _PENDING:
            d: defer.Deferred[Principal | None] = defer.Deferred()
            self._waiting.append(d)
            return d
        return defer.fail(self._outcome) if isinstance(self._outcome, Failure) else defer.succeed(self._outcome)

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()  # at most MAX_BODY bytes: never a temporary file

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY:
            channel.refuse(ApiError(413, "too_large", f"request body over {MAX_BODY} bytes"))
        else:
            self.content.write(data)


class ControlChannel(HTTPChannel):
    """HTTP/1.1 for the control port: checks each request's head before its body (see the
    module docstring), times requests out, and answers 503 beyond the connection cap."""

    site: "ControlSite"

    def __init__(self) -> None:
        super().__init__()
        self.refused = False
        self._deadline: Any = None  # the current request's arrival deadline
        self._linger: Any = None
        self._drained = 0
        self._held = False  # reading paused while a token is verified

    def connectionMade(self) -> None:
        super().connectionMade()
        cap = self.site.plane.config.control.http_max_connections
        if len(self.site.channels) >= cap:
            log.info("control port: {peer} refused, {n} connections already open (control.http_max_connections)",
                     peer=self._peer(), n=len(self.site.channels))
            self.refuse(ApiError(503, "busy", f"the control port already has {cap} connections open; retry later"))
            return
        self.site.channels.add(self)
        self._arm()

    def connectionLost(self, reason: Failure) -> None:
        self.site.channels.discard(self)
        for call in (self._deadline, self._linger):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._linger = None
        super().connectionLost(reason)

    def _peer(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "?"))

    def _arm(self) -> None:
        if self._deadline is None and not self.refused:
            timeout = self.site.plane.config.control.http_request_timeout
            self._deadline = self.callLater(timeout, self._too_slow, timeout)

    def _too_slow(self, timeout: float) -> None:
        self._deadline = None
        log.info("control port: {peer} did not send a whole request within {t:g} s; closed", peer=self._peer(),
                 t=timeout)
        self.refuse(ApiError(408, "request_timeout", f"the request did not arrive within {timeout:g} s"))

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            self._drain(data)
            return
        if not self._handlingRequest:
            self._arm()
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if not self.refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self.refused:
            super().rawDataReceived(data)

    def allHeadersReceived(self) -> None:
        req = self.requests[-1]
        d = defer.maybeDeferred(self.site.resource.admit, self._command, self._path, req.requestHeaders, self.length)
        d.addBoth(self._admitted, req)
        if self.refused:
            return
        super().allHeadersReceived()
        if req._outcome is _PENDING:  # an OIDC token is being verified: read no body until it is
            self._held = True
            self.transport.pauseProducing()

    def _admitted(self, outcome: Principal | None | Failure, req: ControlRequest) -> None:
        answered = req.admitted(outcome)
        if isinstance(outcome, Failure):
            if not answered:
                self.refuse(_api_error(outcome))
        elif self._held:
            self._held = False
            self.transport.resumeProducing()

    def allContentReceived(self) -> None:
        if self.refused:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().allContentReceived()

    def refuse(self, e: ApiError) -> None:
        """Answer ``e`` at once, without reading the request further, and close."""
        if self.refused:
            return
        self.refused = True
        self.setTimeout(None)
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        log.debug("control port: {peer} refused before its body: {status} {code}", peer=self._peer(),
                  status=e.status, code=e.code)
        body = (json.dumps({"error": e.code, "message": e.message}) + "\n").encode()
        head = {"Content-Type": "application/json", "Content-Length": str(len(body)), "Cache-Control": "no-store",
                "Connection": "close", **e.headers}
        reason = RESPONSES.get(e.status, b"Error").decode()
        self.transport.write(f"HTTP/1.1 {e.status} {reason}\r\n".encode()
                             + "".join(f"{k}: {v}\r\n" for k, v in head.items()).encode() + b"\r\n" + body)
        if self._held:
            self._held = False
            self.transport.resumeProducing()  # drain what the client still sends (below)
        if ISSLTransport.providedBy(self.transport) or not hasattr(self.transport, "loseWriteConnection"):
            self.loseConnection()
            return
        # Half-close and drain for a moment: closing with unread input would send a RST,
        # and the client could lose the answer before reading it.
        self.transport.loseWriteConnection()
        self._linger = self.callLater(LINGER_SECONDS, self.transport.abortConnection)

    def _drain(self, data: bytes) -> None:
        self._drained += len(data)
        if self._drained > LINGER_BYTES:
            self.transport.abortConnection()


class ControlSite(Site):
    """The control port's Site: ControlChannel connections, requests logged to the hoopd log
    (at debug) instead of an access-log file."""

    noisy = False
    protocol = ControlChannel  # HTTP/1.1 only (the control port offers no HTTP/2)
    requestFactory = ControlRequest

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__(ControlResource(plane))
        self.plane = plane
        self.channels: set[ControlChannel] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.timeOut = self.plane.config.control.http_idle_timeout  # read live: a reload applies
        return channel

    def log(self, request: Request) -> None:
        log.debug("http {peer} {method} {uri} -> {code} by {who}", peer=getattr(request.getClientAddress(), "host", "?"),
                  method=request.method.decode("ascii", "replace"), uri=_logged_uri(request.uri),
                  code=request.code, who=getattr(request, "hoopd_who", "-"))


def _logged_uri(uri: bytes) -> str:
    """A request's URI for the log: the OIDC callback's code and state left out."""
    text = uri.decode("utf-8", "replace")
    return text.split("?", 1)[0] + "?(redacted)" if text.startswith("/ui/oidc/callback?") else text
