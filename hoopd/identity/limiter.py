"""Failed-login rate limiting (sliding window): per user name from one address, per user
name from all addresses together (a higher cap), and per source address.

A stranger failing as "bob" from their own address exhausts only the (bob, their address)
budget, so bob can still sign in from his; only failures from many addresses reach the
per-user cap. Names count by hoopd.names.name_key (BOB and " bob" are bob). The
refusal is the same whether or not the name exists (see IdentityChain.check_rate)."""
from __future__ import annotations

import ipaddress
import math
from collections import deque
from typing import Any

from hoopd.names import name_key

MAX_KEYS = 100_000  # bounded memory under a spray of names or addresses


def address_key(peer: str) -> str:
    """The unit an address is limited by: the IPv4 host, or the IPv6 /64 (one subscriber)."""
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class FailedLoginLimiter:
    """At most ``per_user`` failures per user name from one address, ``per_user_total`` per
    user name from all addresses and ``per_address`` per source address within ``window``
    seconds; beyond that, logins are refused until the oldest failure ages out. A limit
    of 0 turns that limit off. ``clock`` has ``seconds()``."""

    def __init__(self, per_user: int, per_address: int, window: float, clock: Any, per_user_total: int = 0) -> None:
        self.per_user = per_user
        self.per_user_total = per_user_total
        self.per_address = per_address
        self.window = window
        self.clock = clock
        self._failures: dict[tuple[str, ...], deque[float]] = {}

    def _keys(self, user: str, peer: str) -> list[tuple[tuple[str, ...], int]]:
        name, addr = name_key(user), address_key(peer)
        return [(("user@", name, addr), self.per_user), (("user", name), self.per_user_total),
                (("addr", addr), self.per_address)]

    def _recent(self, key: tuple[str, ...], now: float) -> deque[float] | None:
        q = self._failures.get(key)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._failures[key]
            return None
        return q

    def retry_after(self, user: str, peer: str) -> int | None:
        """Whole seconds until a login for user from peer may be tried again, or None (allowed now)."""
        now = self.clock.seconds()
        wait = 0.0
        for key, limit in self._keys(user, peer):
            q = self._recent(key, now)
            if limit and q is not None and len(q) >= limit:
                wait = max(wait, q[-limit] + self.window - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, user: str, peer: str) -> None:
        now = self.clock.seconds()
        for key, limit in self._keys(user, peer):
            if not limit:
                continue
            q = self._recent(key, now)
            if q is None:
                q = self._failures[key] = deque(maxlen=limit)
            q.append(now)
        if len(self._failures) > MAX_KEYS:
            self._prune(now)

    def succeeded(self, user: str, peer: str) -> None:
        """A good login clears its user name's failures (never its address's)."""
        name = name_key(user)
        self._failures.pop(("user", name), None)
        self._failures.pop(("user@", name, address_key(peer)), None)

    def reconfigure(self, per_user: int, per_address: int, window: float, per_user_total: int = 0) -> None:
        """New limits start from a clean slate (the deques are sized by the old ones)."""
        new = (per_user, per_user_total, per_address, window)
        if new != (self.per_user, self.per_user_total, self.per_address, self.window):
            self.per_user, self.per_user_total, self.per_address, self.window = new
            self._failures.clear()

    def _prune(self, now: float) -> None:
        for key in list(self._failures):
            self._recent(key, now)
        while len(self._failures) > MAX_KEYS:  # still full: forget the oldest keys
            del self._failures[next(iter(self._failures))]
