"""The MCP endpoint: Model Context Protocol over Streamable HTTP at ``/mcp`` on the
control port (JSON-RPC 2.0; ``initialize``, ``tools/list``, ``tools/call``, ``ping``).

The caller is the bearer token's identity (an OIDC token, or an API token bound to a
user: its ``[[users]]`` groups); there is no database credential anywhere near the
agent. ``initialize`` opens an MCP session (``Mcp-Session-Id``); every tool call that
touches a database runs as its own gateway session of that identity (hoopd.mcp.calls),
with ``application_name`` ``mcp:<client name>``, so policy denials come back as tool
errors with their SQLSTATE, masked columns come back masked, a review rule holds the
call (with ``Accept: text/event-stream`` the client hears the waiting notice at once
as a ``notifications/message``) and the journal records it like any session.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed

from hoopd.confkit import parse_duration
from hoopd.identity.base import Identity
from hoopd.log import get_logger
from hoopd.mcp.calls import Limits, Result, ToolError, run
from hoopd.mcp.tickets import Tickets
from hoopd.review.grants import session_level
from hoopd.review.requests import ReviewError

log = get_logger("hoopd.mcp")
PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05")  # newest first
MAX_SESSIONS = 1000
_CONN = {"connection": {"type": "string", "description": "a connection name (see list_connections)"}}


def _tool(name: str, description: str, props: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    return {"name": name, "description": description,
            "inputSchema": {"type": "object", "properties": props, "required": list(required),
                            "additionalProperties": False}}


TOOLS = [
    _tool("list_connections", "The database connections you may use, with your access level on each.", {}, ()),
    _tool("list_schemas", "The schemas of a connection's database.", _CONN, ("connection",)),
    _tool("list_tables", "Tables and views of a schema.",
          {**_CONN, "schema": {"type": "string", "default": "public"}}, ("connection",)),
    _tool("describe_table", "The columns of a table: name, type, nullable, default.",
          {**_CONN, "table": {"type": "string"}, "schema": {"type": "string", "default": "public"}},
          ("connection", "table")),
    _tool("query", "Run one SQL statement (with $1, $2 ... parameters) through the gateway's policy, masking and"
          " review; returns rows as JSON.",
          {**_CONN, "sql": {"type": "string"},
           "params": {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}},
           "max_rows": {"type": "integer", "minimum": 1}}, ("connection", "sql")),
    _tool("explain", "The query plan of a statement (EXPLAIN, not run).", {**_CONN, "sql": {"type": "string"}},
          ("connection", "sql")),
    _tool("request_access", "Ask reviewers for a higher access level on a connection for a while.",
          {**_CONN, "level": {"type": "string", "enum": ["read_only", "read_write", "admin"]},
           "duration": {"type": "string", "description": 'e.g. "30m"'}, "reason": {"type": "string"}},
          ("connection", "level", "duration", "reason")),
]


class RpcError(Exception):
    def __init__(self, code: int, message: str, http: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.http = code, message, http


@dataclass
class McpSession:
    id: str
    identity: Identity
    client: str
    version: str
    calls: int = 0  # in flight


@dataclass
class Answer:
    """What the HTTP layer sends: a JSON-RPC message (or none: 202), headers, and for a
    streamed call the notices to send before it (``events`` fills as the call goes)."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


class McpEndpoint:
    def __init__(self, reactor: Any, config: Callable[[], Any], port: Callable[[], int | None], tickets: Tickets,
                 grants: Any) -> None:
        self.reactor = reactor
        self.config = config  # () -> the gateway's Config (reload-safe)
        self.port = port  # () -> the loopback listener's port
        self.tickets = tickets
        self.grants = grants
        self.sessions: dict[str, McpSession] = {}

    # --- HTTP ---------------------------------------------------------------------------

    def post(self, identity: Identity, session_id: str | None, body: Any,
             notify: Callable[[dict[str, Any]], None] | None) -> "Deferred[Answer]":
        """One JSON-RPC message from the client; ``notify`` sends a notification on the
        response stream (None: the client takes JSON only)."""
        try:
            msg = _message(body)
        except RpcError as e:
            return succeed(Answer(e.http, _error(None, e)))
        rid, method = msg.get("id"), msg["method"]
        if method == "initialize":
            return succeed(self._initialize(identity, rid, msg.get("params") or {}))
        session = self.sessions.get(session_id or "")
        if session is None:
            return succeed(Answer(404 if session_id else 400, _error(rid, RpcError(
                -32001, "unknown or ended MCP session: initialize first" if session_id else
                "Mcp-Session-Id header required (initialize first)"))))
        if session.identity.name != identity.name:
            return succeed(Answer(403, _error(rid, RpcError(-32001, "this MCP session belongs to another identity"))))
        if "id" not in msg:  # a notification (notifications/initialized, cancelled ...)
            return succeed(Answer(202))
        d = self._call(session, method, msg.get("params") or {}, notify)
        d.addCallback(lambda result: Answer(200, {"jsonrpc": "2.0", "id": rid, "result": result}))
        d.addErrback(lambda f: Answer(200, _error(rid, f.value if f.check(RpcError) else _internal(f))))
        return d

    def delete(self, identity: Identity, session_id: str | None) -> int:
        s = self.sessions.get(session_id or "")
        if s is None or s.identity.name != identity.name:
            return 404
        del self.sessions[s.id]
        return 200

    # --- JSON-RPC -----------------------------------------------------------------------

    def _initialize(self, identity: Identity, rid: Any, params: dict[str, Any]) -> Answer:
        asked = params.get("protocolVersion")
        version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        raw = (params.get("clientInfo") or {}).get("name") if isinstance(params.get("clientInfo"), dict) else None
        client = "".join(ch for ch in str(raw or "client") if ch.isalnum() or ch in "._-@ ")[:64] or "client"
        if len(self.sessions) >= MAX_SESSIONS:  # the oldest goes
            del self.sessions[next(iter(self.sessions))]
        s = McpSession(os.urandom(16).hex(), identity, client, version)
        self.sessions[s.id] = s
        result = {"protocolVersion": version, "capabilities": {"tools": {"listChanged": False}},
                  "serverInfo": {"name": "hoopd", "version": _version()},
                  "instructions": "SQL runs through hoopd: policy, masking, reviews and the audit journal apply."}
        return Answer(200, {"jsonrpc": "2.0", "id": rid, "result": result}, {"Mcp-Session-Id": s.id})

    def _call(self, s: McpSession, method: str, params: dict[str, Any],
              notify: Callable[[dict[str, Any]], None] | None) -> "Deferred[Any]":
        if method == "ping":
            return succeed({})
        if method == "tools/list":
            return succeed({"tools": TOOLS})
        if method != "tools/call":
            return fail(RpcError(-32601, f"method not found: {method}"))
        name, args = params.get("name"), params.get("arguments") or {}
        cap = self.config().mcp.max_calls
        if sum(x.calls for x in self.sessions.values() if x.identity.name == s.identity.name) >= cap:
            return succeed(_tool_error("53300", f"hoopd: {cap} calls of yours are running ([mcp] max_calls)"))
        s.calls += 1
        d = self._tool(s, name, args, notify)
        d.addErrback(lambda f: _tool_error(f.value.sqlstate, f.value.message) if f.check(ToolError) else f)

        def done(out: Any) -> Any:
            s.calls -= 1
            return out
        return d.addBoth(done)

    # --- tools --------------------------------------------------------------------------

    @inlineCallbacks
    def _tool(self, s: McpSession, name: Any, args: dict[str, Any],
              notify: Callable[[dict[str, Any]], None] | None) -> Any:
        if not isinstance(args, dict):
            raise RpcError(-32602, "arguments must be an object")
        tool = next((t for t in TOOLS if t["name"] == name), None)
        if tool is None:
            raise RpcError(-32602, f"unknown tool: {name}")
        schema = tool["inputSchema"]
        missing = [k for k in schema["required"] if k not in args]
        extra = [k for k in args if k not in schema["properties"]]
        if missing or extra:
            raise RpcError(-32602, f"{name}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(extra)}"] if extra else [])))
        if name == "list_connections":
            return _structured({"connections": self._connections(s.identity)})
        if name == "request_access":
            return _structured(self._request_access(s.identity, args))
        conn = _str(args, "connection")
        if name == "list_schemas":
            res = yield self._sql(s, conn, "select schema_name from information_schema.schemata where schema_name"
                                  " not like 'pg\\_%' and schema_name <> 'information_schema' order by 1", [], notify)
            return _structured({"schemas": [r[0] for r in res.rows]})
        if name == "list_tables":
            res = yield self._sql(s, conn, "select table_name, table_type from information_schema.tables"
                                  " where table_schema = $1 order by 1", [args.get("schema", "public")], notify)
            return _structured({"tables": [{"name": r[0], "type": r[1]} for r in res.rows]})
        if name == "describe_table":
            res = yield self._sql(s, conn, "select column_name, data_type, is_nullable = 'YES', column_default"
                                  " from information_schema.columns where table_schema = $1 and table_name = $2"
                                  " order by ordinal_position", [args.get("schema", "public"), _str(args, "table")],
                                  notify)
            if not res.rows:
                return _tool_error("42P01", f"no table {args.get('schema', 'public')}.{args['table']} that you may see")
            return _structured({"columns": [{"name": r[0], "type": r[1], "nullable": r[2], "default": r[3]}
                                            for r in res.rows]})
        if name == "explain":
            res = yield self._sql(s, conn, "EXPLAIN (FORMAT JSON) " + _str(args, "sql"), [], notify)
            return _structured({"plan": res.rows[0][0] if res.rows else None, "notices": res.notices})
        params = args.get("params") or []
        if not isinstance(params, list) or not all(isinstance(p, (str, int, float, bool)) or p is None for p in params):
            raise RpcError(-32602, "params must be an array of strings, numbers, booleans or nulls")
        max_rows = args.get("max_rows")
        res = yield self._sql(s, conn, _str(args, "sql"), [_param(p) for p in params], notify, max_rows)
        return _structured(res.summary())

    def _sql(self, s: McpSession, connection: str, sql: str, params: list[str | None],
             notify: Callable[[dict[str, Any]], None] | None, max_rows: Any = None) -> "Deferred[Result]":
        if "\0" in sql or "\0" in connection:
            raise ToolError("22021", "hoopd: a statement or connection name cannot contain NUL")
        cfg = self.config().mcp
        port = self.port()
        if port is None:
            raise ToolError("08006", "hoopd: the gateway's MCP listener is not up")
        rows = cfg.max_rows if not isinstance(max_rows, int) or max_rows < 1 else min(max_rows, cfg.max_rows)

        def notice(text: str) -> None:
            if notify is not None:
                notify({"jsonrpc": "2.0", "method": "notifications/message",
                        "params": {"level": "info", "logger": "hoopd", "data": text}})
        return run(self.reactor, port, self.tickets, s.identity, connection, f"mcp:{s.client}", sql, params,
                   Limits(rows, cfg.max_result_bytes, cfg.timeout), notice)

    def _connections(self, identity: Identity) -> list[dict[str, Any]]:
        out = []
        for conn in sorted(self.config().connections.values(), key=lambda c: c.name):
            level, _ = session_level(conn, identity, self.grants)
            if level is not None:
                out.append({"name": conn.name, "level": level, "database": conn.database})
        return out

    def _request_access(self, identity: Identity, args: dict[str, Any]) -> dict[str, Any]:
        if self.grants is None:
            raise ToolError("55000", "hoopd: access grants are off on this gateway")
        try:
            duration = parse_duration(_str(args, "duration"))
            g = self.grants.request(identity.name, _str(args, "connection"), _str(args, "level"), duration,
                                    _str(args, "reason"))
        except ValueError as e:
            raise RpcError(-32602, f"duration: {e}") from None
        except ReviewError as e:
            raise ToolError("42501", e.message) from None
        return {"grant": g.summary()}


def _str(args: dict[str, Any], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str):
        raise RpcError(-32602, f"{key} must be a string")
    return v


def _param(p: Any) -> str | None:
    if p is None:
        return None
    if isinstance(p, bool):
        return "true" if p else "false"
    return str(p)


def _structured(data: dict[str, Any]) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps(data, default=str)}], "structuredContent": data,
            "isError": False}


def _tool_error(sqlstate: str, message: str) -> dict[str, Any]:
    data = {"sqlstate": sqlstate, "message": message}
    return {"content": [{"type": "text", "text": f"{sqlstate}: {message}"}], "structuredContent": data,
            "isError": True}


def _message(body: Any) -> dict[str, Any]:
    if isinstance(body, list):
        raise RpcError(-32600, "batches are not supported (one JSON-RPC message per request)", 400)
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0" or not isinstance(body.get("method"), str):
        raise RpcError(-32600, "not a JSON-RPC 2.0 request", 400)
    return body


def _error(rid: Any, e: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "error": {"code": e.code, "message": e.message}}


def _internal(f: Any) -> RpcError:
    log.failure("MCP: a call failed", failure=f)
    return RpcError(-32603, "internal error (details in the gateway log)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("hoopd")
    except PackageNotFoundError:
        return "0"
