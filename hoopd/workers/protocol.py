"""What the supervisor and its workers say to each other: AMP commands over each
worker's stdin/stdout (hoopd.workers.supervisor, hoopd.workers.child).

Structured values travel as JSON in a ``Json`` argument (AMP caps one value at 64 KiB:
callers keep them small, see ``MAX_EVENT``).
"""
from __future__ import annotations

import json
from typing import Any

from twisted.protocols import amp
from twisted.python.failure import Failure

from hoopd.log import get_logger

log = get_logger("hoopd.workers")
MAX_EVENT = 60_000  # bytes of one live journal event; larger ones lose their rows


class Json(amp.Argument):
    """Any JSON value, as UTF-8 text."""

    def toString(self, inObject: Any) -> bytes:
        return json.dumps(inObject, separators=(",", ":"), default=str).encode()

    def fromString(self, inString: bytes) -> Any:
        return json.loads(inString)


def send(link: amp.AMP, peer: str, command: type[amp.Command], kw: dict[str, Any]) -> None:
    """callRemote without raising: a failure (the other end gone) is logged."""
    def failed(f: Failure) -> None:
        log.warn("{peer}: {cmd} failed: {err}", peer=peer, cmd=command.__name__, err=f.getErrorMessage())
    try:
        d = link.callRemote(command, **kw)
    except Exception:
        failed(Failure())
        return
    if d is not None:  # (None: a command that wants no answer)
        d.addErrback(failed)


class Tell(amp.Command):
    """A message that wants no answer."""
    response: list = []
    requiresAnswer = False


# --- worker -> supervisor ------------------------------------------------------------

class Hello(amp.Command):
    """The worker's first words: it serves (its listener is adopted, its journal open)."""
    arguments = [(b"index", amp.Integer()), (b"pid", amp.Integer())]
    response: list = []


class SessionStarted(Tell):
    arguments = [(b"summary", Json())]


class SessionEnded(Tell):
    arguments = [(b"summary", Json()), (b"reason", amp.Unicode())]


class SessionCounters(Tell):
    """Live sessions whose counters moved since the last report: [summary, ...]."""
    arguments = [(b"summaries", Json())]


class LoginOutcome(Tell):
    """A login that failed or succeeded, for every other worker's failed-login limiter
    (the supervisor passes it on)."""
    arguments = [(b"user", amp.Unicode()), (b"peer", amp.Unicode()), (b"ok", amp.Boolean())]


class CancelElsewhere(amp.Command):
    """A CancelRequest whose key no session of this worker has: try the others."""
    arguments = [(b"pid", amp.Integer()), (b"secret", amp.String())]
    response = [(b"found", amp.Boolean())]


class RedeemTicket(amp.Command):
    """An MCP call's login on the worker's ticket listener: the identity the supervisor
    minted the ticket for (null: no such ticket); the ticket is used up."""
    arguments = [(b"user", amp.Unicode()), (b"secret", amp.Unicode())]
    response = [(b"identity", Json())]


class OpenReview(amp.Command):
    """A statement held for review in a worker: the supervisor keeps the request."""
    arguments = [(b"rid", amp.Unicode()), (b"session", Json()), (b"statement", amp.Unicode()),
                 (b"rule", amp.Unicode()), (b"message", amp.Unicode()), (b"settings", Json()),
                 (b"break_glass", amp.Boolean())]
    response: list = []


class WithdrawReview(Tell):
    arguments = [(b"rid", amp.Unicode())]


class JournalEvent(Tell):
    """A journal record as the live tail shows it (sent while the supervisor has followers)."""
    arguments = [(b"event", Json())]


# --- supervisor -> worker ------------------------------------------------------------

class Kill(amp.Command):
    arguments = [(b"session", amp.Unicode()), (b"reason", amp.Unicode()), (b"by", amp.Unicode())]
    response = [(b"found", amp.Boolean())]


class Cancel(amp.Command):
    arguments = [(b"pid", amp.Integer()), (b"secret", amp.String())]
    response = [(b"found", amp.Boolean())]


class Reload(amp.Command):
    arguments = [(b"by", amp.Unicode())]
    response = [(b"error", amp.Unicode(optional=True))]


class Metrics(amp.Command):
    """The worker's /metrics text from ``offset`` on (rendered when offset is 0), in pieces."""
    arguments = [(b"offset", amp.Integer())]
    response = [(b"text", amp.String()), (b"total", amp.Integer())]


class OthersSessions(Tell):
    """How many live sessions the other workers have (for [gateway] max_sessions)."""
    arguments = [(b"count", amp.Integer())]


class ReviewDecided(Tell):
    """The end of a request: approved (no sqlstate) or a refusal to answer the client with."""
    arguments = [(b"rid", amp.Unicode()), (b"sqlstate", amp.Unicode(optional=True)),
                 (b"message", amp.Unicode(optional=True))]


class Record(Tell):
    """A record of the supervisor's (a review step) for a session's journal sequence."""
    arguments = [(b"session", amp.Unicode()), (b"kind", amp.Unicode()), (b"fields", Json())]


class Follow(Tell):
    """Start or stop sending JournalEvents."""
    arguments = [(b"on", amp.Boolean())]
