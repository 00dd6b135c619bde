"""Time-boxed access grants: a user asks for a higher level on a connection for a while,
reviewers approve it like a held statement, and the user's new sessions get that level
until it expires or is revoked.

``GrantStore`` keeps them in SQLite (the standard library's, WAL mode) in ``[gateway]
state_dir``, so pending and active grants survive a restart (timers are set again at
start; a grant that expired while the gateway was down is marked so). ``Grants`` is the
logic: who may approve (the connection's ``grant_reviewers`` groups, never the
requester), the connection's ``max_grant``, expiry on the injected clock, and ending the
live sessions that use a grant when it is revoked or expires (``end_sessions``).
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from hoopd.levels import LEVEL_RANK
from hoopd.log import get_logger
from hoopd.names import name_key
from hoopd.review.requests import Reviewer, ReviewError, check_reviewer, in_state

log = get_logger("hoopd.review.grants")
GRANT_STATES = ("pending", "active", "denied", "expired", "revoked")
_COLUMNS = ("id", "user", "connection", "level", "reason", "duration", "status", "requested", "decided",
            "decided_by", "why", "expires")


@dataclass
class Grant:
    id: str
    user: str
    connection: str
    level: str
    reason: str
    duration: float  # seconds it lasts once approved
    status: str = "pending"
    requested: float = 0.0
    decided: float | None = None
    decided_by: str | None = None
    why: str | None = None
    expires: float | None = None  # set when approved

    def summary(self) -> dict[str, Any]:
        return asdict(self)


KEEP_ENDED = 500  # denied, expired and revoked grants listed (in memory) besides the pending and active ones


class GrantStore:
    """Grants in one SQLite file (created 0600 if missing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("pragma journal_mode = wal")
        self.db.execute("create table if not exists grants (id text primary key, user text, connection text,"
                        " level text, reason text, duration real, status text, requested real, decided real,"
                        " decided_by text, why text, expires real)")

    def all(self) -> list[Grant]:
        rows = self.db.execute(f"select {', '.join(_COLUMNS)} from grants order by requested").fetchall()
        return [Grant(*row) for row in rows]

    def save(self, g: Grant) -> None:
        self.db.execute(f"insert or replace into grants ({', '.join(_COLUMNS)}) values ({', '.join('?' * 12)})",
                        tuple(getattr(g, c) for c in _COLUMNS))

    def close(self) -> None:
        self.db.close()


def best_grant(grants: Iterable[Grant], user: str, connection: str, now: float) -> tuple[str, str] | None:
    """(level, grant id) of the highest of ``grants`` active for ``user`` on ``connection`` at ``now``."""
    best: Grant | None = None
    for g in grants:
        if (g.status == "active" and g.connection == connection and name_key(g.user) == name_key(user)
                and (g.expires or 0) > now and (best is None or LEVEL_RANK[g.level] > LEVEL_RANK[best.level])):
            best = g
    return (best.level, best.id) if best is not None else None


def session_level(conn: Any, identity: Any, grants: Any) -> tuple[str | None, str | None]:
    """(level, grant id or None) a login of ``identity`` gets on ``conn`` (a ConnectionConfig):
    its groups' level, raised by an active grant of ``grants`` (anything with ``level()``)."""
    level = conn.level_for(identity.groups)
    granted = grants.level(identity.name, conn.name) if grants is not None else None
    if granted is not None and (level is None or LEVEL_RANK[granted[0]] > LEVEL_RANK[level]):
        return granted
    return level, None


class GrantsView:
    """The grants as a worker process reads them (``[gateway] workers``): straight from
    the store the supervisor's Grants keep, at each login, so an approval or a revoke
    there counts here at once. (Ending the sessions of a revoked or expired grant is
    the supervisor's.)"""

    def __init__(self, store: GrantStore, clock: Any) -> None:
        self.store = store
        self.clock = clock

    def level(self, user: str, connection: str) -> tuple[str, str] | None:
        return best_grant(self.store.all(), user, connection, self.clock.seconds())


class Grants:
    """See the module docstring. ``settings(connection)`` gives (grant_reviewers,
    max_grant) of a configured connection, or None when it is not configured."""

    def __init__(self, store: GrantStore, clock: Any,
                 settings: Callable[[str], tuple[tuple[str, ...], float] | None],
                 end_sessions: Callable[[Grant, str], None] = lambda g, why: None) -> None:
        self.store = store
        self.clock = clock
        self.settings = settings
        self.end_sessions = end_sessions
        self.listeners: list[Callable[[str, Grant], None]] = []
        self._grants = {g.id: g for g in store.all()}  # (oldest first: the store orders by requested)
        self._timers: dict[str, Any] = {}
        now = clock.seconds()
        for g in self._grants.values():
            if g.status == "active" and g.expires is not None:
                if g.expires <= now:
                    self._end(g, "expired", None, "expired while the gateway was down")
                else:
                    self._timers[g.id] = clock.callLater(g.expires - now, self._expire, g)

    def get(self, gid: str) -> Grant | None:
        return self._grants.get(gid)

    def merge(self, g: Grant) -> None:
        """A grant as another node changed it (hoopd.state): kept and saved here, its expiry
        timed here, this node's sessions that used it ended when it stopped being active.
        The listeners are not told (the node that changed it told its own)."""
        old = self._grants.get(g.id)
        was_active = old is not None and old.status == "active"
        self._grants[g.id] = g
        timer = self._timers.pop(g.id, None)
        if timer is not None and timer.active():
            timer.cancel()
        if g.status == "active" and g.expires is not None:
            self._timers[g.id] = self.clock.callLater(max(0.0, g.expires - self.clock.seconds()), self._expire, g)
        try:
            self.store.save(g)
        except sqlite3.Error as e:
            log.error("grant {gid} not saved ({err}): it will not survive a restart", gid=g.id, err=e)
        if was_active and g.status != "active":
            self.end_sessions(g, f"grant {g.id} ({g.level} on {g.connection}) {g.status}"
                                 + (f" by {g.decided_by}" if g.decided_by else "") + (f": {g.why}" if g.why else ""))
        self._trim()

    def list(self, status: str | None = None) -> list[Grant]:
        return [g for g in self._grants.values() if status is None or g.status == status]

    def level(self, user: str, connection: str) -> tuple[str, str] | None:
        """(level, grant id) of the highest active grant of ``user`` on ``connection``."""
        return best_grant(self._grants.values(), user, connection, self.clock.seconds())

    def request(self, user: str, connection: str, level: str, duration: float, reason: str) -> Grant:
        found = self.settings(connection)
        if found is None:
            raise ReviewError(404, f'no connection "{connection}"')
        reviewers, max_grant = found
        if not reviewers:
            raise ReviewError(403, f'connection "{connection}" takes no grant requests (it names no grant_reviewers)')
        if level not in LEVEL_RANK:
            raise ReviewError(400, f'unknown level "{level}"')
        if not 0 < duration <= max_grant:
            raise ReviewError(400, f"a grant on {connection} lasts at most {max_grant:g}s (max_grant)")
        if not reason.strip():
            raise ReviewError(400, "a grant request needs a reason")
        g = Grant("g" + os.urandom(4).hex(), user, connection, level, reason, duration,
                  requested=self.clock.seconds())
        self._grants[g.id] = g
        self._changed("requested", g)
        return g

    def approve(self, gid: str, who: Reviewer, comment: str = "") -> Grant:
        g = self._decidable(gid, who)
        now = self.clock.seconds()
        g.status, g.decided, g.decided_by, g.why, g.expires = "active", now, who.name, comment or None, now + g.duration
        self._timers[g.id] = self.clock.callLater(g.duration, self._expire, g)
        self._changed("approved", g)
        return g

    def deny(self, gid: str, who: Reviewer, reason: str) -> Grant:
        g = self._decidable(gid, who)
        self._end(g, "denied", who.name, reason)
        return g

    def revoke(self, gid: str, who: Reviewer, reason: str) -> Grant:
        g: Grant = in_state(self._grants.get(gid), "grant", gid, "active")
        self._check_reviewer(g, who, revoking=True)
        self._end(g, "revoked", who.name, reason)
        return g

    def _decidable(self, gid: str, who: Reviewer) -> Grant:
        g: Grant = in_state(self._grants.get(gid), "grant", gid, "pending")
        self._check_reviewer(g, who)
        return g

    def _check_reviewer(self, g: Grant, who: Reviewer, revoking: bool = False) -> None:
        found = self.settings(g.connection)
        check_reviewer(who, found[0] if found else (), f"grant_reviewers of {g.connection}", g.user,
                       None if revoking else "nobody approves their own grant")

    def _expire(self, g: Grant) -> None:
        self._timers.pop(g.id, None)
        self._end(g, "expired", None, f"its {g.duration:g}s ran out")

    def _end(self, g: Grant, status: str, by: str | None, why: str | None) -> None:
        was_active = g.status == "active"
        g.status, g.decided_by, g.why = status, by or g.decided_by, why
        if status != "expired" or g.decided is None:
            g.decided = self.clock.seconds()
        timer = self._timers.pop(g.id, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._changed(status, g)
        if was_active:
            self.end_sessions(g, f"grant {g.id} ({g.level} on {g.connection}) {status}"
                                 + (f" by {by}" if by else "") + (f": {why}" if why else ""))
        self._trim()

    def _trim(self) -> None:
        """Keep the newest KEEP_ENDED ended grants in memory (the store keeps them all)."""
        ended = [g for g in self._grants.values() if g.status not in ("pending", "active")]
        for g in ended[:max(0, len(ended) - KEEP_ENDED)]:
            del self._grants[g.id]

    def _changed(self, event: str, g: Grant) -> None:
        try:
            self.store.save(g)
        except sqlite3.Error as e:  # the grant still changes in memory; the log says it may not survive a restart
            log.error("grant {gid} not saved ({err}): it will not survive a restart", gid=g.id, err=e)
        log.info("grant {gid} {event}: {user} {lvl} on {conn}", gid=g.id, event=event, user=g.user,
                 lvl=g.level, conn=g.connection)
        for listener in list(self.listeners):
            try:
                listener(event, g)
            except Exception:
                log.failure("grant listener failed on {event} of {gid}", event=event, gid=g.id)
