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

A read_only statement that calls functions is decided against the session database's
own functions (FunctionCatalogs): when the catalog must be read first (never read, older
than its max age, a DDL statement passed, or a name it does not know), the stage answers
a Deferred and the relay holds the client's stream until it is decided.

With ``record`` (e.g. JournalStage.record), every deny and review decision, and every
allow a rule made, is written as a ``policy`` record before the message goes on; when
that write fails, the message is refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet.defer import CancelledError

from hoopd.log import get_logger
from hoopd.pgwire.encodings import TextError, canonical
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.messages import decode_close_or_describe, decode_function_call, decode_parse, decode_query
from hoopd.policy.catalog import is_true
from hoopd.policy.classify import Classifier, default_classifier
from hoopd.policy.statement import StatementInfo, unparseable
from hoopd.policy.decide import Decision, Policy
from hoopd.policy.functions import EMPTY, FunctionCatalogs, UserFunctions, unresolved
from hoopd.policy.prepared import PreparedRegistry
from hoopd.policy.rules import Context
from hoopd.session import Deny, SessionInfo, Verdict

log = get_logger("hoopd.policy")
DEFAULT_MAX_STATEMENT_BYTES = 256 << 10
_REGISTRY_KINDS = frozenset({"prepare", "deallocate", "discard"})
_CATALOG_KINDS = frozenset({"ddl", "utility", "do", "call", "unparseable"})  # may change the function catalog


@dataclass
class SessionPolicy:
    """The policy's state for one session."""

    prepared: PreparedRegistry = field(default_factory=PreparedRegistry)
    decisions: list[Decision] = field(default_factory=list)  # of the last message decided
    undo: tuple[bytes, PreparedRegistry] | None = None  # registry before the last message changed it
    context: Context | None = None  # rebuilt when what it is made of changes (see _context)
    context_of: tuple = ()


def _text_bytes(mtype: bytes, body: bytes) -> int:
    """Length of the statement text in a Query or Parse body (malformed: the whole body)."""
    if mtype == b"Q":
        return len(body) - 1
    start = body.find(b"\0") + 1
    end = body.find(b"\0", start)
    return end - start if start and end >= 0 else len(body)


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
                 count: Callable[[str, str], None] | None = None,
                 max_statement_bytes: int = DEFAULT_MAX_STATEMENT_BYTES,
                 functions: FunctionCatalogs | None = None) -> None:
        self.policy = policy  # replace it on reload; sessions pick it up with their next message
        self.max_statement_bytes = max_statement_bytes  # longer texts are refused below admin
        self.classifier = classifier or default_classifier
        self.record = record  # journals decisions made by a rule, and every refusal
        self.count = count  # (kind, action) per decided statement, for metrics
        self.functions = functions  # None: read_only may call built-ins only

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
            if mtype in (b"Q", b"P"):
                unreadable = self._unreadable(session, mtype, body)
                if unreadable is not None:
                    return self._refuse(session, st, mtype, *unreadable)
                if mtype == b"Q":
                    return self._statements(session, st, mtype, body, decode_query(body, session.sql_text), None)
                p = decode_parse(body, session.sql_text)
                return self._statements(session, st, mtype, body, p.query, p.name or None)
            if mtype == b"F":
                return self._decide(session, st, mtype, [function_call_info(decode_function_call(body).oid)])
            if mtype == b"C":
                self._close(st, body)
            return None
        except ProtocolError as e:
            return Deny(str(e), e.sqlstate)
        except TextError as e:
            return Deny(f"hoopd: {e}", e.sqlstate)
        except Exception:
            log.failure("policy could not decide; message refused (session {sid})", sid=session.id)
            return Deny("hoopd: statement could not be classified; refused")

    def _unreadable(self, session: SessionInfo, mtype: bytes, body: bytes) -> tuple[str, str] | None:
        """(message, SQLSTATE) when a statement cannot be checked in this session below
        admin: the parser must read the text exactly as the server will (docs/decisions.md)."""
        if session.level == "admin":
            return None
        size = _text_bytes(mtype, body)
        if size > self.max_statement_bytes:
            return (f"hoopd: statement of {size} bytes is longer than the {self.max_statement_bytes}"
                    " bytes the gateway checks ([policy] max_statement_bytes)", "54000")
        if session.settings.get("standard_conforming_strings", "on") != "on":
            return ("hoopd: standard_conforming_strings is off in this session, so the gateway cannot read"
                    " string literals the way the server does; statements are refused", "42501")
        if session.sql_text is None:
            return (f'hoopd: client_encoding "{session.settings.get("client_encoding")}" cannot be read'
                    " faithfully by the gateway; statements are refused (connect with client_encoding=UTF8)",
                    "42501")
        return None

    def _refuse(self, session: SessionInfo, st: SessionPolicy, mtype: bytes, why: str, sqlstate: str,
                infos: list[StatementInfo] | None = None) -> Verdict:
        """Refuse a message for a reason of the session, not of a rule or level; recorded like them."""
        info = infos[0] if infos else unparseable("", why)
        st.decisions = [Decision(False, "deny", None, why, why, info)]
        if self.count is not None:
            self.count(info.kind, "deny")
        if self.record is not None:
            try:
                self.record(session, "policy", {"via": mtype.decode(), "index": 0, **st.decisions[0].record()})
            except Exception:
                log.failure("policy decision not recorded (session {sid})", sid=session.id)
        return Deny(why, sqlstate)

    @staticmethod
    def _lexing_denial(session: SessionInfo, infos: list[StatementInfo]) -> str | None:
        """Below admin, a statement may not change how the server reads later statements:
        standard_conforming_strings stays on, client_encoding stays what it is."""
        if session.level == "admin":
            return None
        for info in infos:
            for name, value in info.lexing:
                if name == "standard_conforming_strings" and not (value is not None and is_true(value)):
                    return (f"hoopd: {session.level} access does not allow turning standard_conforming_strings"
                            f" off ({info.command}): the gateway reads SQL the way the server does only while"
                            " it is on")
                current = session.settings.get("client_encoding", "UTF8")
                if name == "client_encoding" and (value is None or canonical(value) != canonical(current)):
                    return (f"hoopd: {session.level} access does not allow changing client_encoding"
                            f" ({current} to {value if value is not None else 'a computed value'}) inside a session;"
                            " set it when connecting (client_encoding / PGCLIENTENCODING)")
        return None

    def _statements(self, session: SessionInfo, st: SessionPolicy, mtype: bytes, body: bytes, sql: str,
                    prepare_as: str | None) -> Verdict:
        infos = self.classifier.classify(sql, st.prepared)
        lexing = self._lexing_denial(session, infos) if any(i.lexing for i in infos) else None
        if lexing is not None:
            return self._refuse(session, st, mtype, lexing, "42501", infos)
        if session.level == "read_only" and self.functions is not None and any(i.calls or i.operators for i in infos):
            key = (session.connection or "", session.database or "")
            missing = unresolved((c for i in infos for c in i.calls), self.functions.snapshot(*key))
            if self.functions.needs_load(*key, missing=missing):
                d = self.functions.refresh(*key)
                d.addCallback(self._conclude, session, st, mtype, body, infos, prepare_as)
                d.addErrback(self._failed, session)
                return d
            return self._conclude(self.functions.snapshot(*key), session, st, mtype, body, infos, prepare_as)
        return self._conclude(EMPTY, session, st, mtype, body, infos, prepare_as)

    def _conclude(self, functions: UserFunctions | None, session: SessionInfo, st: SessionPolicy, mtype: bytes,
                  body: bytes, infos: list[StatementInfo], prepare_as: str | None) -> Verdict:
        verdict = self._decide(session, st, mtype, infos, functions)
        if verdict is None and self.functions is not None and any(
                i.opaque or not i.kinds.isdisjoint(_CATALOG_KINDS) for i in infos):
            self.functions.changed(session.connection or "")
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

    @staticmethod
    def _failed(f: Any, session: SessionInfo) -> Verdict:
        if not f.check(CancelledError):  # cancelled: the session ended while the catalog was read
            log.failure("policy could not decide; message refused (session {sid})", f, sid=session.id)
        return Deny("hoopd: statement could not be classified; refused")

    def _decide(self, session: SessionInfo, st: SessionPolicy, mtype: bytes,
                infos: list[StatementInfo], functions: UserFunctions | None = EMPTY) -> Verdict:
        st.decisions = decisions = self.policy.decide_all(infos, self._context(session, st), functions)
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
