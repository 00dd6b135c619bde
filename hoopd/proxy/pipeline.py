"""The configured stages in their declared order, and what one session opens of them."""
from __future__ import annotations

from typing import Sequence

from hoopd.log import get_logger
from hoopd.pgwire.conversation import ClientMessage, Conversation
from hoopd.pgwire.types import BE
from hoopd.session import CLIENT_ORDER, SERVER_ORDER, Deny, Observer, SessionInfo, SessionStage, Stage

log = get_logger("hoopd.proxy")


def _ordered(stages: Sequence[Stage], order: Sequence[str], direction: str) -> list[Stage]:
    wanted = [s for s in stages if (s.client_types if direction == "client" else s.server_types)]
    for s in wanted:
        if s.name not in order:
            raise ValueError(f"stage {s.name!r} has no place in the {direction} order {tuple(order)}")
    return sorted(wanted, key=lambda s: order.index(s.name))


class Pipeline:
    """Stages sorted by CLIENT_ORDER / SERVER_ORDER (a stage that wants messages of a
    direction must have a place in its order), plus observers."""

    def __init__(self, stages: Sequence[Stage] = (), observers: Sequence[Observer] = (),
                 client_order: Sequence[str] = CLIENT_ORDER, server_order: Sequence[str] = SERVER_ORDER) -> None:
        self.client_stages = _ordered(stages, client_order, "client")
        self.server_stages = _ordered(stages, server_order, "server")
        # closed in this order and opened in the reverse one: the journal (last of the client
        # order) opens first and closes last, so every other stage may record through it
        self.stages = list(dict.fromkeys([*(s for s in self.server_stages if s not in self.client_stages),
                                          *self.client_stages, *stages]))
        self.observers = list(observers)

    def open(self, info: SessionInfo) -> "SessionStages":
        return SessionStages(self, info)


class SessionStages:
    """One session's stage objects, indexed by message type, and its Conversation."""

    def __init__(self, pipeline: Pipeline, info: SessionInfo) -> None:
        self.info = info
        self.observers = pipeline.observers
        self.conversation = Conversation()
        self.conversation.text = info.sql_text
        # opened last to first, so each stage may write through the ones after it (the journal);
        # a stage with nothing to do for this session (open() answered None) is left out of it
        opened = {s.name: s.open(info, self.conversation) for s in reversed(pipeline.stages)}
        live = {name: obj for name, obj in opened.items() if obj is not None}
        clients = [s for s in pipeline.client_stages if s.name in live]
        servers = [s for s in pipeline.server_stages if s.name in live]
        self.objects: list[SessionStage] = [live[s.name] for s in pipeline.stages if s.name in live]
        self.client_for: list[list[SessionStage]] = [
            [live[s.name] for s in clients if t in s.client_types] for t in range(256)]
        self.server_for: list[list[SessionStage]] = [
            [live[s.name] for s in servers if t in s.server_types] for t in range(256)]
        self.rewrites = frozenset(t for s in servers for t in s.rewrites)
        rows = self.server_for[BE.DATA_ROW]
        self.row_runs = bool(rows) and all(hasattr(s, "server_rows") for s in rows)  # (SessionStage.server_rows)
        self.tracking = bool(servers)  # someone reads responses: keep the conversation exact
        self.closed = False
        for o in self.observers:
            o.session_started(info)

    def denied(self, msg: ClientMessage, deny: Deny, by: SessionStage | None) -> None:
        """Tell every other stage that saw this message type, and the observers."""
        for s in self.client_for[msg.type]:
            if s is not by:
                s.denied(msg, deny)
        for o in self.observers:
            o.message_denied(self.info, msg, deny)

    def close(self, reason: str) -> None:
        """End every stage object (each one's failure is logged; the others still close)."""
        if self.closed:
            return
        self.closed = True
        for s in self.objects:
            try:
                s.close(reason)
            except Exception:
                log.failure("session {sid}: a stage failed to close", sid=self.info.id)
        for o in self.observers:
            o.session_ended(self.info, reason)
