"""Every live session, findable by id and by its cancel key: the upstream's real backend
pid (clients compare it with pg_backend_pid() and notification pids) and a secret the
gateway minted, so the pair is unique even across servers whose pids collide.

The control port and the console read this; they act on sessions only through
``kill`` and ``cancel``, never by reaching into protocol objects.
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterator, Protocol

from twisted.internet.defer import Deferred

from hoopd.session import SessionInfo


class Killable(Protocol):
    info: SessionInfo

    def kill(self, reason: str, by: str) -> None: ...

    def cancel_upstream(self) -> Deferred[None]: ...


class SessionRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Killable] = {}
        self._by_key: dict[bytes, Killable] = {}  # digest of (pid, secret) -> session
        self.total = 0

    @staticmethod
    def _digest(pid: int, secret: bytes) -> bytes:
        """Looked up by digest, so no comparison of secret bytes depends on how many match."""
        return hashlib.sha256(pid.to_bytes(4, "big", signed=True) + secret).digest()

    def mint_key(self, session: Killable, pid: int, key_len: int = 4) -> bytes:
        """A fresh secret for a session whose upstream backend is ``pid``, unique with it
        among live sessions; 3.2 clients get longer secrets."""
        while True:
            secret = os.urandom(key_len)
            digest = self._digest(pid, secret)
            if digest not in self._by_key:
                self._by_key[digest] = session
                return secret

    def add(self, session: Killable) -> None:
        self._by_id[session.info.id] = session
        self.total += 1

    def remove(self, session: Killable) -> None:
        self._by_id.pop(session.info.id, None)
        for key, s in list(self._by_key.items()):
            if s is session:
                del self._by_key[key]

    def by_cancel_key(self, pid: int, secret: bytes) -> Killable | None:
        return self._by_key.get(self._digest(pid, secret))

    def by_digest(self, digest: bytes) -> Killable | None:
        """The session whose cancel key hashes to ``digest`` (a key another node was sent)."""
        return self._by_key.get(digest)

    def digest_of(self, session_id: str) -> bytes | None:
        """The digest of a live session's cancel key (what the shared state stores, never the key)."""
        s = self._by_id.get(session_id)
        return next((k for k, v in self._by_key.items() if v is s), None) if s is not None else None

    @staticmethod
    def digest(pid: int, secret: bytes) -> bytes:
        return SessionRegistry._digest(pid, secret)

    def get(self, session_id: str) -> Killable | None:
        return self._by_id.get(session_id)

    def __iter__(self) -> Iterator[Killable]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def kill(self, session_id: str, reason: str, by: str) -> bool:
        s = self._by_id.get(session_id)
        if s is None:
            return False
        s.kill(reason, by)
        return True


class CounterWatch:
    """Which live sessions' counters (statements, bytes, transaction status) moved since the
    last look: what a worker or a node reports elsewhere every few seconds."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int, str]] = {}

    def moved(self, registry: SessionRegistry) -> list[SessionInfo]:
        out = []
        for s in registry:
            info = s.info
            now = (info.statements, info.bytes_in, info.bytes_out, info.transaction_status)
            if self._seen.get(info.id) != now:
                self._seen[info.id] = now
                out.append(info)
        return out

    def forget(self, session_id: str) -> None:
        self._seen.pop(session_id, None)
