"""PolicyStage: the session Stage that checks Query, Parse and FunctionCall messages.

* ``Q`` (simple query): every statement is classified and decided before any runs; one
  refused statement refuses the whole Query (nothing of it reaches the server).
* ``P`` (Parse): its statement is decided; a named Parse is remembered like a PREPARE.
* ``F`` (FunctionCall): a function called by OID with no SQL; only admin passes (and
  then the rules, with kind ``function_call``).
* ``C`` (Close of a statement) only forgets the name; it is never refused.

Bind/Execute need no check: they run what an allowed Parse prepared.
Per session state lives on the session's PolicySession. Anything that goes wrong while
deciding refuses the message (fail closed).

A read_only statement that calls functions is decided against the session database's
own functions (FunctionCatalogs): when the catalog must be read first (never read, older
than its max age, a DDL statement passed, or a name it does not know), the stage answers
a Deferred and the relay holds the client's stream until it is decided.

With ``record`` (e.g. JournalStage.record), every deny and review decision, and every
allow a rule made, is written as a ``policy`` record before the message goes on; when
that write fails, the message is refused.
"""
from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred

from hoopd.log import get_logger
from hoopd.pgwire.encodings import TextError, canonical
from hoopd.pgwire.errors import ProtocolError
from hoopd.pgwire.conversation import ClientMessage, Conversation, ServerMessage
from hoopd.pgwire.types import FE
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


def _text_bytes(mtype: int, body: bytes) -> int:
    """Length of the statement text in a Query or Parse body (malformed: the whole body)."""
    if mtype == FE.QUERY:
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
    client_types = frozenset({FE.QUERY, FE.PARSE, FE.FUNCTION_CALL, FE.CLOSE})
    server_types: frozenset[int] = frozenset()
    rewrites: frozenset[int] = frozenset()

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
        self.reviewing = False  # a review stage holds statements a review rule with reviewers matched

    def open(self, session: SessionInfo, conversation: Conversation | None = None) -> "PolicySession":
        return PolicySession(self, session)


class PolicySession:
    """The policy's state for one session."""

    def __init__(self, stage: PolicyStage, info: SessionInfo) -> None:
        self.stage = stage
        self.info = info
        self.prepared = PreparedRegistry()
        self.decisions: list[Decision] = []  # of the last message decided
        self.undo: tuple[ClientMessage, PreparedRegistry] | None = None  # registry before the last message changed it
        self.context: Context | None = None  # rebuilt when what it is made of changes (see _context)
        self.context_of: tuple = ()

    def server(self, msg: ServerMessage) -> None:
        return None

    def oversize(self, from_client: bool, mtype: int, length: int) -> None:
        pass

    def close(self, reason: str) -> None:
        pass

    def denied(self, msg: ClientMessage, deny: Deny) -> None:
        """Another stage refused a message we allowed: forget what it would have prepared."""
        if self.undo is not None and self.undo[0] is msg:
            self.prepared = self.undo[1]
        self.undo = None

    def client(self, msg: ClientMessage) -> Verdict | Deferred[Verdict]:
        session = self.info
        self.undo = None
        t = msg.type
        try:
            if t == FE.QUERY or t == FE.PARSE:
                unreadable = self._unreadable(t, msg.body)
                if unreadable is not None:
                    return self._refuse(t, *unreadable)
                if t == FE.QUERY:
                    return self._statements(msg, msg.sql(session.sql_text), None)
                p = msg.sql(session.sql_text)
                return self._statements(msg, p.query, p.name or None)
            if t == FE.FUNCTION_CALL:
                return self._decide(t, [function_call_info(msg.decoded().oid)])
            if t == FE.CLOSE:
                self._close(msg)
            return None
        except ProtocolError as e:
            return Deny(str(e), e.sqlstate)
        except TextError as e:
            return Deny(f"hoopd: {e}", e.sqlstate)
        except Exception:
            log.failure("policy could not decide; message refused (session {sid})", sid=session.id)
            return Deny("hoopd: statement could not be classified; refused")

    def _unreadable(self, mtype: int, body: bytes) -> tuple[str, str] | None:
        """(message, SQLSTATE) when a statement cannot be checked in this session below
        admin: the parser must read the text exactly as the server will (docs/decisions.md)."""
        session = self.info
        if session.level == "admin":
            return None
        size = _text_bytes(mtype, body)
        limit = self.stage.max_statement_bytes
        if size > limit:
            return (f"hoopd: statement of {size} bytes is longer than the {limit}"
                    " bytes the gateway checks ([policy] max_statement_bytes)", "54000")
        if session.settings.get("standard_conforming_strings", "on") != "on":
            return ("hoopd: standard_conforming_strings is off in this session, so the gateway cannot read"
                    " string literals the way the server does; statements are refused", "42501")
        if session.sql_text is None:
            return (f'hoopd: client_encoding "{session.settings.get("client_encoding")}" cannot be read'
                    " faithfully by the gateway; statements are refused (connect with client_encoding=UTF8)",
                    "42501")
        return None

    def _refuse(self, mtype: int, why: str, sqlstate: str, infos: list[StatementInfo] | None = None) -> Verdict:
        """Refuse a message for a reason of the session, not of a rule or level; recorded like them."""
        info = infos[0] if infos else unparseable("", why)
        self.decisions = [Decision(False, "deny", None, why, why, info)]
        stage = self.stage
        if stage.count is not None:
            stage.count(info.kind, "deny")
        if stage.record is not None:
            try:
                stage.record(self.info, "policy", {"via": chr(mtype), "index": 0, **self.decisions[0].record()})
            except Exception:
                log.failure("policy decision not recorded (session {sid})", sid=self.info.id)
        return Deny(why, sqlstate)

    def _lexing_denial(self, infos: list[StatementInfo]) -> str | None:
        """Below admin, a statement may not change how the server reads later statements:
        standard_conforming_strings stays on, client_encoding stays what it is."""
        session = self.info
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

    def _statements(self, msg: ClientMessage, sql: str, prepare_as: str | None) -> Verdict | Deferred[Verdict]:
        session = self.info
        stage = self.stage
        infos = stage.classifier.classify(sql, self.prepared)
        if msg.type == FE.QUERY and len(infos) > 1:
            msg.statements = tuple(i.text for i in infos)
        msg.kinds = infos[0].kinds if len(infos) == 1 else frozenset().union(*(i.kinds for i in infos))
        msg.touched = ((infos[0].relations, infos[0].writes) if len(infos) == 1 else
                       (tuple(sorted({r for i in infos for r in i.relations})), any(i.writes for i in infos)))
        lexing = self._lexing_denial(infos) if any(i.lexing for i in infos) else None
        if lexing is not None:
            return self._refuse(msg.type, lexing, "42501", infos)
        functions = stage.functions
        if session.level == "read_only" and functions is not None and any(
                i.calls or i.operators or i.relations or i.types for i in infos):
            key = (session.connection or "", session.database or "")
            missing = unresolved((c for i in infos for c in i.calls), functions.snapshot(*key))
            if functions.needs_load(*key, missing=missing):
                return functions.refresh(*key).addCallback(self._conclude, msg, infos, prepare_as).addErrback(
                    self._failed)
            return self._conclude(functions.snapshot(*key), msg, infos, prepare_as)
        return self._conclude(EMPTY, msg, infos, prepare_as)

    def _conclude(self, functions: UserFunctions | None, msg: ClientMessage, infos: list[StatementInfo],
                  prepare_as: str | None) -> Verdict:
        verdict = self._decide(msg.type, infos, functions, msg)
        catalogs = self.stage.functions
        if verdict is None and catalogs is not None and any(
                i.opaque or not i.kinds.isdisjoint(_CATALOG_KINDS) for i in infos):
            catalogs.changed(self.info.connection or "")
        if verdict is None and (prepare_as or any(i.kind in _REGISTRY_KINDS for i in infos)):
            self.undo = (msg, self.prepared.copy())
            self.prepared.apply_all(infos)
            if prepare_as and infos:
                merged = infos[0]
                for i in infos[1:]:
                    merged = merged.with_effects_of(i)
                self.prepared.add(prepare_as, merged)
        return verdict

    def _context(self) -> Context:
        session = self.info
        of = (session.connection, session.level, session.identity, session.application_name)
        if self.context is None or of != self.context_of:
            ident = session.identity
            self.context = Context(session.connection or "", session.level, ident.name if ident else None,
                                   ident.groups if ident else frozenset(), session.application_name)
            self.context_of = of
        return self.context

    def _failed(self, f: Any) -> Verdict:
        if not f.check(CancelledError):  # cancelled: the session ended while the catalog was read
            log.failure("policy could not decide; message refused (session {sid})", f, sid=self.info.id)
        return Deny("hoopd: statement could not be classified; refused")

    def _decide(self, mtype: int, infos: list[StatementInfo], functions: UserFunctions | None = EMPTY,
                msg: ClientMessage | None = None) -> Verdict:
        stage = self.stage
        self.decisions = decisions = stage.policy.decide_all(infos, self._context(), functions)
        denied = next((d for d in decisions if not d.allowed), None)
        if stage.count is not None:
            for d in decisions:
                stage.count(d.statement.kind, d.action)
        if stage.record is not None:
            try:
                for i, d in enumerate(decisions):
                    if d.rule is not None or not d.allowed:
                        stage.record(self.info, "policy", {"via": chr(mtype), "index": i, **d.record()})
            except Exception:
                log.failure("policy decision not recorded; message refused (session {sid})", sid=self.info.id)
                return Deny("hoopd: the policy decision could not be recorded; statement refused")
        if denied is None:
            return None
        held = [d for d in decisions if not d.allowed]
        if msg is not None and stage.reviewing and all(d.action == "review" and d.review is not None for d in held):
            if self.info.transaction_status != "I" and any(d.review.in_transaction == "refuse" for d in held):
                return Deny(f'hoopd: statement needs approval by rule "{denied.rule}", which refuses it inside'
                            " an open transaction; run it outside one", "25001")
            msg.review = tuple(held)  # the review stage holds it until reviewers decide
            return None
        return Deny(denied.message)

    def _close(self, msg: ClientMessage) -> None:
        try:
            kind, name = msg.decoded()
        except ProtocolError:
            return  # the server answers malformed messages itself
        if kind == "S" and name in self.prepared:
            self.undo = (msg, self.prepared.copy())
            self.prepared.remove(name)
