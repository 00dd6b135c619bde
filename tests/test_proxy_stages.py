"""The stage seam and the registry, with the gateway in-process and a real PostgreSQL.

Blocking clients (psycopg) run in threads; the gateway runs in the test's reactor.
"""
from __future__ import annotations

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from hoopd.config import parse
from hoopd.proxy.pipeline import Pipeline
from hoopd.session import Deny, SessionInfo
from hoopd.tap import GatewayService
from tests.gateway import USERS, free_port, _VERIFIERS
from tests.reactorwait import wait_for

pytestmark = pytest.mark.integration


class Recorder:
    """Denies any Query/Parse whose text mentions 'forbidden'; can hold statements mentioning 'hold'."""

    name = "recorder"
    client_types = frozenset(b"QP")
    server_types = frozenset(b"C")
    rewrites: frozenset[int] = frozenset()

    def __init__(self) -> None:
        self.started: list[str] = []
        self.ended: list[tuple[str, str]] = []
        self.denied: list[bytes] = []
        self.tags: list[bytes] = []
        self.holds: list[defer.Deferred] = []

    def open(self, s: SessionInfo, conversation) -> "RecorderSession":
        self.started.append(s.id)
        return RecorderSession(self, s)

    def decide(self, body: bytes):
        if b"hold" in body:
            d = defer.Deferred()
            self.holds.append(d)
            return d
        if b"forbidden" in body:
            return Deny("hoopd: statement denied by rule \"no-forbidden\"", hint="ask a DBA")
        return None


class RecorderSession:
    def __init__(self, stage: Recorder, info: SessionInfo) -> None:
        self.stage, self.info = stage, info

    def client(self, msg):
        return self.stage.decide(msg.body)

    def denied(self, msg, deny) -> None:
        self.stage.denied.append(msg.body)

    def server(self, msg):
        self.stage.tags.append(msg.body)
        return None

    def oversize(self, *a) -> None:
        pass

    def close(self, reason) -> None:
        self.stage.ended.append((self.info.id, reason))


def pipeline(*stages) -> Pipeline:
    names = [s.name for s in stages]
    return Pipeline(stages, client_order=names, server_order=names)


class Observer(Recorder):
    """A second stage: must hear of the first one's denials."""

    name = "observer"

    def decide(self, body: bytes):
        return None


@pytest.fixture
def gateway(pg):
    port = free_port()
    cfg = parse({
        "listen": {"postgres": f"tcp:{port}:interface=127.0.0.1"},
        "users": [{"name": "dev", "password_hash": _VERIFIERS["dev"], "groups": ["dba"]}],
        "connections": {"shop": {"host": "127.0.0.1", "port": pg.port, "tls": "disable",
                                 "credentials": {"default": {"user": "app_scram", "password": pg.app_scram.password}},
                                 "access": {"dba": "admin"}}},
    })
    svc = GatewayService(cfg, reactor)
    rec, obs = Recorder(), Observer()
    svc.factory.pipeline = pipeline(rec, obs)
    svc.startService()
    dsn = f"host=127.0.0.1 port={port} dbname=shop user=dev password={USERS['dev'][0]} sslmode=disable"
    yield svc, rec, obs, dsn
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


def in_thread(fn, *args, **kw):
    return threads.deferToThread(fn, *args, **kw)


@pytest_twisted.inlineCallbacks
def test_denied_statement_keeps_session_and_transaction_semantics(gateway):
    svc, rec, obs, dsn = gateway

    def scenario():
        out = {}
        with psycopg.connect(dsn, autocommit=True) as c:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute("select 'forbidden'")
            out["msg"], out["hint"] = e.value.diag.message_primary, e.value.diag.message_hint
            out["after"] = c.execute("select 1").fetchone()[0]
            out["status_idle"] = c.info.transaction_status.name
            # inside a transaction the denial aborts it, as PostgreSQL would
            c.execute("begin")
            c.execute("select 1")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("select 'forbidden'")
            out["status_failed"] = c.info.transaction_status.name
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                c.execute("select 1")
            c.execute("rollback")
            # extended protocol (Parse carries the text)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("select %s::text, 'forbidden'", ("x",))
            out["extended_after"] = c.execute("select %s::int", (7,)).fetchone()[0]
            # pipeline: the denied statement fails in place; later ones in the same sync are skipped
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                with c.pipeline():
                    c.execute("select %s::int", (1,))
                    c.execute("select 'forbidden' || %s", ("x",))
            out["pipeline_after"] = c.execute("select 2").fetchone()[0]
            # the client's own errors pass through untouched: only marker errors are rewritten
            with pytest.raises(psycopg.errors.SyntaxError) as e:
                c.execute("selec 1")
            out["own_error"] = e.value.diag.message_primary
        return out

    out = yield in_thread(scenario)
    assert out["msg"] == 'hoopd: statement denied by rule "no-forbidden"' and out["hint"] == "ask a DBA"
    assert out["after"] == 1 and out["status_idle"] == "IDLE"
    assert out["status_failed"] == "INERROR"
    assert out["extended_after"] == 7 and out["pipeline_after"] == 2
    assert out["own_error"] == 'syntax error at or near "selec"'
    assert len(obs.denied) == 4 and rec.denied == []  # the deciding stage is not told twice
    assert b"SELECT 1\0" in rec.tags  # server messages reached the stage
    yield wait_for(lambda: rec.ended)
    assert rec.ended[0][1] == "client terminate"


@pytest_twisted.inlineCallbacks
def test_held_statement_waits_for_its_decision(gateway):
    svc, rec, obs, dsn = gateway
    conn = yield in_thread(psycopg.connect, dsn, autocommit=True)
    try:
        first = in_thread(lambda: conn.execute("select 'hold me' as x").fetchone())
        yield wait_for(lambda: rec.holds)
        assert not first.called
        rec.holds[0].callback(None)  # approved
        assert (yield first) == ("hold me",)
        second = in_thread(lambda: conn.execute("select 'hold again'").fetchone())
        yield wait_for(lambda: len(rec.holds) == 2)
        rec.holds[1].callback(Deny("hoopd: not approved"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            yield second
        assert (yield in_thread(lambda: conn.execute("select 3").fetchone())) == (3,)
    finally:
        yield in_thread(conn.close)


@pytest_twisted.inlineCallbacks
def test_registry_lists_and_kills_sessions(gateway):
    svc, rec, obs, dsn = gateway
    conn = yield in_thread(psycopg.connect, dsn + " application_name=victim", autocommit=True)
    yield in_thread(lambda: conn.execute("select 1"))
    sessions = [s.info.summary() for s in svc.registry]
    assert len(sessions) == 1
    s = sessions[0]
    assert (s["user"], s["connection"], s["level"], s["application_name"]) == ("dev", "shop", "admin", "victim")
    assert s["statements"] == 1 and s["bytes_in"] > 0 and s["bytes_out"] > 0
    assert svc.registry.kill(s["id"], "test over", by="tester")
    with pytest.raises(psycopg.errors.AdminShutdown) as e:
        yield in_thread(lambda: conn.execute("select 1"))
    assert "administrator command" in str(e.value)
    yield wait_for(lambda: rec.ended)
    assert rec.ended[0][1] == "killed by tester: test over"
    assert len(svc.registry) == 0
    conn.close()



class Broken(Recorder):
    """A stage with a bug: it raises on a particular statement."""

    name = "broken"

    def decide(self, body: bytes):
        if b"boom" in body:
            raise RuntimeError("stage bug")
        return None


@pytest_twisted.inlineCallbacks
def test_a_stage_bug_ends_only_that_session(gateway):
    svc, rec, obs, dsn = gateway
    svc.factory.pipeline = pipeline(Broken())

    def scenario():
        with psycopg.connect(dsn, autocommit=True) as other:
            with psycopg.connect(dsn, autocommit=True) as victim:
                with pytest.raises(psycopg.errors.InternalError_) as e:
                    victim.execute("select 'boom'")
                assert "internal error" in str(e.value)
            return other.execute("select 5").fetchone()[0]

    assert (yield in_thread(scenario)) == 5
    yield wait_for(lambda: len(svc.registry) == 0)
