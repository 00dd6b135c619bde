"""What the control plane needs from parts it does not own: the journal and OIDC.

Both are optional: without a JournalView, ``tail`` and a session's ``events`` say the
journal is not available and /readyz skips its journal check; without a TokenVerifier
only ``[[control.tokens]]`` open ``/api/``. The lead passes them to ``ControlPlane``.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred

from hoopd.identity.base import Identity

Event = dict[str, Any]
"""A journal record made JSON-friendly: str keys; bytes as text or base64; times as epoch
seconds or ISO strings; at least ``ts``, ``kind`` and ``session`` where the record has one."""


class JournalView(Protocol):
    def problem(self) -> str | None:
        """None when the journal can be written, else a short reason (for /readyz)."""
        ...

    def recent(self, *, session: str | None = None, user: str | None = None, limit: int = 20) -> Deferred[list[Event]]:
        """The newest ``limit`` events (oldest first) matching the filters; all of a session's with a large limit."""
        ...

    def follow(self, on_event: Callable[[Event], None], *, session: str | None = None,
               user: str | None = None) -> Callable[[], None]:
        """Call ``on_event`` for each new matching event as it is written; returns a function that stops it."""
        ...

    def format(self, event: Event) -> str:
        """One line of text for the console (no trailing newline)."""
        ...

    def admin_action(self, action: str, by: str, **detail: Any) -> None:
        """Journal an admin action (``kill`` with session and reason, ``reload`` with outcome)."""
        ...


class TokenVerifier(Protocol):
    def verify(self, token: str, audience: tuple[str, ...] | None = None) -> Deferred[Identity]:
        """Check an OIDC access/ID token (signature, issuer, audience, expiry) with no user name to
        match; ``audience`` replaces the configured one. Fires with the Identity (its groups) or
        fails with hoopd.identity.base.AuthError."""
        ...
