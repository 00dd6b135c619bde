"""ReviewStage: holds a Query or Parse the policy sent to review (``msg.review``, the
policy's review decisions) until reviewers decide (hoopd.review.requests).

Nothing of the held message reaches PostgreSQL, and the relay keeps every later client
message queued behind it (pipelines keep their order). The client gets a notice at
once; approval forwards the message as if nothing had happened, a denial or expiry
answers 42501, a cancel 57014. Holding inside an open transaction keeps it open, with
its locks, while the reviewers look (``in_transaction = "refuse"`` on the rule refuses
instead; the policy stage applies it).
"""
from __future__ import annotations

from hoopd.pgwire.conversation import ClientMessage, Conversation, ServerMessage
from hoopd.pgwire.types import FE
from hoopd.review.requests import Reviews
from hoopd.session import Deny, Hold, SessionInfo


class ReviewStage:
    name = "review"
    client_types = frozenset({FE.QUERY, FE.PARSE})
    server_types: frozenset[int] = frozenset()
    rewrites: frozenset[int] = frozenset()

    def __init__(self, reviews: Reviews) -> None:
        self.reviews = reviews

    def open(self, session: SessionInfo, conversation: Conversation) -> "ReviewSession":
        return ReviewSession(self.reviews, session)


class ReviewSession:
    def __init__(self, reviews: Reviews, info: SessionInfo) -> None:
        self.reviews = reviews
        self.info = info

    def client(self, msg: ClientMessage) -> Hold | None:
        decisions = msg.review
        if not decisions:
            return None
        first = decisions[0]
        text = ";\n".join(d.statement.text for d in decisions)
        rules = list(dict.fromkeys(d.rule for d in decisions))
        _, hold = self.reviews.open(self.info, text, ", ".join(rules), first.message, first.review)
        return hold

    def server(self, msg: ServerMessage) -> None:
        return None

    def denied(self, msg: ClientMessage, deny: Deny) -> None:
        pass

    def oversize(self, from_client: bool, mtype: int, length: int) -> None:
        pass

    def close(self, reason: str) -> None:
        pass
