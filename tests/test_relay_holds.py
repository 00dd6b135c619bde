"""Held statements in the relay, with StringTransports (no sockets): a hold is safe
against the session ending first, several stages can each hold one message, and a hold
never undoes back-pressure."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from hoopd.log import get_logger
from hoopd.pgwire import messages as m
from hoopd.proxy.relay import Relay
from hoopd.session import Deny, SessionInfo


class Holder:
    """Holds every Query; records what it was asked and whether its hold was cancelled."""

    client_types = frozenset({b"Q"})
    server_types: frozenset[bytes] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name
        self.holds: list[defer.Deferred] = []
        self.cancelled = 0
        self.denied: list[bytes] = []

    def client_message(self, s, mtype, body):
        def cancelled(f):  # the request is withdrawn; the relay ignores what this returns
            f.trap(defer.CancelledError)
            self.cancelled += 1
            return None
        d = defer.Deferred()
        d.addErrback(cancelled)
        self.holds.append(d)
        return d

    def message_denied(self, s, mtype, body, deny) -> None:
        self.denied.append(body)

    def server_message(self, s, mtype, body):
        return None


class Transport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.pauses = 0  # pauseProducing minus resumeProducing calls

    def pauseProducing(self) -> None:
        self.pauses += 1
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.pauses -= 1
        super().resumeProducing()


def relay(*stages) -> tuple[Relay, Transport, Transport]:
    client, upstream = Transport(), Transport()
    r = Relay(SessionInfo("s1", "peer", 0.0), client, upstream, stages, get_logger("test"), lambda: None)
    r.start()
    return r, client, upstream


def test_a_hold_released_after_the_client_left_forwards_nothing() -> None:
    h = Holder("approvals")
    r, client, upstream = relay(h)
    r.client_data(m.query("delete from orders") + m.query("select 1"))
    assert upstream.value() == b"" and len(h.holds) == 1
    r.stop()  # the client disconnected while waiting
    assert h.cancelled == 1
    h.holds[0].callback(None)  # a late approval changes nothing
    assert upstream.value() == b""


def test_each_stage_may_hold_in_turn() -> None:
    first, second = Holder("a"), Holder("b")
    r, client, upstream = relay(first, second)
    r.client_data(m.query("select 1") + m.query("select 2"))
    first.holds[0].callback(None)
    assert upstream.value() == b"" and len(second.holds) == 1  # the second stage holds it too
    second.holds[0].callback(None)
    assert upstream.value() == m.query("select 1")  # only now; the next Query is held by the first stage
    assert len(first.holds) == 2
    first.holds[1].callback(Deny("hoopd: no"))
    assert second.denied == [m.query("select 2")[5:]] and len(second.holds) == 1  # told, not asked
    assert upstream.value().startswith(m.query("select 1") + b"Q")  # the marker that fails in its place


def test_releasing_a_hold_keeps_back_pressure() -> None:
    h = Holder("approvals")
    r, client, upstream = relay(h)
    r.client_data(m.query("select 1"))
    assert client.pauses == 1 and client.producerState == "paused"
    r._client_gate.pauseProducing()  # the upstream's buffer filled meanwhile
    h.holds[0].callback(None)
    assert client.producerState == "paused"  # still paused: back-pressure says so
    r._client_gate.resumeProducing()
    assert client.producerState == "producing" and client.pauses == 0
