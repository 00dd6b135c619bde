"""Every live session, findable by id and by the cancel key the gateway minted for it.

The control port and the console read this; they act on sessions only through
``kill`` and ``cancel``, never by reaching into protocol objects.
"""
from __future__ import annotations

import hmac
import os
import struct
from typing import Iterator, Protocol

from hoopd.session import SessionInfo


class Killable(Protocol):
    info: SessionInfo

    def kill(self, reason: str, by: str) -> None: ...

    def cancel_upstream(self) -> None: ...


class SessionRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Killable] = {}
        self._by_pid: dict[int, tuple[bytes, Killable]] = {}
        self.total = 0

    def mint_key(self, session: Killable, key_len: int = 4) -> tuple[int, bytes]:
        """A fresh BackendKeyData (pid, secret) for a session; 3.2 clients get longer secrets."""
        while True:
            (pid,) = struct.unpack("!I", os.urandom(4))
            pid &= 0x7FFFFFFF
            if pid and pid not in self._by_pid:
                break
        secret = os.urandom(key_len)
        self._by_pid[pid] = (secret, session)
        return pid, secret

    def add(self, session: Killable) -> None:
        self._by_id[session.info.id] = session
        self.total += 1

    def remove(self, session: Killable) -> None:
        self._by_id.pop(session.info.id, None)
        for pid, (_, s) in list(self._by_pid.items()):
            if s is session:
                del self._by_pid[pid]

    def by_cancel_key(self, pid: int, secret: bytes) -> Killable | None:
        entry = self._by_pid.get(pid)
        if entry and hmac.compare_digest(entry[0], secret):
            return entry[1]
        return None

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
