"""What the web console's overview charts: per minute, the statements the policy decided
(by decision) and the most sessions live at once, over the last WINDOW minutes; refusals
by user and connection. A session Observer, fed by the policy's counts through Metrics."""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any, Callable

from hoopd.pgwire.conversation import ClientMessage
from hoopd.session import Deny, SessionInfo

WINDOW = 180  # minutes kept
SHOWN = 60  # minutes the charts show at least


class Activity:
    def __init__(self, clock: Any, live: Callable[[], int]) -> None:
        self.clock = clock
        self.live = live  # () -> sessions live now
        self._minutes: OrderedDict[int, tuple[Counter[str], list[int]]] = OrderedDict()  # minute -> (decisions, [max live])
        self.denied: Counter[tuple[str, str]] = Counter()  # (user, connection) -> refused client messages

    def _now(self) -> tuple[Counter[str], list[int]]:
        minute = int(self.clock.seconds() // 60)
        got = self._minutes.get(minute)
        if got is None:
            got = self._minutes[minute] = (Counter(), [self.live()])
            while len(self._minutes) > WINDOW:
                self._minutes.popitem(last=False)
        return got

    def statement(self, decision: str) -> None:
        self._now()[0][decision] += 1

    def session_started(self, session: SessionInfo) -> None:
        peak = self._now()[1]
        peak[0] = max(peak[0], self.live())

    def session_ended(self, session: SessionInfo, reason: str) -> None:
        self._now()

    def message_denied(self, session: SessionInfo, msg: ClientMessage, deny: Deny) -> None:
        ident = session.identity
        self.denied[(ident.name if ident else "?", session.connection or "?")] += 1

    def series(self) -> dict[str, Any]:
        """Columns for the charts: minute starts (epoch seconds), statements per decision, peak sessions."""
        self._now()
        last = next(reversed(self._minutes))
        minutes = list(range(min(next(iter(self._minutes)), last - SHOWN + 1), last + 1))  # at least an hour
        decisions = sorted({d for c, _ in self._minutes.values() for d in c})
        sessions, live = [], 0
        for m in minutes:  # a minute nothing happened in had as many as the one before
            got = self._minutes.get(m)
            live = got[1][0] if got is not None else live
            sessions.append(live)
        empty: Counter[str] = Counter()
        return {"t": [m * 60 for m in minutes],
                "statements": {d: [self._minutes.get(m, (empty,))[0][d] for m in minutes] for d in decisions},
                "sessions": sessions}
