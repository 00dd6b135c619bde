"""A stage that rewrites server messages (what masking will do), with StringTransports:
it sees every DataRow whole up to [gateway] max_rewrite_bytes; a larger one ends the
session rather than reach the client unrewritten."""
from __future__ import annotations

import pytest
from twisted.internet.testing import StringTransport

from hoopd.log import get_logger
from hoopd.pgwire import messages as m
from hoopd.pgwire.types import BE
from hoopd.proxy.pipeline import Pipeline
from hoopd.proxy.relay import Relay
from hoopd.session import STAGE_BODY_LIMIT, EndSession, SessionInfo
from tests.test_journal_helpers import row, row_description, tag

MiB = 1 << 20


class Masker:
    """Replaces every value with 'x' (of the same count of columns)."""

    name = "masking"
    client_types: frozenset[int] = frozenset()
    server_types = frozenset({BE.DATA_ROW})
    rewrites = frozenset({BE.DATA_ROW})

    def __init__(self) -> None:
        self.seen: list[int] = []  # body sizes it was given
        self.oversized: list[int] = []

    def open(self, info, conversation):
        return self

    def server(self, msg):
        self.seen.append(len(msg.body))
        return m.encode_data_row([b"x"] * len(m.decode_data_row(msg.body)))

    def oversize(self, from_client, mtype, length) -> None:
        self.oversized.append(length)

    def close(self, reason) -> None:
        pass


class Counter(Masker):
    """Wants DataRows but does not rewrite them: large ones stream past it."""

    name = "journal"
    rewrites: frozenset[int] = frozenset()

    def server(self, msg):
        self.seen.append(len(msg.body))
        return b"ignored: this stage does not rewrite"


def relay(*stages, limit: int) -> tuple[Relay, StringTransport]:
    info = SessionInfo("s1", "peer", 0.0)
    client = StringTransport()
    r = Relay(info, client, StringTransport(), Pipeline(stages).open(info), get_logger("test"), lambda: None,
              rewrite_limit=limit)
    return r, client


def result(value: bytes) -> bytes:
    return (m.frame(b"T", row_description(("secret", 25))) + m.frame(b"D", row(value))
            + m.frame(b"C", tag("SELECT 1")) + m.ready_for_query(b"I"))


def test_rows_under_the_cap_are_rewritten_whole_even_above_the_stage_limit() -> None:
    masker = Masker()
    r, client = relay(masker, limit=4 * MiB)
    big = b"s" * (2 * MiB)  # over STAGE_BODY_LIMIT, under max_rewrite_bytes
    assert len(big) > STAGE_BODY_LIMIT
    data = result(big)
    for i in range(0, len(data), 65536):  # in pieces, as a socket delivers it
        r.server_data(data[i:i + 65536])
    out = client.value()
    assert b"sss" not in out and m.frame(b"D", row(b"x")) in out and masker.seen == [len(row(big))]
    assert masker.oversized == []


def test_a_row_over_the_cap_ends_the_session_before_any_of_it_is_sent() -> None:
    masker = Masker()
    r, client = relay(masker, limit=2 * MiB)
    with pytest.raises(EndSession) as e:
        r.server_data(result(b"s" * (3 * MiB)))
    assert e.value.sqlstate == "54000" and "max_rewrite_bytes" in e.value.message
    assert b"sss" not in client.value()


def test_a_stage_that_does_not_rewrite_cannot_change_bodies_and_large_rows_stream_past_it() -> None:
    counter = Counter()
    r, client = relay(counter, limit=16 * MiB)
    r.server_data(result(b"v" * 100))
    assert m.frame(b"D", row(b"v" * 100)) in client.value()  # its answer was ignored
    client.clear()
    r.server_data(result(b"v" * (2 * MiB)))
    assert client.value().count(b"v") == 2 * MiB and counter.oversized == [len(row(b"v" * (2 * MiB)))]


def test_an_error_over_the_stage_limit_still_reaches_the_conversation() -> None:
    counter = Counter()
    r, client = relay(counter, limit=4 * MiB)
    r.client_data(m.parse_message("s", "select raise_a_big_error()") + m.frame(b"S", b""))
    assert "s" in r.conversation.prepared  # in effect when sent
    big = m.error_response("P0001", "x" * (2 * MiB))
    r.server_data(big + m.ready_for_query(b"I"))
    assert big in client.value()
    assert "s" not in r.conversation.prepared and not r.conversation.queue  # the failed Parse was undone


class Idle(Masker):
    """A stage with nothing to do in this session."""

    def open(self, info, conversation):
        return None


def test_a_stage_with_nothing_to_do_in_a_session_costs_it_nothing() -> None:
    r, client = relay(Idle(), limit=4 * MiB)
    assert not r.tracking and BE.DATA_ROW not in r.s2c.wanted  # rows go through as raw bytes
    r.server_data(result(b"secret"))
    assert m.frame(b"D", row(b"secret")) in client.value()
