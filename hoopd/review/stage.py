"""ReviewStage: holds a Query the policy sent to review (``msg.review``, the policy's
review decisions), or each Bind of such a Parse, until reviewers decide
(hoopd.review.requests).

In the extended protocol the Parse passes (preparing runs nothing) and each Bind of the
statement is held instead, as a request that shows its parameters: every execution is
approved with the values it runs with (an approved ``delete ... where id = $1`` cannot
run again with another id unreviewed). A refused Bind is answered in protocol order;
the rest of its batch is skipped to the Sync, as after any error.

Nothing of the held message reaches PostgreSQL, and the relay keeps every later client
message queued behind it (pipelines keep their order). The client gets a notice at
once; approval forwards the message as if nothing had happened, a denial or expiry
answers 42501, a cancel 57014. Holding inside an open transaction keeps it open, with
its locks, while the reviewers look (``in_transaction = "refuse"`` on the rule refuses
instead; the policy stage applies it).
"""
from __future__ import annotations

from fnmatch import fnmatchcase

from hoopd.pgwire.conversation import ClientMessage, Conversation, ServerMessage
from hoopd.pgwire.encodings import TextError
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.types import FE
from hoopd.review.requests import Reviews
from hoopd.session import Deny, Hold, SessionInfo


class ReviewStage:
    name = "review"
    client_types = frozenset({FE.QUERY, FE.PARSE, FE.BIND})
    server_types: frozenset[int] = frozenset()
    rewrites: frozenset[int] = frozenset()

    def __init__(self, reviews: Reviews) -> None:
        self.reviews = reviews

    def open(self, session: SessionInfo, conversation: Conversation) -> "ReviewSession":
        return ReviewSession(self.reviews, session, conversation)


MAX_SHOWN = 200  # characters of one parameter a request shows


class ReviewSession:
    def __init__(self, reviews: Reviews, info: SessionInfo, conversation: Conversation) -> None:
        self.reviews = reviews
        self.info = info
        self.conversation = conversation
        self.reviewed: dict[str, tuple[str, tuple]] = {}  # prepared statement needing review -> (text, decisions)

    def client(self, msg: ClientMessage) -> Hold | None:
        if msg.type == FE.BIND:
            return self._bind(msg)
        decisions = msg.review
        if msg.type == FE.PARSE:
            try:
                name = msg.sql(self.info.sql_text).name
            except (ProtocolError, TextError):
                return None  # (the server refuses it itself)
            if decisions:  # preparing runs nothing: each Bind of it is held, with its parameters
                self.reviewed[name] = (";\n".join(d.statement.text for d in decisions), decisions)
            else:
                self.reviewed.pop(name, None)
            return None
        if not decisions:
            return None
        return self._open(";\n".join(d.statement.text for d in decisions), decisions)

    def _open(self, text: str, decisions: tuple) -> Hold | None:
        first = decisions[0]
        rules = ", ".join(dict.fromkeys(d.rule for d in decisions))
        ident = self.info.identity
        groups = ident.groups if ident else ()
        if all(any(fnmatchcase(g, p) for p in d.review.break_glass for g in groups) for d in decisions):
            self.reviews.break_glass(self.info, text, rules, first.message, first.review)
            return None
        _, hold = self.reviews.open(self.info, text, rules, first.message, first.review)
        return hold

    def _bind(self, msg: ClientMessage) -> Hold | None:
        if not self.reviewed:
            return None
        try:
            bind = msg.decoded()
        except ProtocolError:
            return None  # the server refuses it itself
        entry = self.reviewed.get(bind.statement)
        if entry is None:
            return None
        text, decisions = entry
        prepared = self.conversation.prepared.get(bind.statement)
        types = prepared.param_types if prepared is not None else ()
        shown = ", ".join(_shown(p, fmt, types[i] if i < len(types) else 0) for i, (p, fmt) in
                          enumerate(zip(bind.params, _formats(bind.param_formats, len(bind.params)))))
        return self._open(f"{text}\n-- with parameters: {shown or 'none'}", decisions)

    def server(self, msg: ServerMessage) -> None:
        return None

    def denied(self, msg: ClientMessage, deny: Deny) -> None:
        pass

    def oversize(self, from_client: bool, mtype: int, length: int) -> None:
        pass

    def close(self, reason: str) -> None:
        pass


def _formats(codes: tuple[int, ...], n: int) -> tuple[int, ...]:
    """Bind's parameter format codes for ``n`` parameters (none: text; one: for all)."""
    return codes * n if len(codes) == 1 else (codes or (0,) * n)


_BINARY_INTS = {21: 2, 23: 4, 20: 8}
_TEXT_TYPES = frozenset({18, 19, 25, 705, 1042, 1043})


def _shown(p: bytes | None, fmt: int, oid: int) -> str:
    """One Bind parameter as a reviewer reads it."""
    if p is None:
        return "NULL"
    if fmt == 0 or oid in _TEXT_TYPES:
        return repr(p[:MAX_SHOWN].decode("utf-8", "replace"))
    if _BINARY_INTS.get(oid) == len(p):
        return repr(str(int.from_bytes(p, "big", signed=True)))
    return f"<{len(p)} bytes, binary, type oid {oid}>"
