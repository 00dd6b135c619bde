"""An observer (hoopd.session.Observer) that remembers what the registry forgets: ended
sessions and their totals. It sees no messages, so the relay's fast path is unchanged."""
from __future__ import annotations

from collections import Counter, deque
from typing import Any

from hoopd.pgwire.conversation import ClientMessage
from hoopd.session import Deny, SessionInfo

RECENT = 200  # ended sessions kept for `sessions --all` and the API


class SessionTracker:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.started: Counter[tuple[str, str]] = Counter()  # (connection, level) -> sessions begun
        self.ended_bytes_in: Counter[str] = Counter()  # connection -> bytes of ended sessions
        self.ended_bytes_out: Counter[str] = Counter()
        self.ended_statements: Counter[str] = Counter()
        self.denied: Counter[str] = Counter()  # connection -> client messages a stage refused
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)

    def session_started(self, session: SessionInfo) -> None:
        self.started[(session.connection or "", session.level or "")] += 1

    def session_ended(self, session: SessionInfo, reason: str) -> None:
        conn = session.connection or ""
        self.ended_bytes_in[conn] += session.bytes_in
        self.ended_bytes_out[conn] += session.bytes_out
        self.ended_statements[conn] += session.statements
        self.recent.append({**session.summary(), "active": False, "ended": self.clock.seconds(),
                            "end_reason": reason})

    def message_denied(self, session: SessionInfo, msg: ClientMessage, deny: Deny) -> None:
        self.denied[session.connection or ""] += 1

    def ended(self, session_id: str) -> dict[str, Any] | None:
        for s in reversed(self.recent):
            if s["id"] == session_id:
                return s
        return None
