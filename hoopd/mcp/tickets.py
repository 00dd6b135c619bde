"""One-time login tickets for the gateway's loopback listener (hoopd.mcp): the MCP
endpoint has already checked who calls; a ticket lets exactly one gateway session log
in as that identity, within TICKET_LIFETIME, from this process only."""
from __future__ import annotations

import hashlib
import os
from typing import Any

from hoopd.identity.base import Identity
from hoopd.names import name_key

TICKET_LIFETIME = 30.0  # seconds


class Tickets:
    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self._open: dict[bytes, tuple[Identity, float]] = {}  # digest -> (who, expires)

    def mint(self, identity: Identity) -> str:
        self._expire()
        secret = "hoopd-ticket-" + os.urandom(24).hex()
        self._open[hashlib.sha256(secret.encode()).digest()] = (identity, self.clock.seconds() + TICKET_LIFETIME)
        return secret

    def redeem(self, user: str, secret: str) -> Identity | None:
        """The identity of a valid ticket for ``user`` (it is used up either way), or None."""
        self._expire()
        found = self._open.pop(hashlib.sha256(secret.encode()).digest(), None)
        if found is None or name_key(found[0].name) != name_key(user):
            return None
        return found[0]

    def _expire(self) -> None:
        now = self.clock.seconds()
        for k in [k for k, (_, until) in self._open.items() if until <= now]:
            del self._open[k]
