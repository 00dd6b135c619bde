"""The HTTP control port: health, readiness, Prometheus metrics and the JSON API.

One leaf resource routes every path through a small table (method, path pattern, who may
call it, handler), so unknown paths and wrong methods get JSON errors like everything
else, and the table is what the OpenAPI document is tested against.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from hoopd.control.auth import ApiError, Principal, authenticate
from hoopd.control.metrics import CONTENT_TYPE
from hoopd.control.openapi import DOCUMENT
from hoopd.control.plane import ControlPlane
from hoopd.log import get_logger

log = get_logger("hoopd.control.http")
MAX_BODY = 64 * 1024
_ACTIVE = {"true": True, "false": False, "all": None}


@dataclass(frozen=True)
class Reply:
    body: Any  # JSON-able, or bytes sent as they are
    status: int = 200
    content_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str
    path: tuple[str, ...]  # segments; "{id}" matches one segment
    access: str  # health | metrics | public | viewer | admin
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

    def healthz(self, request: Request, who: Principal | None) -> Reply:
        return Reply({"status": "ok", "node": self.plane.config.gateway.node})

    @defer.inlineCallbacks
    def readyz(self, request: Request, who: Principal | None) -> Any:
        ready, checks = yield self.plane.readiness()
        return Reply({"ready": ready, "checks": checks}, 200 if ready else 503)

    def metrics(self, request: Request, who: Principal | None) -> Reply:
        return Reply(self.plane.metrics.render(), content_type=CONTENT_TYPE)

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

    def reload(self, request: Request, who: Principal) -> Reply:
        err = self.plane.reload(who.name)
        if err is not None:
            raise ApiError(422, "invalid_config", f"config not reloaded, the running one stays: {err}")
        return Reply({"reloaded": True})

    def config(self, request: Request, who: Principal) -> Reply:
        return Reply(self.plane.config_summary())

    def stats(self, request: Request, who: Principal) -> Reply:
        return Reply(self.plane.stats())


ROUTES = (
    Route("GET", ("healthz",), "health", ControlApi.healthz),
    Route("GET", ("readyz",), "health", ControlApi.readyz),
    Route("GET", ("metrics",), "metrics", ControlApi.metrics),
    Route("GET", ("api", "v1", "openapi.json"), "public", ControlApi.openapi),
    Route("GET", ("api", "v1", "sessions"), "viewer", ControlApi.list_sessions),
    Route("GET", ("api", "v1", "sessions", "{id}"), "viewer", ControlApi.get_session),
    Route("POST", ("api", "v1", "sessions", "{id}", "kill"), "admin", ControlApi.kill),
    Route("POST", ("api", "v1", "reload"), "admin", ControlApi.reload),
    Route("GET", ("api", "v1", "config"), "viewer", ControlApi.config),
    Route("GET", ("api", "v1", "stats"), "viewer", ControlApi.stats),
)


class ControlResource(Resource):
    isLeaf = True

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__()
        self.plane = plane
        self.api = ControlApi(plane)

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
        method = request.method.decode("ascii", "replace")
        segments = [s.decode("utf-8", "replace") for s in request.postpath if s]
        found = [(r, p) for r in ROUTES if (p := r.match(segments)) is not None]
        if not found:
            raise ApiError(404, "not_found", "no such path")
        for route, params in found:
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                break
        else:
            request.setHeader(b"Allow", ", ".join(sorted({r.method for r, _ in found})).encode())
            raise ApiError(405, "method_not_allowed", f"{method} is not allowed here")
        who: Principal | None = None
        if not self._is_open(route.access):
            who = yield authenticate(self.plane.config.control, self.plane.token_verifier,
                                     request.getHeader(b"authorization"))
            who.require("admin" if route.access == "admin" else "viewer")
        request.hoopd_who = who.name if who else "-"
        return (yield route.handler(self.api, request, who, *params))

    def _send(self, request: Request, reply: Reply) -> None:
        body = reply.body if isinstance(reply.body, bytes) else (json.dumps(reply.body) + "\n").encode()
        request.setResponseCode(reply.status)
        request.setHeader(b"Content-Type", reply.content_type.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        request.write(body)
        request.finish()

    def _failed(self, request: Request, f: Failure) -> None:
        if f.check(ApiError):
            e = f.value
        else:
            log.failure("control API {method} {path} failed", failure=f, method=request.method, path=request.path)
            e = ApiError(500, "internal", "internal error (details in the gateway log)")
        if e.status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="hoopd"')
        self._send(request, Reply({"error": e.code, "message": e.message}, e.status))


class ControlSite(Site):
    """A Site that logs requests to the hoopd log (at debug) instead of an access-log file."""

    noisy = False

    def __init__(self, plane: ControlPlane) -> None:
        super().__init__(ControlResource(plane))

    def log(self, request: Request) -> None:
        log.debug("http {peer} {method} {uri} -> {code} by {who}", peer=getattr(request.getClientAddress(), "host", "?"),
                  method=request.method.decode("ascii", "replace"), uri=request.uri.decode("utf-8", "replace"),
                  code=request.code, who=getattr(request, "hoopd_who", "-"))
