"""Review requests: statements held at the gateway until reviewers decide.

``Reviews`` keeps the requests of this gateway (pending ones, and the latest decided
ones for the console and the API). A request is opened by the review stage with the
Deferred the session waits on; it ends exactly once, as

* ``approved``: enough reviewers (``min_approvals``) of the rule's groups approved;
  the statement is forwarded;
* ``denied``: one reviewer denied, with a reason; the client gets 42501 naming them;
* ``expired``: no decision within the rule's timeout (the clock is injected);
* ``withdrawn``: the client cancelled or left; nothing of it reached the server.

Each change is recorded (``record``: the journal's ``review`` records) and heard by
``listeners`` (the console's live notifications, metrics). Requests live in memory:
a restart withdraws held statements anyway, since their sessions are gone.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Callable

from twisted.internet.defer import Deferred

from hoopd.log import get_logger
from hoopd.names import name_key
from hoopd.policy.rules import ReviewSettings
from hoopd.session import Deny, Hold, SessionInfo

log = get_logger("hoopd.review")
KEEP_DECIDED = 500  # decided requests kept for the console and the API
OUTCOMES = ("approved", "denied", "expired", "withdrawn", "break_glass")


class ReviewError(Exception):
    """A decision that cannot be taken: ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def in_state(item: Any, what: str, ident: str, state: str) -> Any:
    """``item`` when it exists and is in ``state``, else the ReviewError (404, 409) that says so."""
    if item is None:
        raise ReviewError(404, f"no {what} {ident}")
    if item.status != state:
        raise ReviewError(409, f"{what} {ident} is already {item.status}" if state == "pending"
                          else f"{what} {ident} is {item.status}, not {state}")
    return item


def check_reviewer(who: "Reviewer", groups: tuple[str, ...], of: str, requester: str | None,
                   self_approval: str | None) -> None:
    """403 unless ``who`` is in ``groups`` (globs; ``of`` names them) and, when
    ``self_approval`` says why not, is not ``requester``."""
    if not any(fnmatchcase(g, p) for p in groups for g in who.groups):
        raise ReviewError(403, f"{who.name} is in none of the {of} ({', '.join(groups) or 'none'})")
    if self_approval and who.user is not None and requester is not None and name_key(who.user) == name_key(requester):
        raise ReviewError(403, f"{who.name} asked for it: {self_approval}")


@dataclass(frozen=True)
class Reviewer:
    """Who decides: how actions are attributed, the identity's name and groups."""

    name: str  # e.g. "ssh:alice", "oidc:bob", "api:ci"
    user: str | None
    groups: frozenset[str]


@dataclass
class Request:
    id: str
    session: str
    user: str | None
    groups: tuple[str, ...]
    connection: str | None
    level: str | None
    application: str
    peer: str
    statement: str
    rule: str
    message: str
    settings: ReviewSettings = field(repr=False)
    requested: float
    expires: float
    status: str = "pending"
    approvals: list[dict[str, Any]] = field(default_factory=list)
    decided: float | None = None
    decided_by: str | None = None
    why: str | None = None
    waiter: Deferred | None = field(default=None, repr=False)
    timer: Any = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (the statement as the client sent it; no credentials here)."""
        return {"id": self.id, "status": self.status, "session": self.session, "user": self.user,
                "groups": list(self.groups), "connection": self.connection, "level": self.level,
                "application": self.application, "peer": self.peer, "statement": self.statement,
                "rule": self.rule, "message": self.message, "reviewers": list(self.settings.reviewers),
                "min_approvals": self.settings.min_approvals, "allow_self_approval": self.settings.allow_self_approval,
                "approvals": list(self.approvals),
                "requested": self.requested, "expires": self.expires, "decided": self.decided,
                "decided_by": self.decided_by, "why": self.why}


def review_hint(config: Any) -> str:
    """How reviewers decide, for the client's notice ({id}: the request)."""
    ways = []
    if config.listen.ssh:
        ways.append("`approve {id}` in the SSH console")
    if config.listen.http:
        ways.append("POST /api/v1/reviews/{id}/approve")
    return "reviewers decide with " + " or ".join(ways) if ways else ""


def notice(rid: str, rule: str, settings: ReviewSettings, where: str) -> str:
    """What the client of a held statement is told at once."""
    hint = f"; {where.format(id=rid)}" if where else ""
    return (f"hoopd: waiting for approval of request #{rid} by {', '.join(settings.reviewers)}"
            f" (rule {rule}, up to {settings.timeout:g}s){hint}")


Listener = Callable[[str, Request], None]  # (event: requested | approval | an OUTCOME, request)


class Reviews:
    """The gateway's review requests (see the module docstring)."""

    def __init__(self, clock: Any, record: Callable[[SessionInfo, str, dict], None] | None = None,
                 where: str = "", redact: Callable[[SessionInfo, str], str] | None = None) -> None:
        self.clock = clock
        self.record = record
        self.redact = redact  # the statement as reviewers and records see it (masking's detectors)
        self.where = where  # how to decide, for the client's notice (e.g. the console command)
        self.listeners: list[Listener] = []
        self._requests: dict[str, Request] = {}
        self._infos: dict[str, SessionInfo] = {}  # pending request -> its session (for records)

    # --- the session's side -----------------------------------------------------------

    def open(self, info: SessionInfo, statement: str, rule: str, message: str,
             settings: ReviewSettings, rid: str | None = None) -> tuple[Request, Hold]:
        """A new pending request (``rid``: its id, when a worker minted it) and the Hold its
        session waits on (fires with None: approved, or a Deny; cancelling it withdraws
        the request)."""
        now = self.clock.seconds()
        ident = info.identity
        if self.redact is not None:
            statement = self.redact(info, statement)
        req = Request(rid or os.urandom(4).hex(), info.id, ident.name if ident else None,
                      tuple(sorted(ident.groups)) if ident else (), info.connection, info.level,
                      info.application_name, info.peer, statement, rule, message, settings, now,
                      now + settings.timeout)
        hold = Hold(notice(req.id, rule, settings, self.where),
                    lambda _: self._end(req, "withdrawn", None, "the client cancelled or left"))
        req.waiter = hold
        req.timer = self.clock.callLater(settings.timeout, self._end, req, "expired", None,
                                         f"no decision within {settings.timeout:g}s")
        self._requests[req.id] = req
        self._infos[req.id] = info
        self._event("requested", req)
        return req, hold

    def break_glass(self, info: SessionInfo, statement: str, rule: str, message: str,
                    settings: ReviewSettings) -> Request:
        """A statement of a break-glass group: it runs at once; the request is kept, decided
        ``break_glass`` by the user, recorded and heard like any other (alerts)."""
        req, hold = self.open(info, statement, rule, message, settings)
        self._end(req, "break_glass", req.user, "break-glass: ran without waiting for review")
        hold.callback(None)  # (nobody waits on it)
        return req

    # --- the reviewers' side ----------------------------------------------------------

    def get(self, rid: str) -> Request | None:
        return self._requests.get(rid)

    def list(self, status: str | None = None) -> list[Request]:
        return [r for r in self._requests.values() if status is None or r.status == status]

    def approve(self, rid: str, who: Reviewer, comment: str = "") -> Request:
        req = self._decidable(rid, who)
        if any(a["by"] == who.name for a in req.approvals):
            raise ReviewError(409, f"{who.name} already approved request {rid}")
        req.approvals.append({"by": who.name, "comment": comment, "at": self.clock.seconds()})
        if len(req.approvals) >= req.settings.min_approvals:
            self._end(req, "approved", ", ".join(a["by"] for a in req.approvals), comment or None)
        else:
            self._event("approval", req)
        return req

    def refuse(self, rid: str, why: str) -> None:
        """End a pending request as denied by the gateway itself (a check it depends on failed)."""
        req = self._requests.get(rid)
        if req is not None:
            self._end(req, "denied", "gateway", why)

    def deny(self, rid: str, who: Reviewer, reason: str) -> Request:
        req = self._decidable(rid, who)
        self._end(req, "denied", who.name, reason)
        return req

    def _decidable(self, rid: str, who: Reviewer) -> Request:
        req: Request = in_state(self._requests.get(rid), "request", rid, "pending")
        check_reviewer(who, req.settings.reviewers, f"reviewer groups of rule {req.rule}", req.user,
                       None if req.settings.allow_self_approval
                       else f"rule {req.rule} does not allow approving one's own statements")
        return req

    # --- ending ------------------------------------------------------------------------

    def _end(self, req: Request, status: str, by: str | None, why: str | None) -> None:
        if req.status != "pending":
            return
        req.status, req.decided, req.decided_by, req.why = status, self.clock.seconds(), by, why
        if req.timer is not None and req.timer.active():
            req.timer.cancel()
        req.timer = None
        self._event(status, req)
        self._infos.pop(req.id, None)
        waiter, req.waiter = req.waiter, None
        self._trim()
        if waiter is None or waiter.called or status in ("withdrawn", "break_glass"):
            return  # (withdrawn: the waiter is being cancelled; break_glass: its caller releases it)
        if status == "approved":
            waiter.callback(None)
        elif status == "denied":
            waiter.callback(Deny(f"hoopd: request #{req.id} was denied by {by}: {why}", "42501"))
        else:
            waiter.callback(Deny(f"hoopd: request #{req.id} expired: {why} (rule {req.rule})", "42501"))

    def _trim(self) -> None:
        decided = [r for r in self._requests.values() if r.status != "pending"]
        for r in decided[:max(0, len(decided) - KEEP_DECIDED)]:
            del self._requests[r.id]

    def _event(self, event: str, req: Request) -> None:
        info = self._infos.get(req.id)
        if self.record is not None and info is not None:
            try:
                fields = {k: v for k, v in req.summary().items() if k not in ("groups", "reviewers")}
                self.record(info, "review", {"event": event, **fields})  # (a ``review`` journal record)
            except Exception:  # (the journal logged why; the decision itself stands)
                pass
        for listener in list(self.listeners):
            try:
                listener(event, req)
            except Exception:
                log.failure("review listener failed on {event} of {rid}", event=event, rid=req.id)
