"""One tool call's SQL, run as a real gateway session: a client connection to the
gateway's own loopback listener (hoopd.mcp.tickets), so identity, policy, masking,
review holds and the journal apply exactly as for a wire client. The session lives for
one statement (Parse, Bind, Describe, Execute, Sync, then Terminate)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hoopd.config import ConnectionConfig, Credential
from hoopd.confkit import Secret
from hoopd.identity.base import Identity
from hoopd.mcp.tickets import Tickets
from hoopd.pgwire import messages as m
from hoopd.pgwire.types import BE
from hoopd.proxy.catalog import AnswerError, GarbageError, exchange
from hoopd.proxy.upstream import UpstreamError, UpstreamProtocol, connect_upstream

TYPE_NAMES = {16: "bool", 17: "bytea", 20: "int8", 21: "int2", 23: "int4", 25: "text", 26: "oid", 114: "json",
              700: "float4", 701: "float8", 1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time",
              1114: "timestamp", 1184: "timestamptz", 1700: "numeric", 2950: "uuid", 3802: "jsonb"}
_INTS, _FLOATS, _JSON = {20, 21, 23, 26}, {700, 701}, {114, 3802}


class ToolError(Exception):
    """The gateway or PostgreSQL refused the call: its SQLSTATE and message."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


@dataclass
class Result:
    columns: list[dict[str, Any]] = field(default_factory=list)  # name, type
    rows: list[list[Any]] = field(default_factory=list)
    row_count: int = 0  # rows the statement returned (also those left out)
    truncated: bool = False
    tag: str | None = None
    notices: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"columns": self.columns, "rows": self.rows, "row_count": self.row_count,
                "truncated": self.truncated, "command": self.tag, "notices": self.notices}


def value(oid: int, raw: bytes | None) -> Any:
    """A text-format value as JSON: numbers, booleans and JSON as such, the rest as text."""
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace")
    try:
        if oid in _INTS:
            return int(text)
        if oid in _FLOATS:
            return float(text)
        if oid == 16:
            return text == "t"
        if oid in _JSON:
            return json.loads(text)
    except ValueError:
        pass
    return text


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_bytes: int
    timeout: float


def run(reactor: Any, port: int, tickets: Tickets, identity: Identity, connection: str, application: str,
        sql: str, params: list[str | None], limits: Limits,
        on_notice: Callable[[str], None] | None = None) -> "Deferred[Result]":
    """Run one statement as ``identity`` on ``connection``; fails with ToolError."""
    cred = Credential(identity.name, Secret(tickets.mint(identity), "an MCP ticket"))
    conn = ConnectionConfig(name="mcp", host="127.0.0.1", port=port, database=connection, tls="disable",
                            credentials={"default": cred}, require_auth=("password",),
                            allow_plaintext_password=True)
    d = connect_upstream(reactor, conn, cred, {"application_name": application, "client_encoding": "UTF8"})

    def refused(f: Failure) -> Failure:
        if f.check(UpstreamError):
            raise ToolError(f.value.sqlstate or "08006", _login_message(str(f.value)))
        return f

    d.addErrback(refused)
    d.addCallback(lambda up: _statement(up, sql, params, limits, on_notice))
    d.addTimeout(limits.timeout, reactor, onTimeoutCancel=lambda *_: _timed_out(limits.timeout))
    return d


def _timed_out(seconds: float) -> None:
    raise ToolError("57014", f"hoopd: the call took longer than {seconds:g}s ([mcp] timeout) and was cancelled")


def _login_message(text: str) -> str:
    """The gateway's own refusal, without the connection plumbing around it."""
    _, _, tail = text.partition("FATAL: ")
    return tail or text


def _statement(up: UpstreamProtocol, sql: str, params: list[str | None], limits: Limits,
               on_notice: Callable[[str], None] | None) -> "Deferred[Result]":
    res = Result()
    size = [0]
    types: list[int] = []

    def on(mtype: int, body: bytes) -> None:
        if mtype == BE.ROW_DESCRIPTION:
            cols = m.decode_row_description(body)
            types[:] = [c.type_oid for c in cols]
            res.columns = [{"name": c.name, "type": TYPE_NAMES.get(c.type_oid, f"oid {c.type_oid}")} for c in cols]
        elif mtype == BE.DATA_ROW:
            res.row_count += 1
            size[0] += len(body)
            if len(res.rows) >= limits.max_rows or size[0] > limits.max_bytes:
                res.truncated = True
                return
            res.rows.append([value(t, v) for t, v in zip(types, m.decode_data_row(body))])
        elif mtype == BE.COMMAND_COMPLETE:
            res.tag = m.decode_command_complete(body)
        elif mtype == BE.NOTICE:
            text = m.decode_fields(body).get("M", "")
            res.notices.append(text)
            if on_notice is not None:
                on_notice(text)

    def failed(f: Failure) -> Failure:
        if f.check(AnswerError):
            raise ToolError(f.value.sqlstate, f.value.text)
        if f.check(GarbageError):
            raise ToolError("08P01", f"hoopd: the gateway session answered garbage ({f.value})")
        if f.check(UpstreamError):
            raise ToolError("08006", "hoopd: the gateway session ended before the answer")
        return f
    # (cancelled by the timeout, the exchange drops the connection: the gateway sees the client leave)
    request = m.parse_message("", sql) + m.bind_text(params) + m.describe_portal() + m.execute() + m.SYNC
    return exchange(up, request, on, lambda: res).addErrback(failed)
