"""The journal as the control plane sees it (hoopd.control.providers.JournalView):
recent events read from disk on a thread, live events straight from the writer, a
health problem for /readyz, and admin actions written as ``admin`` records."""
from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any, Callable

from twisted.internet import threads
from twisted.internet.defer import Deferred

from hoopd.names import name_key
from hoopd.journal import records as r
from hoopd.journal import render
from hoopd.journal.reader import Journal
from hoopd.journal.writer import JournalWriter
from hoopd.log import get_logger

Event = dict[str, Any]
_NAMES_KEPT = 10_000
log = get_logger("hoopd.journal")


def live_event(rec: dict[str, Any]) -> Event:
    """A record just written, as followers get it (rows decoded, JSON-friendly); the
    writer's own dict is left as it is."""
    return render.jsonable(r.expand(dict(rec)) if "wire" in rec else rec)


class LiveJournal:
    """One per gateway, over its JournalWriter."""

    def __init__(self, writer: JournalWriter, reactor: Any) -> None:
        self.writer = writer
        self.reactor = reactor
        self._users: OrderedDict[str, str | None] = OrderedDict()  # session -> user, most recent last
        self._followers: list[tuple[Callable[[Event], None], str | None, str | None]] = []
        self.following_hooks: list[Callable[[bool], None]] = []  # told when the first follower comes, the last goes
        writer.written_hooks.append(self._written)

    def problem(self) -> str | None:
        if not self.writer.running:
            return "the journal is not running"
        if not self.writer.healthy:
            return f"the journal cannot be written: {self.writer.last_error}"
        return None

    def _remember(self, sid: str, user: str | None) -> None:
        self._users[sid] = user
        self._users.move_to_end(sid)
        while len(self._users) > _NAMES_KEPT:
            self._users.popitem(last=False)

    def _matches(self, rec: dict[str, Any], session: str | None, user: str | None) -> bool:
        sid = rec.get("session")
        if session is not None and (sid is None or not sid.startswith(session)):
            return False
        return user is None or (sid is not None and name_key(self._users.get(sid) or "") == name_key(user))

    # --- reading ----------------------------------------------------------------------

    def recent(self, *, session: str | None = None, user: str | None = None, limit: int = 20) -> Deferred[list[Event]]:
        """The newest ``limit`` matching events, oldest first (read on the reactor's thread pool)."""
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._read, session, user, limit)

        def done(found: tuple[list[Event], dict[str, str | None]]) -> list[Event]:
            events, names = found
            for sid, name in names.items():
                self._remember(sid, name)
            return events
        return d.addCallback(done)

    def _read(self, session: str | None, user: str | None, limit: int) -> tuple[list[Event], dict[str, str | None]]:
        j = Journal(self.writer.folder)
        names: dict[str, str | None] = {}

        def match(rec: dict[str, Any]) -> bool:
            sid = rec.get("session")
            if sid is None or (session is not None and not sid.startswith(session)):
                return False
            if sid not in names:
                start = j.session_start(sid)
                names[sid] = start.get("user") if start else None
            return user is None or name_key(names[sid] or "") == name_key(user)
        entries = j.last(limit, match)
        for w in j.warnings:
            log.warn("journal: {warning}", warning=w)
        return [render.jsonable(e.rec) for e in entries], names

    def follow(self, on_event: Callable[[Event], None], *, session: str | None = None,
               user: str | None = None) -> Callable[[], None]:
        entry = (on_event, session, user)
        self._followers.append(entry)
        if len(self._followers) == 1:
            self._following(True)

        def stop() -> None:
            if entry in self._followers:
                self._followers.remove(entry)
                if not self._followers:
                    self._following(False)
        return stop

    def _following(self, on: bool) -> None:
        for hook in self.following_hooks:
            hook(on)

    def _written(self, rec: dict[str, Any], nbytes: int, seconds: float) -> None:
        if not self._followers or rec.get("session") is None:
            if rec.get("kind") == r.SESSION_START:
                self._remember(rec["session"], rec.get("user"))
            return
        self.publish(live_event(rec))

    def publish(self, event: Event) -> None:
        """Hand an event (a record as ``render.jsonable`` makes it: this writer's, or a
        worker's) to the followers it matches."""
        if event.get("kind") == r.SESSION_START:
            self._remember(event["session"], event.get("user"))
        for entry in list(self._followers):
            on_event, session, user = entry
            if self._matches(event, session, user):
                try:
                    on_event(event)
                except Exception:
                    log.failure("journal: a follower failed; it is stopped")
                    self._followers.remove(entry)
                    if not self._followers:
                        self._following(False)

    def format(self, event: Event) -> str:
        ts = event.get("ts")
        rec = {**event, "ts": datetime.fromisoformat(ts.replace("Z", "+00:00")) if isinstance(ts, str) else ts}
        return render.line(rec, self._users.get(event.get("session") or ""))

    # --- writing ----------------------------------------------------------------------

    def admin_action(self, action: str, by: str, **detail: Any) -> None:
        """An ``admin`` record; ``session`` in detail names the target (``target_session``).
        Raises JournalUnavailable."""
        if "session" in detail:
            detail["target_session"] = detail.pop("session")
        self.writer.write({"kind": r.ADMIN, "action": action, "by": by, **detail})
