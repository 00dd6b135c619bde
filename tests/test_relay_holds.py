"""Held statements in the relay, with StringTransports (no sockets): a hold is safe
against the session ending first, several stages can each hold one message, and a hold
never undoes back-pressure."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from hoopd.log import get_logger
from hoopd.pgwire import messages as m
from hoopd.proxy.pipeline import Pipeline, SessionStages
from hoopd.proxy.relay import Relay
from hoopd.session import Deny, SessionInfo


class Holder:
    """Holds every Query; records what it was asked and whether its hold was cancelled."""

    client_types = frozenset(b"Q")
    server_types: frozenset[int] = frozenset()
    rewrites: frozenset[int] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name
        self.holds: list[defer.Deferred] = []
        self.cancelled = 0
        self.refused: list[bytes] = []  # bodies of the messages another stage denied

    def open(self, info, conversation):
        return self

    def client(self, msg):
        def cancelled(f):  # the request is withdrawn; the relay ignores what this returns
            f.trap(defer.CancelledError)
            self.cancelled += 1
            return None
        d = defer.Deferred()
        d.addErrback(cancelled)
        self.holds.append(d)
        return d

    def denied(self, msg, deny) -> None:
        self.refused.append(msg.body)

    def close(self, reason: str) -> None:
        pass


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


def opened(stages) -> SessionStages:
    """The stages in the order given (they are not hoopd's named stages)."""
    return Pipeline(stages, client_order=[s.name for s in stages]).open(SessionInfo("s1", "peer", 0.0))


def relay(*stages) -> tuple[Relay, Transport, Transport]:
    client, upstream = Transport(), Transport()
    r = Relay(SessionInfo("s1", "peer", 0.0), client, upstream, opened(stages), get_logger("test"), lambda: None)
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
    assert second.refused == [m.query("select 2")[5:]] and len(second.holds) == 1  # told, not asked
    assert upstream.value().startswith(m.query("select 1") + b"Q")  # the marker that fails in its place


def test_releasing_a_hold_keeps_back_pressure() -> None:
    from hoopd.proxy.relay import HELD_BACKLOG

    h = Holder("approvals")
    r, client, upstream = relay(h)
    r.client_data(m.query("select 1"))
    assert client.producerState == "producing"  # a hold alone keeps reading (a client that leaves is seen)
    for _ in range(HELD_BACKLOG + 1):
        r.client_data(m.query("select 2"))
    assert client.pauses == 1 and client.producerState == "paused"  # too much queued behind it
    r._client_gate.pauseProducing()  # the upstream's buffer filled meanwhile
    h.holds[0].callback(None)
    assert client.producerState == "paused"  # still paused: back-pressure says so
    r._client_gate.resumeProducing()
    assert client.producerState == "producing" and client.pauses == 0


def clocked(*stages, timeout: float = 30.0):
    from twisted.internet.task import Clock
    clock = Clock()
    client, upstream = Transport(), Transport()
    r = Relay(SessionInfo("s1", "peer", 0.0), client, upstream, opened(stages), get_logger("test"), lambda: None,
              clock=clock, hold_timeout=timeout)
    r.start()
    return r, client, upstream, clock


def test_a_hold_that_times_out_is_refused_and_the_next_message_goes_on() -> None:
    h = Holder("approvals")
    r, client, upstream, clock = clocked(h)
    r.client_data(m.query("delete from orders") + m.query("select 1"))
    clock.advance(29)
    assert upstream.value() == b"" and client.producerState == "producing"
    clock.advance(1)
    assert h.cancelled == 1  # the stage hears its request was withdrawn
    sent = upstream.value()
    assert sent.startswith(b"Q") and b"delete" not in sent and b"hoopd_deny_" in sent  # the marker, not the statement
    assert len(h.holds) == 2  # the next Query is asked about, and held in turn
    h.holds[0].callback(None)  # a late answer to the first changes nothing
    assert upstream.value() == sent
    h.holds[1].callback(None)
    assert upstream.value() == sent + m.query("select 1")
    # the server's error for the marker becomes the timeout refusal
    marker = sent[5:-1].decode()
    client.clear()
    r.server_data(m.error_response("42601", f'syntax error at or near "{marker}"') + m.ready_for_query(b"I"))
    fields = m.decode_fields(client.value()[5:client.value().index(b"Z")])
    assert fields["C"] == "57014" and "hold_timeout" in fields["M"]
    assert not clock.getDelayedCalls()  # the second hold's timer went with its release


def test_a_failed_hold_is_refused_and_its_timer_cancelled() -> None:
    h = Holder("approvals")
    r, client, upstream, clock = clocked(h)
    r.client_data(m.query("select 1"))
    h.holds[0].errback(RuntimeError("approval service down"))
    assert b"hoopd_deny_" in upstream.value() and not clock.getDelayedCalls()
    assert client.producerState == "producing"


def test_disconnect_during_a_hold_cancels_its_timer() -> None:
    h = Holder("approvals")
    r, client, upstream, clock = clocked(h)
    r.client_data(m.query("delete from orders"))
    r.stop()
    assert not clock.getDelayedCalls()
    clock.advance(60)
    assert upstream.value() == b"" and h.cancelled == 1


def test_back_pressure_during_a_hold_that_times_out() -> None:
    h = Holder("approvals")
    r, client, upstream, clock = clocked(h)
    r.client_data(m.query("select 1"))
    r._client_gate.pauseProducing()  # the upstream's buffer filled meanwhile
    clock.advance(30)
    assert client.producerState == "paused"  # the timeout ended the hold, not the back-pressure
    r._client_gate.resumeProducing()
    assert client.producerState == "producing"
