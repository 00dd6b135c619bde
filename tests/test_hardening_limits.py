"""One session cannot stall or exhaust the gateway (issue 9, section 3), with the gateway
in-process (its reactor is the test's) and a real PostgreSQL behind it.

Blocking clients run in threads, so the test can look at the gateway's own objects.
"""
from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, threads

from hoopd.config import parse
from hoopd.pgwire import messages as m
from hoopd.tap import GatewayService
from tests.gateway import USERS, _VERIFIERS, free_port
from tests.rawclient import RawClient, error_of
from tests.reactorwait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(pg):
    port = free_port()
    cfg = parse({
        "gateway": {"max_message_bytes": 4 << 20, "max_buffered_bytes": 3 << 20},
        "listen": {"postgres": f"tcp:{port}:interface=127.0.0.1"},
        "policy": {"max_statement_bytes": 100_000},
        "users": [{"name": n, "password_hash": _VERIFIERS[n], "groups": [g]}
                  for n, g in (("dev", "dba"), ("reader", "analysts"))],
        "connections": {"shop": {"host": "127.0.0.1", "port": pg.port, "tls": "disable",
                                 "credentials": {"default": {"user": "app_scram", "password": pg.app_scram.password}},
                                 "access": {"dba": "admin", "analysts": "read_only"}}},
    })
    svc = GatewayService(cfg, reactor)
    svc.startService()
    yield svc, port
    pytest_twisted.blockon(defer.maybeDeferred(svc.stopService))


def dsn(port: int, user: str) -> str:
    return f"host=127.0.0.1 port={port} dbname=shop user={user} password={USERS[user][0]} sslmode=disable"


def in_thread(fn, *args):
    return threads.deferToThread(fn, *args)


def read_until_closed(r: RawClient) -> list[tuple[bytes, bytes]]:
    out = []
    try:
        while True:
            out.append(r.read_message())
    except (ConnectionError, OSError):
        return out


@pytest_twisted.inlineCallbacks
def test_statement_text_cap_below_admin(gateway):
    svc, port = gateway
    big = "select '" + "x" * 150_000 + "'"

    def scenario():
        with psycopg.connect(dsn(port, "reader"), autocommit=True) as c:
            with pytest.raises(psycopg.errors.ProgramLimitExceeded) as e:
                c.execute(big)
            msg = e.value.diag.message_primary
            after = c.execute("select 1").fetchone()[0]
        with psycopg.connect(dsn(port, "dev"), autocommit=True) as c:
            admin = len(c.execute(big).fetchone()[0])
        return msg, after, admin

    msg, after, admin = yield in_thread(scenario)
    assert "150009 bytes" in msg and "100000" in msg and "max_statement_bytes" in msg
    assert after == 1 and admin == 150_000


@pytest_twisted.inlineCallbacks
def test_client_message_size_cap(gateway):
    svc, port = gateway

    def scenario():
        r = RawClient(port)
        r.login("dev", USERS["dev"][0])
        r.send(b"Q" + struct.pack("!i", (5 << 20) + 4) + b"select '")  # announces 5 MiB, over the 4 MiB cap
        return read_until_closed(r)

    msgs = yield in_thread(scenario)
    err = error_of(msgs)
    assert err["S"] == "FATAL" and err["C"] == "54000" and "limit of 4194304 bytes" in err["M"]


@pytest_twisted.inlineCallbacks
def test_buffer_budget_ends_only_the_session_that_exhausts_it(gateway):
    """Two sessions each send part of a large statement; the one whose bytes take the
    gateway's total over max_buffered_bytes is ended with 53200, the other finishes."""
    svc, port = gateway
    body = b"select '" + b"y" * (2 << 20) + b"'\0"
    frame = b"Q" + struct.pack("!i", len(body) + 4) + body
    half = len(frame) * 3 // 4

    def scenario():
        a, b = RawClient(port), RawClient(port)
        a.login("dev", USERS["dev"][0])
        b.login("dev", USERS["dev"][0])
        a.send(frame[:half])  # 1.5 MiB held for A
        deadline = time.monotonic() + 20
        while svc.factory.budget.used < half - 5 and time.monotonic() < deadline:  # all of it, before B sends
            time.sleep(0.01)
        b.send(frame[:half])  # 3 MiB in all: over the budget
        msgs_b = read_until_closed(b)
        a.send(frame[half:])
        answer = a.until_ready()
        a.close()
        return msgs_b, answer

    msgs_b, answer = yield in_thread(scenario)
    err = error_of(msgs_b)
    assert err["S"] == "FATAL" and err["C"] == "53200" and "max_buffered_bytes" in err["M"]
    assert error_of(answer) is None and any(t == b"D" for t, _ in answer)
    yield wait_for(lambda: svc.factory.budget.used == 0)


@pytest_twisted.inlineCallbacks
def test_client_socket_has_nodelay(gateway):
    svc, port = gateway
    conn = yield in_thread(psycopg.connect, dsn(port, "dev"))
    try:
        yield wait_for(lambda: len(svc.registry) == 1)
        (session,) = list(svc.registry)
        sock = session.transport.getHandle()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        yield in_thread(conn.close)
