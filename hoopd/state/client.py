"""A small PostgreSQL client for the shared state database, on the gateway's own upstream
login (hoopd.proxy.upstream): statements with text parameters, one at a time in order,
and LISTEN notifications as they come."""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hoopd.pgwire import messages as m
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.framing import take_message
from hoopd.pgwire.types import BE
from hoopd.proxy.upstream import UpstreamProtocol

Rows = list[tuple[str | None, ...]]


class StateError(Exception):
    """The state database refused a statement, or the connection is gone."""


class StateConnection:
    def __init__(self, up: UpstreamProtocol, on_notify: Callable[[str, str], None],
                 on_lost: Callable[["StateConnection"], None]) -> None:
        self.up = up
        self.on_notify = on_notify  # (channel, payload)
        self.lost_hook = on_lost
        self.closed = False
        self._buf = bytearray()
        self._waiting: deque[tuple[Deferred[Rows], Rows, list[str]]] = deque()
        up.on_data, up.on_lost = self._data, self._lost
        early = up.take_early_data()
        if early:
            self._data(early)

    def run(self, sql: str, *params: Any) -> "Deferred[Rows]":
        """Rows (all text) of one statement with $n parameters (str() of each; None is NULL)."""
        d: Deferred[Rows] = Deferred()
        if self.closed:
            d.errback(StateError("the state database connection is closed"))
            return d
        self._waiting.append((d, [], []))
        args = [None if p is None else str(p) for p in params]
        self.up.transport.write(m.parse_message("", sql) + m.bind_text(args) + m.execute() + m.SYNC)
        return d

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.up.transport.write(m.TERMINATE)
            self.up.transport.loseConnection()

    def _data(self, data: bytes) -> None:
        buf = self._buf
        buf.extend(data)
        while True:
            try:
                got = take_message(buf)
            except ProtocolError:
                self.up.transport.abortConnection()  # (lost: every statement waiting fails)
                return
            if got is None:
                return
            t, body = got
            if t == BE.NOTIFICATION:
                _, channel, payload = m.decode_notification(body)
                self.on_notify(channel, payload)
            elif not self._waiting:
                continue  # (ParameterStatus, notices between statements)
            elif t == BE.DATA_ROW:
                self._waiting[0][1].append(tuple(None if v is None else v.decode() for v in m.decode_data_row(body)))
            elif t == BE.ERROR:
                f = m.decode_fields(body)
                self._waiting[0][2].append(f"{f.get('C', '?')} {f.get('M', '')}")
            elif t == BE.READY:
                d, rows, errors = self._waiting.popleft()
                if errors:
                    d.errback(StateError(f"the state database answered {errors[0]}"))
                else:
                    d.callback(rows)

    def _lost(self, reason: Failure) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, deque()
        for d, _, _ in waiting:
            d.errback(StateError(f"the state database connection was lost: {reason.getErrorMessage()}"))
        self.lost_hook(self)
