"""PolicyStage: the session Stage that checks Query, Parse and FunctionCall messages.

* ``Q`` (simple query): every statement is classified and decided before any runs; one
  refused statement refuses the whole Query (nothing of it reaches the server).
* ``P`` (Parse): its statement is decided; a named Parse is remembered like a PREPARE.
* ``F`` (FunctionCall): a function called by OID with no SQL; only admin passes (and
  then the rules, with kind ``function_call``).
* ``C`` (Close of a statement) only forgets the name; it is never refused.

Bind/Execute need no check: they run what an allowed Parse prepared.
Per session state lives in ``session.extra["policy"]`` (a SessionPolicy). Anything that
goes wrong while deciding refuses the message (fail closed).

With ``record`` (e.g. JournalStage.record), every deny and review decision, and every
allow a rule made, is written as a ``policy`` record before the message goes on; when
that write fails, the message is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from hoopd.log import get_logger
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.messages import decode_close_or_describe, decode_function_call, decode_parse, decode_query
from hoopd.policy.classify import Classifier, StatementInfo, default_classifier
from hoopd.policy.decide import Decision, Policy
from hoopd.policy.prepared import PreparedRegistry
from hoopd.policy.rules import Context
from hoopd.session import Deny, SessionInfo, Verdict

log = get_logger("hoopd.policy")
_REGISTRY_KINDS = frozenset({"prepare", "deallocate", "discard"})


@dataclass
class SessionPolicy:
    """The policy's state for one session."""

    prepared: PreparedRegistry = field(default_factory=PreparedRegistry)
    decisions: list[Decision] = field(default_factory=list)  # of the last message decided
    undo: tuple[bytes, PreparedRegistry] | None = None  # registry before the last message changed it
    context: Context | None = None  # rebuilt when what it is made of changes (see _context)
    context_of: tuple = ()


def function_call_info(oid: int) -> StatementInfo:
    """A FunctionCall message as a statement: no SQL, only a function OID."""
    return StatementInfo("function_call", "FunctionCall", f"FunctionCall oid {oid}",
                         frozenset({"function_call"}), functions=(f"oid:{oid}",), writes=True)


class PolicyStage:
    name = "policy"
    client_types = frozenset({b"Q", b"P", b"F", b"C"})
    server_types: frozenset[bytes] = frozenset()

    def __init__(self, policy: Policy, classifier: Classifier | None = None,
                 record: Callable[[SessionInfo, str, dict[str, Any]], None] | None = None,
                 count: Callable[[str, str], None] | None = None) -> None:
        self.policy = policy  # replace it on reload; sessions pick it up with their next message
        self.classifier = classifier or default_classifier
        self.record = record  # journals decisions made by a rule, and every refusal
        self.count = count  # (kind, action) per decided statement, for metrics

    @staticmethod
    def state(session: SessionInfo) -> SessionPolicy:
        st = session.extra.get("policy")
        if st is None:
            st = session.extra["policy"] = SessionPolicy()
        return st

    def session_started(self, session: SessionInfo) -> None:
        self.state(session)

    def session_ended(self, session: SessionInfo, reason: str) -> None:
        pass

    def server_message(self, session: SessionInfo, mtype: bytes, body: bytes) -> bytes | None:
        return None

    def oversize_message(self, session: SessionInfo, from_client: bool, mtype: bytes, length: int) -> None:
        pass

    def message_denied(self, session: SessionInfo, mtype: bytes, body: bytes, deny: Deny) -> None:
        """Another stage refused a message we allowed: forget what it would have prepared."""
        st = self.state(session)
        if st.undo is not None and st.undo[0] == body:
            st.prepared = st.undo[1]
        st.undo = None

    def client_message(self, session: SessionInfo, mtype: bytes, body: bytes) -> Verdict:
        st = self.state(session)
        st.undo = None
        try:
            if mtype == b"Q":
                return self._statements(session, st, mtype, body, decode_query(body), None)
            if mtype == b"P":
                p = decode_parse(body)
                return self._statements(session, st, mtype, body, p.query, p.name or None)
            if mtype == b"F":
                return self._decide(session, st, mtype, [function_call_info(decode_function_call(body).oid)])
            if mtype == b"C":
                self._close(st, body)
            return None
        except ProtocolError as e:
            return Deny(str(e), e.sqlstate)
        except Exception:
            log.failure("policy could not decide; message refused (session {sid})", sid=session.id)
            return Deny("hoopd: statement could not be classified; refused")

    def _statements(self, session: SessionInfo, st: SessionPolicy, mtype: bytes, body: bytes, sql: str,
                    prepare_as: str | None) -> Verdict:
        infos = self.classifier.classify(sql, st.prepared)
        verdict = self._decide(session, st, mtype, infos)
        if verdict is None and (prepare_as or any(i.kind in _REGISTRY_KINDS for i in infos)):
            st.undo = (body, st.prepared.copy())
            st.prepared.apply_all(infos)
            if prepare_as and infos:
                merged = infos[0]
                for i in infos[1:]:
                    merged = merged.with_effects_of(i)
                st.prepared.add(prepare_as, merged)
        return verdict

    @staticmethod
    def _context(session: SessionInfo, st: SessionPolicy) -> Context:
        of = (session.connection, session.level, session.identity, session.application_name)
        if st.context is None or of != st.context_of:
            ident = session.identity
            st.context = Context(session.connection or "", session.level, ident.name if ident else None,
                                 ident.groups if ident else frozenset(), session.application_name)
            st.context_of = of
        return st.context

    def _decide(self, session: SessionInfo, st: SessionPolicy, mtype: bytes,
                infos: list[StatementInfo]) -> Verdict:
        st.decisions = decisions = self.policy.decide_all(infos, self._context(session, st))
        denied = next((d for d in decisions if not d.allowed), None)
        if self.count is not None:
            for d in decisions:
                self.count(d.statement.kind, d.action)
        if self.record is not None:
            try:
                for i, d in enumerate(decisions):
                    if d.rule is not None or not d.allowed:
                        self.record(session, "policy", {"via": mtype.decode(), "index": i, **d.record()})
            except Exception:
                log.failure("policy decision not recorded; message refused (session {sid})", sid=session.id)
                return Deny("hoopd: the policy decision could not be recorded; statement refused")
        return Deny(denied.message) if denied is not None else None

    @staticmethod
    def _close(st: SessionPolicy, body: bytes) -> None:
        try:
            kind, name = decode_close_or_describe(body)
        except ProtocolError:
            return  # the server answers malformed messages itself
        if kind == "S" and name in st.prepared:
            st.undo = (body, st.prepared.copy())
            st.prepared.remove(name)
