"""Small stand-ins for the control plane's tests: a gateway, sessions and a journal."""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from hoopd.config import Config
from hoopd.identity.base import Identity
from hoopd.proxy.registry import SessionRegistry
from hoopd.session import SessionInfo


class FakeSession:
    def __init__(self, registry: SessionRegistry, info: SessionInfo) -> None:
        self.registry = registry
        self.info = info
        self.killed: tuple[str, str] | None = None

    def kill(self, reason: str, by: str) -> None:
        self.killed = (reason, by)
        self.registry.remove(self)

    def cancel_upstream(self) -> defer.Deferred[None]:
        return defer.succeed(None)


class FakeGateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = SessionRegistry()
        self.stopping = False
        self.reloads: list[str] = []
        self.reload_error: str | None = None
        self.bound: dict[str, str | None] = {"postgres": "127.0.0.1:6432"}

    def reload(self, by: str) -> str | None:
        self.reloads.append(by)
        return self.reload_error

    def listeners(self) -> dict[str, str | None]:
        return self.bound

    def add(self, sid: str, user: str, connection: str = "shop", level: str = "read_only",
            started: float = 0.0, **kw: Any) -> FakeSession:
        info = SessionInfo(sid, "127.0.0.1:50000", started, Identity(user, frozenset({"g"})), connection, level, **kw)
        s = FakeSession(self.registry, info)
        self.registry.add(s)
        return s


class FakeJournal:
    """An in-memory JournalView."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.followers: list[tuple[Callable[[dict], None], str | None, str | None]] = []
        self.actions: list[tuple[str, str, dict[str, Any]]] = []
        self.broken: str | None = None

    def problem(self) -> str | None:
        return self.broken

    @staticmethod
    def _match(ev: dict[str, Any], session: str | None, user: str | None) -> bool:
        return (session is None or ev.get("session") == session) and (user is None or ev.get("user") == user)

    def recent(self, *, session: str | None = None, user: str | None = None, limit: int = 20) -> defer.Deferred:
        return defer.succeed([e for e in self.events if self._match(e, session, user)][-limit:])

    def follow(self, on_event: Callable[[dict], None], *, session: str | None = None,
               user: str | None = None) -> Callable[[], None]:
        entry = (on_event, session, user)
        self.followers.append(entry)
        return lambda: self.followers.remove(entry)

    def format(self, event: dict[str, Any]) -> str:
        return f"{event['session']} {event['user']} {event['kind']} {event.get('sql', '')}".rstrip()

    def admin_action(self, action: str, by: str, **detail: Any) -> None:
        self.actions.append((action, by, detail))

    def write(self, **event: Any) -> None:
        self.events.append(event)
        for on_event, session, user in list(self.followers):
            if self._match(event, session, user):
                on_event(event)
