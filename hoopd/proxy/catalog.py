"""Reads a database's catalog for hoopd.catalogs: its functions for the read_only
allowlist (hoopd.policy.functions), its relations and columns for masking
(hoopd.masking.relations).

One short upstream connection per load, logged in with the connection's read_only
credential (so it sees what read_only sessions see), one simple Query, then Terminate.
``exchange`` (one request, its answer, Terminate) also runs an MCP call (hoopd.mcp.calls).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from hoopd.config import Config, ConnectionConfig
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import Columns, columns_of
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.framing import take_message
from hoopd.pgwire.types import BE
from hoopd.proxy.upstream import UpstreamError, UpstreamProtocol, connect_upstream

Rows = list[tuple[str | None, ...]]


def catalog_loader(reactor: Any, config: Callable[[], Config], query: str,
                   purpose: str) -> Callable[[str, str], Deferred[Rows]]:
    """``load(connection, database)`` running ``query``; ``config`` gives the current
    config, ``purpose`` names the upstream session (its application_name)."""

    def load(connection: str, database: str) -> Deferred[Rows]:
        conn = config().connections.get(connection)
        if conn is None:
            return fail(UpstreamError(f"connection {connection} is no longer configured"))
        return on_upstream(reactor, dataclasses.replace(conn, database=database), purpose,
                           lambda up: query_rows(up, query))

    return load


def on_upstream(reactor: Any, conn: ConnectionConfig, purpose: str,
                run: Callable[[UpstreamProtocol], Deferred[Any]]) -> Deferred[Any]:
    """``run`` on a new upstream session logged in with ``conn``'s read_only credential
    (so it sees what read_only sessions see); ``purpose`` becomes its application_name."""
    d = connect_upstream(reactor, conn, conn.credential_for("read_only"),
                         {"application_name": f"hoopd {purpose}", "client_encoding": "UTF8"})
    d.addCallback(lambda up: run(up).addTimeout(conn.connect_timeout + 5, reactor))
    return d


def query_rows(up: UpstreamProtocol, sql: str) -> Deferred[Rows]:
    """Run one simple Query on a logged-in upstream, close it, fire with the rows as text."""
    rows: Rows = []

    def on(mtype: int, body: bytes) -> None:
        if mtype == BE.DATA_ROW:
            rows.append(tuple(None if v is None else v.decode("utf-8", "replace") for v in m.decode_data_row(body)))

    return exchange(up, m.query(sql), on, lambda: rows)


def describe_columns(up: UpstreamProtocol, sql: str) -> Deferred[Columns | None]:
    """Parse ``sql`` unnamed and Describe it (nothing runs), close the upstream, fire with
    the columns its rows would have (None: it returns no rows)."""
    found: list[Columns] = []

    def on(mtype: int, body: bytes) -> None:
        if mtype == BE.ROW_DESCRIPTION:
            found.append(columns_of(body))

    return exchange(up, m.parse_message("", sql) + m.describe_statement("") + m.SYNC, on,
                     lambda: found[0] if found else None)


class AnswerError(UpstreamError):
    """The server answered the request with an ErrorResponse (its first one)."""

    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(f"the server answered {sqlstate} {text}", sqlstate)
        self.text = text


class GarbageError(UpstreamError):
    """The answer was not the protocol."""


def exchange(up: UpstreamProtocol, request: bytes, on: Callable[[int, bytes], None],
             result: Callable[[], Any]) -> Deferred[Any]:
    """Send ``request``, hand each server message but errors to ``on`` until ReadyForQuery,
    then Terminate; fire with ``result()``, or fail with AnswerError (the server's first
    error), GarbageError, or UpstreamError (the connection closed first)."""
    buf = bytearray()
    error: list[UpstreamError] = []

    def cancel(_: Deferred) -> None:
        up.transport.abortConnection()

    done: Deferred[Any] = Deferred(cancel)

    def on_data(data: bytes) -> None:
        buf.extend(data)
        while not done.called:
            try:
                got = take_message(buf)
            except ProtocolError as e:
                error[:0] = [GarbageError(f"the server answered garbage: {e}")]
                finish()
                return
            if got is None:
                return
            mtype, body = got
            if mtype == BE.ERROR:
                f = m.decode_fields(body)
                error.append(AnswerError(f.get("C", "?"), f.get("M", "")))
            elif mtype == BE.READY:
                finish()
            else:
                on(mtype, body)

    def finish() -> None:
        up.transport.write(m.TERMINATE)
        up.transport.loseConnection()
        if error:
            done.errback(error[0])
        else:
            done.callback(result())

    def lost(reason: Failure) -> None:
        if not done.called:
            done.errback(UpstreamError(f"connection closed before the answer: {reason.getErrorMessage()}"))

    up.on_data, up.on_lost = on_data, lost
    up.transport.write(request)
    early = up.take_early_data()
    if early:
        on_data(early)
    return done
