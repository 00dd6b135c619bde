"""PolicyStage on plain message bodies: Query, Parse, FunctionCall, Close; prepared
statement memory across messages; another stage's denial; malformed input."""
from __future__ import annotations

import struct
from typing import Any

import pytest

from hoopd.identity.base import Identity
from hoopd.pgwire import messages as m
from hoopd.policy import classify as C
from hoopd.policy.statement import StatementInfo
from hoopd.policy.classify import Classifier
from hoopd.policy.decide import Policy
from hoopd.policy.rules import Rule
from hoopd.policy.stage import PolicySession, PolicyStage
from hoopd.session import Deny, SessionInfo
from tests.test_journal_helpers import Talk
from tests.test_policy_levels import READ_ONLY_BYPASS, READ_ONLY_ROUTINE


def _session(level: str | None = "read_only", app: str = "psql") -> SessionInfo:
    s = SessionInfo(id="s1", peer="127.0.0.1:5000", started=0.0, identity=Identity("alice", frozenset({"dev"})),
                    connection="shop", level=level, application_name=app)
    return s


def Q(sql: str) -> bytes:
    return m.query(sql)[5:]


def P(sql: str, name: str = "") -> bytes:
    return m.frame(b"P", m.cstr(name) + m.cstr(sql) + struct.pack("!h", 0))[5:]


def F(oid: int = 764) -> bytes:  # lo_import's OID
    return struct.pack("!ih", oid, 0) + struct.pack("!h", 1) + struct.pack("!i", 3) + b"abc" + struct.pack("!h", 0)


def Close(name: str, kind: bytes = b"S") -> bytes:
    return kind + m.cstr(name)


@pytest.fixture
def stage() -> PolicyStage:
    return PolicyStage(Policy(), Classifier())


_opened: dict[tuple[int, int], Talk] = {}


def _talk(stage: PolicyStage, s: SessionInfo) -> Talk:
    """The session's PolicySession, opened on first use (one per stage and session)."""
    key = (id(stage), id(s))
    if key not in _opened:
        _opened[key] = Talk(stage, s)
    return _opened[key]


def _state(stage: PolicyStage, s: SessionInfo) -> PolicySession:
    return _talk(stage, s).stage


def _run(stage: PolicyStage, s: SessionInfo, mtype: bytes, body: bytes) -> Deny | None:
    v = _talk(stage, s).c(mtype, body)
    assert v is None or isinstance(v, Deny)
    return v


@pytest.fixture(autouse=True)
def _forget_sessions() -> Any:
    yield
    _opened.clear()


def test_interface(stage: PolicyStage) -> None:
    assert stage.name == "policy"
    assert stage.client_types == set(b"QPFC") and stage.server_types == frozenset() == stage.rewrites
    s = _session()
    assert isinstance(_state(stage, s), PolicySession)
    assert _talk(stage, s).s((b"D", b"")) == [None]


@pytest.mark.parametrize("sql", READ_ONLY_BYPASS)
def test_bypass_corpus_refused_through_query_and_parse(stage: PolicyStage, sql: str) -> None:
    s = _session()
    for mtype, body in ((b"Q", Q(sql)), (b"P", P(sql)), (b"P", P(sql, "named"))):
        d = _run(stage, s, mtype, body)
        assert d is not None and d.sqlstate == "42501"
        assert d.message.startswith('hoopd: read_only access to connection "shop" does not allow ')


@pytest.mark.parametrize("sql", READ_ONLY_ROUTINE)
def test_routine_corpus_allowed(stage: PolicyStage, sql: str) -> None:
    assert _run(stage, _session(), b"Q", Q(sql)) is None


def test_whole_query_refused_and_every_statement_decided(stage: PolicyStage) -> None:
    s = _session()
    d = _run(stage, s, b"Q", Q("SELECT 1; DELETE FROM orders; SELECT 2"))
    assert d is not None and d.message.endswith("does not allow delete")
    decisions = _state(stage, s).decisions
    assert [x.allowed for x in decisions] == [True, False, True]


def test_function_call_only_for_admin(stage: PolicyStage) -> None:
    for level in ("read_only", "read_write"):
        d = _run(stage, _session(level), b"F", F())
        assert d is not None and d.message == (f'hoopd: {level} access to connection "shop" does not allow '
                                               "function_call (FunctionCall)")
    assert _run(stage, _session("admin"), b"F", F()) is None
    ruled = PolicyStage(Policy([Rule("no-fastpath", "deny", kinds=frozenset({"function_call"}))]), Classifier())
    d = _run(ruled, _session("admin"), b"F", F())
    assert d is not None and 'rule "no-fastpath"' in d.message


def test_sql_prepare_then_execute_in_later_queries(stage: PolicyStage) -> None:
    admin, ro = _session("admin"), _session("read_only")
    # a read_only session cannot prepare a write...
    assert _run(stage, ro, b"Q", Q("PREPARE w AS DELETE FROM orders")) is not None
    assert "w" not in _state(stage, ro).prepared
    # ...and what it prepares, it may execute
    assert _run(stage, ro, b"Q", Q("PREPARE r(int) AS SELECT * FROM orders WHERE id = $1")) is None
    assert _run(stage, ro, b"Q", Q("EXECUTE r(1)")) is None
    assert _run(stage, ro, b"Q", Q("EXECUTE unknown")) is not None
    # memory is per session
    assert _run(stage, admin, b"Q", Q("EXECUTE r(1)")) is None  # admin may run opaque statements
    assert "r" not in _state(stage, admin).prepared


def test_execute_of_a_named_parse_has_its_effects() -> None:
    stage = PolicyStage(Policy([Rule("no-mass-delete", "deny", without_where=True)]), Classifier())
    s = _session("read_write")
    assert _run(stage, s, b"P", P("SELECT 1", "S_1")) is None
    assert _run(stage, s, b"Q", Q('EXECUTE "S_1"')) is None
    assert _run(stage, s, b"Q", Q("EXECUTE S_1")) is not None  # that is s_1: unknown, opaque
    # pipelined: the protocol-level statement is named and then run through SQL
    assert _run(stage, s, b"P", P("DELETE FROM orders", "S_2")) is not None  # refused at Parse already
    assert "S_2" not in _state(stage, s).prepared
    assert _run(stage, s, b"P", P("DELETE FROM orders WHERE id = $1", "S_3")) is None
    assert _state(stage, s).prepared.get("S_3").kinds == {"delete"}
    # Close forgets it; EXECUTE is then opaque (refused below admin without a rule)
    assert _run(stage, s, b"C", Close("S_3")) is None
    assert "S_3" not in _state(stage, s).prepared
    assert _run(stage, s, b"Q", Q('EXECUTE "S_3"(1)')) is not None
    assert _run(stage, s, b"C", Close("portal", b"P")) is None


def test_prepare_and_execute_in_one_query(stage: PolicyStage) -> None:
    s = _session()
    assert _run(stage, s, b"Q", Q("PREPARE a AS SELECT 1; EXECUTE a; DEALLOCATE a; PREPARE b AS SELECT 2")) is None
    reg = _state(stage, s).prepared
    assert "a" not in reg and "b" in reg
    assert _run(stage, s, b"Q", Q("DISCARD ALL")) is None and len(reg) == 0


def test_another_stage_denial_undoes_the_registration(stage: PolicyStage) -> None:
    s = _session()
    t = _talk(stage, s)
    assert t.c(b"Q", Q("PREPARE a AS SELECT 1"), denied_after=Deny("journal unavailable")) is None
    assert "a" not in _state(stage, s).prepared
    assert t.c(b"P", P("SELECT 1", "S_9"), denied_after=Deny("x")) is None
    assert "S_9" not in _state(stage, s).prepared
    assert _run(stage, s, b"P", P("SELECT 1", "S_8")) is None
    t.c(b"C", Close("S_8"), denied_after=Deny("x"))
    assert "S_8" in _state(stage, s).prepared
    # a denial of another message (the same bytes, sent again) undoes nothing
    assert _run(stage, s, b"Q", Q("PREPARE c AS SELECT 1")) is None
    t.denied(b"Q", Q("PREPARE c AS SELECT 1"), Deny("x"))
    assert "c" in _state(stage, s).prepared


def test_rules_see_identity_and_application() -> None:
    policy = Policy([Rule("no-psql-orders", "deny", relations=("orders",), applications=("psql",),
                          groups=("dev",), users=("alice",), message="use the app")])
    stage = PolicyStage(policy, Classifier())
    d = _run(stage, _session(app="psql"), b"Q", Q("SELECT * FROM orders"))
    assert d is not None and d.message == ('hoopd: statement denied by rule "no-psql-orders" (SELECT): '
                                           "use the app")
    assert _run(stage, _session(app="shop-api"), b"Q", Q("SELECT * FROM orders")) is None


def test_no_level_or_no_identity_refuses() -> None:
    stage = PolicyStage(Policy(), Classifier())
    assert _run(stage, _session(level=None), b"Q", Q("SELECT 1")) is not None
    s = _session()
    s.identity = None
    assert _run(stage, s, b"Q", Q("SELECT 1")) is None  # level decides; rules on users then never match


def test_empty_query_is_allowed(stage: PolicyStage) -> None:
    assert _run(stage, _session(), b"Q", Q("")) is None
    assert _run(stage, _session(), b"P", P("", "e")) is None


@pytest.mark.parametrize("mtype,body", [
    (b"Q", b"SELECT 1"),            # no terminator
    (b"Q", b"SELECT 1\0DROP\0"),    # trailing bytes after the string
    (b"P", b"name\0SELECT 1\0"),    # no parameter count
    (b"F", b"\0\0"),
])
def test_malformed_messages_are_refused(stage: PolicyStage, mtype: bytes, body: bytes) -> None:
    d = _run(stage, _session(), mtype, body)
    assert d is not None and d.sqlstate == "08P01"


def test_internal_error_fails_closed(stage: PolicyStage, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(sql: str) -> str:
        raise RuntimeError("bug")

    monkeypatch.setattr(C, "_normalize", boom)
    d = _run(stage, _session("admin"), b"Q", Q("SELECT 42"))
    assert d is not None and d.message == "hoopd: statement could not be classified; refused"


def test_decisions_are_recorded() -> None:
    records: list[tuple[str, str, dict]] = []
    policy = Policy([Rule("ok-orders", "allow", relations=("orders",)),
                     Rule("ask", "review", kinds=frozenset({"update"}))])
    stage = PolicyStage(policy, Classifier(), record=lambda s, kind, f: records.append((s.id, kind, f)))
    s = _session("read_write")
    assert _run(stage, s, b"Q", Q("SELECT 1; SELECT * FROM orders")) is None
    assert [(r[1], r[2]["via"], r[2]["index"], r[2]["action"], r[2].get("rule")) for r in records] == [
        ("policy", "Q", 1, "allow", "ok-orders")]  # allowed by the level alone: no record
    records.clear()
    assert _run(stage, s, b"P", P("UPDATE customers SET name = 'x' WHERE id = 1")) is not None
    (r,) = records
    assert r[2]["action"] == "review" and r[2]["via"] == "P" and "the rule names no reviewers" in r[2]["message"]
    records.clear()
    assert _run(stage, s, b"F", F()) is not None
    assert records[0][2]["action"] == "deny" and records[0][2]["statement"]["kind"] == "function_call"


def test_unrecordable_decision_refuses() -> None:
    def broken(*a: object) -> None:
        raise OSError("disk full")

    stage = PolicyStage(Policy([Rule("ok", "allow")]), Classifier(), record=broken)
    d = _run(stage, _session("read_write"), b"Q", Q("SELECT 1"))
    assert d is not None and "could not be recorded" in d.message
    # nothing to record (allowed by the level alone): passes
    assert _run(PolicyStage(Policy(), Classifier(), record=broken), _session(), b"Q", Q("SELECT 1")) is None
