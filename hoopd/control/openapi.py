"""The OpenAPI 3.1 document for the control port, served at ``/api/v1/openapi.json``."""
from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/responses/Error"}
_JSON = "application/json"


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _op(summary: str, op_id: str, ok: dict[str, Any], errors: tuple[int, ...] = (401, 403), *,
        secure: bool = True, more: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": op_id,
                          "responses": {"200": ok, **{str(c): _ERR for c in errors}, **(more or {})}, **extra}
    if not secure:
        op["security"] = []
    return op


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "session id"}
_RID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "request id"}
_SESSION_PROPS: dict[str, Any] = {
    "id": {"type": "string"}, "user": {"type": ["string", "null"]},
    "groups": {"type": "array", "items": {"type": "string"}}, "source": {"type": ["string", "null"]},
    "connection": {"type": ["string", "null"]}, "level": {"type": ["string", "null"]},
    "peer": {"type": "string"}, "tls": {"type": ["string", "null"]}, "protocol": {"type": "string"},
    "application_name": {"type": "string"}, "started": {"type": "number", "description": "epoch seconds"},
    "statements": {"type": "integer"}, "bytes_in": {"type": "integer"}, "bytes_out": {"type": "integer"},
    "transaction_status": {"type": "string", "enum": ["I", "T", "E"]},
    "grant": {"type": ["string", "null"], "description": "the access grant that gave the session its level"},
    "worker": {"type": "integer", "description": "the worker process serving it ([gateway] workers > 1)"},
    "node": {"type": "string", "description": "the node serving it, when it is another one ([state])"},
    "active": {"type": "boolean", "description": "live (true) or recently ended (false)"},
    "ended": {"type": "number", "description": "epoch seconds (ended sessions only)"},
    "end_reason": {"type": "string", "description": "ended sessions only"},
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "hoopd control API", "version": "1",
             "description": "Sessions, kill, reload and the redacted config of a hoopd gateway. "
                            "Bearer tokens come from [[control.tokens]] (role viewer or admin) or, when "
                            "configured, OIDC tokens of [control].admin_groups / viewer_groups."},
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/healthz": {"get": _op("The process is alive", "healthz", _ok("alive", _ref("Health")), (401,),
                                description="Open unless [control].open_health = false.")},
        "/readyz": {"get": _op("Listeners bound, journal writable, every upstream reachable", "readyz",
                               _ok("ready", _ref("Readiness")), (401,),
                               more={"503": _ok("not ready", _ref("Readiness"))})},
        "/metrics": {"get": _op("Prometheus metrics", "metrics",
                                {"description": "Prometheus text format",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}}, (401,),
                                description="Open when [control].open_metrics = true.")},
        "/api/v1/openapi.json": {"get": _op("This document", "openapi", _ok("OpenAPI 3.1", {"type": "object"}),
                                            (), secure=False)},
        "/api/v1/sessions": {"get": _op(
            "List sessions", "listSessions",
            _ok("sessions", {"type": "object", "required": ["sessions"],
                             "properties": {"sessions": {"type": "array", "items": _ref("Session")}}}),
            (400, 401, 403),
            parameters=[
                {"name": "user", "in": "query", "schema": {"type": "string"}},
                {"name": "connection", "in": "query", "schema": {"type": "string"}},
                {"name": "active", "in": "query", "schema": {"type": "string", "enum": ["true", "false", "all"],
                                                              "default": "true"},
                 "description": "live sessions (true), recently ended ones (false) or both (all)"},
            ])},
        "/api/v1/sessions/{id}": {"get": _op(
            "One session, with its journal events", "getSession",
            _ok("the session", {"allOf": [_ref("Session"), {"type": "object", "properties": {
                "events": {"type": ["array", "null"], "items": {"type": "object"},
                           "description": "journal records of the session; null without a journal"}}}]}),
            (401, 403, 404), parameters=[_ID])},
        "/api/v1/sessions/{id}/kill": {"post": _op(
            "Terminate a live session (57P01); needs the admin role", "killSession",
            _ok("killed", {"type": "object", "properties": {"killed": {"type": "string"},
                                                            "reason": {"type": "string"}}}),
            (400, 401, 403, 404), parameters=[_ID],
            requestBody={"required": False, "content": {_JSON: {"schema": {
                "type": "object", "properties": {"reason": {"type": "string"}}}}}})},
        "/api/v1/reload": {"post": _op(
            "Re-read the config file; needs the admin role", "reload",
            _ok("applied to new sessions", {"type": "object", "properties": {"reloaded": {"type": "boolean"}}}),
            (401, 403, 422))},
        "/api/v1/config": {"get": _op("The running config with every secret removed", "getConfig",
                                      _ok("config", {"type": "object"}))},
        "/api/v1/stats": {"get": _op("Counters at a glance", "getStats", _ok("stats", _ref("Stats")))},
        "/api/v1/reviews": {"get": _op(
            "Review requests: statements held until reviewers decide", "listReviews",
            _ok("requests", {"type": "object", "required": ["reviews"],
                             "properties": {"reviews": {"type": "array", "items": _ref("Review")}}}),
            (400, 401, 403),
            parameters=[{"name": "status", "in": "query", "schema": {"type": "string", "enum": [
                "pending", "approved", "denied", "expired", "withdrawn", "break_glass"]}}])},
        "/api/v1/reviews/{id}": {"get": _op("One review request", "getReview", _ok("the request", _ref("Review")),
                                            (401, 403, 404), parameters=[_RID])},
        "/api/v1/reviews/{id}/approve": {"post": _op(
            "Approve a held statement; the caller must be in the rule's reviewer groups", "approveReview",
            _ok("the request", _ref("Review")), (400, 401, 403, 404, 409), parameters=[_RID],
            requestBody={"required": False, "content": {_JSON: {"schema": {
                "type": "object", "properties": {"comment": {"type": "string"}}}}}})},
        "/api/v1/reviews/{id}/deny": {"post": _op(
            "Deny a held statement (the client gets 42501 with the reason)", "denyReview",
            _ok("the request", _ref("Review")), (400, 401, 403, 404, 409), parameters=[_RID],
            requestBody={"required": True, "content": {_JSON: {"schema": {
                "type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}}}})},
        "/mcp": {
            "post": _op("Model Context Protocol (Streamable HTTP, JSON-RPC 2.0): initialize, tools/list,"
                        " tools/call, ping; any identity with a user (an OIDC token, or an API token bound to one)",
                        "mcpMessage", _ok("a JSON-RPC response (application/json), or server-sent events for"
                                          " tools/call when the client accepts text/event-stream",
                                          {"type": "object"}), (400, 401, 403, 404),
                        more={"202": {"description": "a notification was accepted"}},
                        requestBody={"required": True, "content": {_JSON: {"schema": {"type": "object"}}}},
                        parameters=[{"name": "Mcp-Session-Id", "in": "header", "schema": {"type": "string"},
                                     "description": "from the initialize response; required afterwards"}]),
            "delete": _op("End an MCP session", "mcpEnd", {"description": "ended"}, (401, 403, 404),
                          parameters=[{"name": "Mcp-Session-Id", "in": "header", "required": True,
                                       "schema": {"type": "string"}}])},
        "/api/v1/grants": {
            "get": _op("Access grants", "listGrants",
                       _ok("grants", {"type": "object", "required": ["grants"],
                                      "properties": {"grants": {"type": "array", "items": _ref("Grant")}}}),
                       (400, 401, 403), parameters=[{"name": "status", "in": "query", "schema": {
                           "type": "string", "enum": ["pending", "active", "denied", "expired", "revoked"]}}]),
            "post": _op("Ask for a higher level on a connection for a while (as the caller's identity)",
                        "requestGrant", _ok("the pending grant", _ref("Grant")), (400, 401, 403, 404, 503),
                        requestBody={"required": True, "content": {_JSON: {"schema": {
                            "type": "object", "required": ["connection", "level", "duration", "reason"],
                            "properties": {"connection": {"type": "string"}, "level": {"type": "string"},
                                           "duration": {"type": ["number", "string"],
                                                        "description": 'seconds, or like "30m"'},
                                           "reason": {"type": "string"}}}}}})},
        **{f"/api/v1/grants/{{id}}/{action}": {"post": _op(
            text, f"{action}Grant", _ok("the grant", _ref("Grant")), (400, 401, 403, 404, 409, 503),
            parameters=[_RID], requestBody={"required": action != "approve", "content": {_JSON: {"schema": {
                "type": "object", "properties": {("comment" if action == "approve" else "reason"): {
                    "type": "string"}}}}}})}
           for action, text in (("approve", "Approve a grant; the caller must be in the connection's grant_reviewers"),
                                ("deny", "Deny a grant"),
                                ("revoke", "End an active grant; its live sessions end too"))},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {"Error": _ok("an error", _ref("Error"))},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string", "description": "short code"},
                                     "message": {"type": "string"}}},
            "Health": {"type": "object", "properties": {"status": {"type": "string"}}},
            "Readiness": {"type": "object", "required": ["ready", "checks"],
                          "properties": {"ready": {"type": "boolean"}, "checks": {"type": "object"}}},
            "Session": {"type": "object", "required": ["id", "active"], "properties": _SESSION_PROPS},
            "Grant": {"type": "object", "required": ["id", "status"], "properties": {
                "id": {"type": "string"}, "user": {"type": "string"}, "connection": {"type": "string"},
                "level": {"type": "string"}, "reason": {"type": "string"}, "duration": {"type": "number"},
                "status": {"type": "string"}, "requested": {"type": "number"},
                "decided": {"type": ["number", "null"]}, "decided_by": {"type": ["string", "null"]},
                "why": {"type": ["string", "null"]}, "expires": {"type": ["number", "null"]}}},
            "Review": {"type": "object", "required": ["id", "status", "statement"], "properties": {
                "id": {"type": "string"}, "status": {"type": "string"}, "session": {"type": "string"},
                "user": {"type": ["string", "null"]}, "connection": {"type": ["string", "null"]},
                "level": {"type": ["string", "null"]}, "statement": {"type": "string"}, "rule": {"type": "string"},
                "reviewers": {"type": "array", "items": {"type": "string"}},
                "allow_self_approval": {"type": "boolean"},
                "node": {"type": "string", "description": "the node holding it (several nodes, [state])"},
                "approvals": {"type": "array", "items": {"type": "object"}},
                "requested": {"type": "number"}, "expires": {"type": "number"},
                "decided": {"type": ["number", "null"]}, "decided_by": {"type": ["string", "null"]},
                "why": {"type": ["string", "null"]}}},
            "Stats": {"type": "object", "properties": {
                "node": {"type": "string"}, "uptime": {"type": "number"},
                "sessions_active": {"type": "integer"}, "sessions_total": {"type": "integer"},
                "statements": {"type": "integer"}, "bytes_in": {"type": "integer"},
                "bytes_out": {"type": "integer"},
                "login_failures": {"type": "object", "additionalProperties": {"type": "integer"}},
                "connections": {"type": "array", "items": {"type": "string"}}}},
        },
    },
}
