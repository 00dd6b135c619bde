"""The per-session relay: client <-> upstream, with stages and back-pressure.

Fast path: each direction has a Framer that returns whole only the message types some
stage (or the relay itself) needs; everything else is forwarded as raw byte runs.

Denials keep the wire in sync by letting PostgreSQL own the error state: the denied
message is replaced by one that fails deterministically (a Query, or a Parse in the
extended protocol, whose text is a unique marker). The server answers it with a syntax
error in exactly the right place, aborts the transaction if one is open, discards until
Sync and sends one ReadyForQuery with the true status; the relay rewrites that one
ErrorResponse into the stage's Deny. If an earlier pipelined message already failed,
the server skips the marker too, just as it would have skipped the real statement.
"""
from __future__ import annotations

import os
import struct
from collections import deque
from typing import Any, Callable

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred

from hoopd.log import tracing
from hoopd.pgwire import messages as m
from hoopd.pgwire.conversation import TRACKED_CLIENT, TRACKED_SERVER, ClientMessage, RowRun, ServerMessage
from hoopd.pgwire.framing import MAX_MESSAGE, Big, Event, Framer, Msg, Raw, Rows
from hoopd.pgwire.types import BE, FE
from hoopd.proxy.pipeline import SessionStages
from hoopd.session import STAGE_BODY_LIMIT, Deny, EndSession, Hold, SessionInfo

_SYNC_POINTS = frozenset({FE.QUERY, FE.FUNCTION_CALL, FE.SYNC})
_STATEMENTS = frozenset({FE.QUERY, FE.EXECUTE})  # counted in SessionInfo.statements
# Client messages PostgreSQL caps at 1 GiB; every other client message at 10 000 bytes...
_BIG_CLIENT = frozenset({FE.QUERY, FE.PARSE, FE.BIND, FE.FUNCTION_CALL, FE.COPY_DATA, FE.COPY_FAIL, FE.COPY_DONE})
CLIENT_LIMITS = {t: 10_000 for t in range(256) if t not in _BIG_CLIENT}
DEFAULT_REWRITE_LIMIT = 16 << 20
_READY, _ERROR, _PARAMETER_STATUS = BE.READY, BE.ERROR, BE.PARAMETER_STATUS  # globals: read faster than BE.X
_BYTE = [bytes([t]) for t in range(256)]
HELD_BACKLOG = 64  # framed events (each at most one read) queued behind a held statement before reading pauses
_I32 = struct.Struct("!i")


class BufferBudget:
    """Bytes of partly received client messages held for stages, across all sessions.

    Each relay charges what its framer holds; the session whose bytes take the total over
    ``cap`` is ended (53200), the others go on."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0


def send_now(transport: Any, data: bytes) -> None:
    """Write to a transport, handing the bytes to the socket at once when nothing is queued.

    Twisted's write() only queues: the bytes leave on the next reactor turn, after an
    epoll_ctl to watch for writability and another to stop. For a relay that forwards one
    small message per round trip that is most of its latency, so a plain TCP transport with
    an empty buffer gets a direct send (what asyncio's transports do); what the socket does
    not take, and every TLS transport, goes through write() as usual.
    """
    if (isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._tempDataBuffer
            and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


class _Gate:
    """The client transport as the upstream's producer, paused while either the upstream's
    buffer is full (back-pressure) or too much arrived behind a held statement: ending one
    must not resume reading while the other still wants it paused. A hold alone keeps
    reading, so a client that leaves while its statement waits is noticed at once."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.full = self.backlog = False

    def _set(self, full: bool, backlog: bool) -> None:
        was = self.full or self.backlog
        self.full, self.backlog = full, backlog
        if was and not (full or backlog):
            self.transport.resumeProducing()
        elif (full or backlog) and not was:
            self.transport.pauseProducing()

    def pauseProducing(self) -> None:
        self._set(True, self.backlog)

    def resumeProducing(self) -> None:
        self._set(False, self.backlog)

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    def queued(self, on: bool) -> None:
        """Too much (or no longer too much) is queued behind a held statement."""
        self._set(self.full, on)


class Relay:
    """Moves bytes between a client transport and an upstream transport for one session."""

    def __init__(self, info: SessionInfo, client: Any, upstream: Any, stages: SessionStages,
                 log: Any, on_terminate: Callable[[], None],
                 on_report: Callable[[str, str], None] | None = None,
                 budget: BufferBudget | None = None, max_message: int = MAX_MESSAGE,
                 clock: Any = None, hold_timeout: float = 600.0, rewrite_limit: int = DEFAULT_REWRITE_LIMIT) -> None:
        self.info = info
        self.client = client  # ITransport towards the client
        self.upstream = upstream  # ITransport towards PostgreSQL
        self.stages = stages
        self.conversation = stages.conversation
        self.tracking = stages.tracking
        self.log = log
        self.tracing = tracing(log)  # trace lines cost their arguments even when off
        self.on_terminate = on_terminate
        self.on_report = on_report  # a setting the server reported; may raise EndSession
        self.budget = budget
        self.clock = clock  # IReactorTime for hold timeouts (None: holds never time out)
        self.hold_timeout = hold_timeout
        self.rewrite_limit = rewrite_limit
        self._charged = 0  # bytes of this session counted in the budget
        cwanted = {FE.QUERY, FE.EXECUTE, FE.TERMINATE} | {t for t in range(256) if stages.client_for[t]}
        swanted = {BE.READY, BE.ERROR, BE.PARAMETER_STATUS} | {t for t in range(256) if stages.server_for[t]}
        if self.tracking:
            cwanted |= TRACKED_CLIENT
            swanted |= TRACKED_SERVER
        self.c2s = Framer(cwanted, whole_limit=1 << 30, limits=CLIENT_LIMITS,
                          default_limit=min(max_message + 4, MAX_MESSAGE))
        # whole up to the rewrite cap: what a stage rewrites, and errors (a large one must still
        # reach the conversation and the marker check, or both lose their place)
        whole = max(rewrite_limit, STAGE_BODY_LIMIT)
        self.s2c = Framer(swanted, whole_limit=STAGE_BODY_LIMIT,
                          whole_limits={t: whole for t in stages.rewrites | {BE.ERROR}},
                          runs=BE.DATA_ROW if stages.row_runs else None)
        self._pending: deque[Event] = deque()
        self._held: Deferred | None = None
        self._client_gate = _Gate(client)
        # Denials in flight, in the order sent: (number of the ReadyForQuery that ends the
        # marker's sync segment, marker text, the Deny to answer instead of its error).
        self._markers: deque[tuple[int, str, Deny]] = deque()
        self.quiet = True  # upstream idle: last thing seen was ReadyForQuery, nothing sent since
        self._sent_syncs = 0
        self._seen_syncs = 0
        self.terminated = False

    def start(self) -> None:
        """Wire producers both ways so each side's full buffer pauses the other."""
        self.client.registerProducer(self.upstream, True)
        self.upstream.registerProducer(self._client_gate, True)

    def stop(self, client: bool = True, upstream: bool = True) -> None:
        """Unwire the producers of the transports still connected (a TLS transport will
        not close while one is registered; a lost one has no TLS layer left to ask).
        A statement still held is withdrawn: it never reaches the server."""
        self._charge(0)
        held, self._held = self._held, None
        if held is not None:
            held.cancel()  # tells the stage (an approval is withdrawn); its outcome is ignored
        if client:
            self.client.unregisterProducer()
        if upstream:
            self.upstream.unregisterProducer()

    # --- client -> server -------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        """Raises ProtocolError on a malformed message and EndSession when the gateway's
        buffer budget is exhausted (the caller ends the session)."""
        self.info.bytes_in += len(data)
        self._pending.extend(self.c2s.feed(data))
        if self.budget is not None:
            self._charge(self.c2s.buffered)
        if self._held is not None and len(self._pending) > HELD_BACKLOG:
            self._client_gate.queued(True)
        self._drain_client()

    def _charge(self, nbytes: int) -> None:
        b = self.budget
        if b is None or nbytes == self._charged:
            return
        b.used += nbytes - self._charged
        self._charged = nbytes
        if nbytes and b.used > b.cap:
            self._charge(0)
            raise EndSession(f"hoopd: the gateway's buffer for incoming statements is full ({b.cap} bytes across"
                             " all sessions, [gateway] max_buffered_bytes); this session was ended", "53200",
                             reason="buffer budget exhausted")

    def _drain_client(self) -> None:
        out: list[bytes] = []
        while self._pending and self._held is None:
            ev = self._pending.popleft()
            if isinstance(ev, Raw):
                out.append(ev.data)
            elif isinstance(ev, Msg):
                self._client_message(ev.type, ev.body, out)
            else:
                self._oversize(True, ev)
        if out:
            self.quiet = False
            send_now(self.upstream, b"".join(out))

    def _client_message(self, t: int, body: bytes, out: list[bytes]) -> None:
        if t == FE.TERMINATE:
            self.terminated = True
            out.append(m.TERMINATE)
            self.on_terminate()
            return
        if t in _STATEMENTS:
            self.info.statements += 1
        if self.tracing:
            self.log.trace("session {sid} client {mtype} ({n} bytes)", sid=self.info.id, mtype=chr(t), n=len(body))
        if not self.stages.client_for[t] and not self.tracking:  # nobody looks at it
            out.append(m.frame(_BYTE[t], body))
            if t in _SYNC_POINTS:
                self._sent_syncs += 1
            return
        self._decide(self.conversation.client(t, body), 0, out)

    def _decide(self, msg: ClientMessage, start: int, out: list[bytes]) -> None:
        """Ask the stages from ``start`` on; a Deferred verdict holds the message (and every
        later client message) until it fires, then the remaining stages still get their say."""
        deny: Deny | None = None
        stages = self.stages.client_for[msg.type]
        for i in range(start, len(stages)):
            verdict = stages[i].client(msg)
            if isinstance(verdict, Deferred):
                if out:  # what was decided before goes first (also when the verdict is there already)
                    self.quiet = False
                    send_now(self.upstream, b"".join(out))
                    out.clear()
                self._hold(verdict, msg, i)
                return
            if verdict is not None:
                deny = verdict
                self.stages.denied(msg, verdict, stages[i])
                break
        self._emit(msg, deny, out)

    def _emit(self, msg: ClientMessage, deny: Deny | None, out: list[bytes]) -> None:
        t = msg.type
        if deny is None:
            out.append(m.frame(_BYTE[t], msg.body))
        else:
            # unguessable (another session can read this one's marker in pg_stat_activity,
            # but not the next one) and answered in order, so no error can pass for another
            marker = "hoopd_deny_" + os.urandom(12).hex()
            self._markers.append((self._sent_syncs + 1, marker, deny))
            out.append(m.query(marker) if t in (FE.QUERY, FE.FUNCTION_CALL) else m.parse_message("", marker))
        if self.tracking:
            self.conversation.sent(msg, denied=deny is not None)
        if t in _SYNC_POINTS:
            self._sent_syncs += 1

    def _hold(self, d: Deferred, msg: ClientMessage, index: int) -> None:
        """Stage ``index`` needs time (approval): keep the client's later messages queued.
        Safe against the session ending first: stop() cancels the hold, and a verdict that
        arrives after that forwards nothing. After ``hold_timeout`` the hold is cancelled
        and the statement refused (57014)."""
        self._held = d
        timer = None
        if isinstance(d, Hold) and d.notice:
            send_now(self.client, m.error_response("00000", d.notice, "NOTICE", notice=True))

        def expire() -> None:
            nonlocal timer
            timer = None
            if self._held is not d:
                return
            self.log.warn("session {sid}: a statement was held {s:g}s without a decision; refused",
                          sid=self.info.id, s=self.hold_timeout)
            self._held = None  # so what the stage answers to the cancel is ignored
            d.cancel()
            finish(Deny(f"hoopd: statement held for {self.hold_timeout:g}s without a decision; refused"
                        " ([gateway] hold_timeout)", "57014"))

        def release(verdict: Deny | None) -> None:
            stop_timer()
            if self._held is not d:  # withdrawn by stop() or expired: nothing more to do
                return
            self._held = None
            finish(verdict)

        def stop_timer() -> None:
            nonlocal timer
            if timer is not None:
                timer.cancel()
                timer = None

        def finish(verdict: Deny | None) -> None:
            self._client_gate.queued(False)
            out: list[bytes] = []
            if verdict is not None:
                self.stages.denied(msg, verdict, self.stages.client_for[msg.type][index])
                self._emit(msg, verdict, out)
            else:
                self._decide(msg, index + 1, out)
            if out:
                self.quiet = False
                send_now(self.upstream, b"".join(out))
            if self._held is None:
                self._drain_client()

        def failed(f: Any) -> None:
            stop_timer()
            if self._held is not d:
                return None
            if f.check(CancelledError):  # withdraw(): the client cancelled
                release(Deny("canceling statement due to user request", "57014"))
                return None
            self.log.failure("stage hold failed; statement refused", failure=f)
            release(Deny("hoopd: statement could not be decided; refused"))
            return None

        if self.clock is not None:
            timer = self.clock.callLater(self.hold_timeout, expire)
        d.addCallbacks(release, failed)

    def withdraw(self) -> bool:
        """The client cancelled (CancelRequest): a statement held at the gateway is refused
        as PostgreSQL refuses a cancelled one (57014) and its hold cancelled. True when
        there was one."""
        d = self._held
        if d is None:
            return False
        d.cancel()  # the stage withdraws what waits; the hold fails with CancelledError: refused below
        return True

    def _oversize(self, from_client: bool, ev: Big) -> None:
        if not from_client and ev.type in self.stages.rewrites:
            raise EndSession(f"hoopd: a server message of {ev.length} bytes is larger than the {self.rewrite_limit}"
                             " bytes the gateway rewrites ([gateway] max_rewrite_bytes); the session was ended so"
                             " that no value reaches the client unchecked", "54000",
                             reason="server message over max_rewrite_bytes")
        table = self.stages.client_for if from_client else self.stages.server_for
        for s in table[ev.type]:
            s.oversize(from_client, ev.type, ev.length)

    def _marker_error(self, body: bytes) -> Deny | None:
        """The Deny whose marker this ErrorResponse answers (a syntax error naming it in
        the current sync segment), removed from the markers in flight; else None."""
        fields = m.decode_fields(body)
        if fields.get("C") != "42601":
            return None
        msg = fields.get("M", "")
        segment = self._seen_syncs + 1
        for i, (z, marker, deny) in enumerate(self._markers):
            if z > segment:
                break
            if marker in msg:
                del self._markers[i]
                return deny
        return None

    # --- server -> client -------------------------------------------------------------

    def server_data(self, data: bytes) -> None:
        out: list[bytes] = []
        for ev in self.s2c.feed(data):
            if isinstance(ev, Raw):
                out.append(ev.data)
            elif isinstance(ev, Msg):
                out.append(self._server_message(ev.type, ev.body))
            elif isinstance(ev, Rows):
                out.append(self._server_rows(ev))
            else:
                self._oversize(False, ev)
        if out:
            blob = b"".join(out)
            self.info.bytes_out += len(blob)
            send_now(self.client, blob)

    def _server_rows(self, ev: Rows) -> bytes:
        """Consecutive DataRows, to stages that take them as a run (SessionStages.row_runs)."""
        if self.tracing:
            self.log.trace("session {sid} server {n} DataRows ({b} bytes)", sid=self.info.id, n=ev.count,
                           b=len(ev.data))
        data = ev.data
        (ln,) = _I32.unpack_from(data, 1)
        run = RowRun(data, ev.count, self.conversation.server(BE.DATA_ROW, data[5:1 + ln]))
        for stage in self.stages.server_for[BE.DATA_ROW]:
            new = stage.server_rows(run)  # type: ignore[attr-defined]
            if new is not None:
                run.data = new
        return run.data

    def _server_message(self, t: int, body: bytes) -> bytes:
        if self.tracing:
            self.log.trace("session {sid} server {mtype} ({n} bytes)", sid=self.info.id, mtype=chr(t), n=len(body))
        stages = self.stages.server_for[t]
        if self.tracking:
            msg = self.conversation.server(t, body)
        elif stages:
            msg = ServerMessage(t, body, None, 0, None)
        if t == _READY:
            self.info.transaction_status = body[:1].decode("latin-1")
            self._seen_syncs += 1
            self.quiet = self._seen_syncs >= self._sent_syncs and self.c2s.idle and not self._pending
            markers = self._markers
            while markers and markers[0][0] <= self._seen_syncs:  # skipped by the server after an earlier error
                markers.popleft()
        elif t == _ERROR and self._markers:
            deny = self._marker_error(body)
            if deny is not None:
                return m.error_response(deny.sqlstate, deny.message, detail=deny.detail, hint=deny.hint)
        elif t == _PARAMETER_STATUS:
            name, value = m.decode_parameter_status(body)
            self.info.report(name, value)
            self.conversation.text = self.info.sql_text
            if self.on_report is not None:
                self.on_report(name, value)
        if not stages:
            return m.frame(_BYTE[t], body)
        changed = False
        for stage in stages:
            new = stage.server(msg)
            if new is not None and t in self.stages.rewrites:
                msg.body, changed = new, True
        return m.frame(_BYTE[t], msg.body if changed else body)
