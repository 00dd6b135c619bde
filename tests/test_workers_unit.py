"""The parts of [gateway] workers that need no process: the config key, metrics merged
from workers, sessions as the supervisor rebuilds them, and the worker's side of a review."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import pytest
from twisted.internet.task import Clock

from hoopd.config import MAX_WORKERS, parse
from hoopd.confkit import ConfigError
from hoopd.control.metrics import merge_metrics
from hoopd.identity.base import Identity
from hoopd.policy.rules import ReviewSettings
from hoopd.review.grants import Grant, GrantStore, GrantsView
from hoopd.session import Deny, SessionInfo
from hoopd.workers import protocol as p
from hoopd.workers.child import RemoteReviews
from hoopd.workers.supervisor import _settings


@pytest.mark.parametrize("value, expect", [(1, 1), (3, 3), ("auto", None)])
def test_workers_key(value: Any, expect: int | None) -> None:
    got = parse({"gateway": {"workers": value}}).gateway.workers
    assert got == expect if expect is not None else 1 <= got <= MAX_WORKERS


@pytest.mark.parametrize("value", [0, -1, MAX_WORKERS + 1, "two", True, 1.5])
def test_bad_workers_key_names_it(value: Any) -> None:
    with pytest.raises(ConfigError, match="gateway.workers") as e:
        parse({"gateway": {"workers": value}})
    assert '"auto"' in str(e.value)


def test_metrics_of_workers_are_labelled_and_session_families_counted_once() -> None:
    own = (b'# HELP hoopd_sessions_active Live client sessions\n# TYPE hoopd_sessions_active gauge\n'
           b'hoopd_sessions_active{connection="shop",level="admin"} 3.0\n'
           b'# HELP hoopd_statements_total Statements\n# TYPE hoopd_statements_total counter\n')
    worker = (b'# HELP hoopd_sessions_active Live client sessions\n# TYPE hoopd_sessions_active gauge\n'
              b'hoopd_sessions_active{connection="shop",level="admin"} 2.0\n'
              b'# HELP hoopd_statements_total Statements\n# TYPE hoopd_statements_total counter\n'
              b'hoopd_statements_total{kind="select",decision="allow"} 7.0\n'
              b'# HELP hoopd_journal_bytes_total Bytes\n# TYPE hoopd_journal_bytes_total counter\n'
              b'hoopd_journal_bytes_total 10.0\n')
    text = merge_metrics(own, [(1, worker), (2, worker)]).decode()
    lines = text.splitlines()
    assert [x for x in lines if x.startswith("hoopd_sessions_active")] == [
        'hoopd_sessions_active{connection="shop",level="admin"} 3.0']
    assert 'hoopd_statements_total{worker="1",kind="select",decision="allow"} 7.0' in lines
    assert 'hoopd_statements_total{worker="2",kind="select",decision="allow"} 7.0' in lines
    assert 'hoopd_journal_bytes_total{worker="2"} 10.0' in lines
    assert lines.count("# TYPE hoopd_statements_total counter") == 1
    # every family's samples follow its own TYPE line
    i = lines.index("# TYPE hoopd_journal_bytes_total counter")
    assert lines[i + 1:] == ['hoopd_journal_bytes_total{worker="1"} 10.0', 'hoopd_journal_bytes_total{worker="2"} 10.0']


def test_a_session_summary_comes_back_as_the_session() -> None:
    info = SessionInfo(id="abc", peer="10.0.0.1:5", started=12.5, identity=Identity("ann", frozenset({"b", "a"}), "oidc"),
                       connection="shop", level="read_only", tls="TLSv1.3", protocol=(3, 2), application_name="x",
                       statements=4, bytes_in=10, bytes_out=20, transaction_status="T", grant="g1", worker=2)
    again = SessionInfo.from_summary(p.Json().fromString(p.Json().toString(info.summary())))
    assert again.summary() == info.summary() and again.identity == info.identity


def test_review_settings_cross_the_channel() -> None:
    s = ReviewSettings(("dba", "ops*"), 2, True, 60.0, "refuse", ("sre",))
    assert _settings(p.Json().fromString(p.Json().toString(asdict(s)))) == s


class _Link:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict]] = []
        self.answer: Any = None

    def callRemote(self, command: Any, **kw: Any) -> Any:
        from twisted.internet.defer import Deferred
        self.calls.append((command, kw))
        self.answer = Deferred()
        return self.answer

    def send(self, command: Any, **kw: Any) -> None:
        self.calls.append((command, kw))


def _info() -> SessionInfo:
    return SessionInfo(id="s1", peer="p", started=0.0, identity=Identity("ann", frozenset({"apps"}), "local"))


def test_remote_review_holds_until_the_supervisor_decides() -> None:
    link = _Link()
    reviews = RemoteReviews(link, where="`approve {id}` in the SSH console")  # type: ignore[arg-type]
    _, hold = reviews.open(_info(), "delete from t", "deletes", "m", ReviewSettings(("dba",)))
    (cmd, kw), = link.calls
    assert cmd is p.OpenReview and kw["statement"] == "delete from t" and kw["session"]["id"] == "s1"
    assert f"#{kw['rid']}" in hold.notice and f"`approve {kw['rid']}`" in hold.notice
    got: list[Any] = []
    hold.addCallback(got.append)
    reviews.decided("someone-else", None)
    assert not got
    reviews.decided(kw["rid"], Deny("denied by bob", "42501"))
    assert got == [Deny("denied by bob", "42501")]


def test_cancelling_a_remote_hold_withdraws_it_and_a_lost_request_refuses() -> None:
    link = _Link()
    reviews = RemoteReviews(link)  # type: ignore[arg-type]
    _, hold = reviews.open(_info(), "delete from t", "deletes", "m", ReviewSettings(("dba",)))
    rid = link.calls[0][1]["rid"]
    hold.addErrback(lambda f: None)
    hold.cancel()
    assert link.calls[-1] == (p.WithdrawReview, {"rid": rid}) and not reviews.waiting
    _, hold2 = reviews.open(_info(), "delete from u", "deletes", "m", ReviewSettings(("dba",)))
    got: list[Any] = []
    hold2.addCallback(got.append)
    link.answer.errback(RuntimeError("supervisor gone"))
    assert got[0].sqlstate == "58000" and "could not be filed" in got[0].message


def test_grants_view_reads_what_the_supervisor_wrote(tmp_path) -> None:
    clock = Clock()
    clock.advance(1000)
    writer, reader = GrantStore(tmp_path / "g.sqlite"), GrantStore(tmp_path / "g.sqlite")
    view = GrantsView(reader, clock)
    assert view.level("Ann", "shop") is None
    writer.save(Grant("g1", "ann", "shop", "read_write", "fix", 60, "active", expires=1060.0))
    assert view.level("Ann", "shop") == ("read_write", "g1")
    clock.advance(61)
    assert view.level("ann", "shop") is None


@pytest.mark.parametrize("doc, message", [
    ({"mcp": {"enabled": True}}, "mcp.enabled: the MCP endpoint is served on the control port"),
    ({"mcp": {"max_rows": 0}}, "mcp.max_rows"),
    ({"state": {"host": "db", "credentials": {"default": {"user": "u"}}, "access": {"dba": "admin"}}},
     "state: the state database takes"),
    ({"gateway": {"workers": 2}, "state": {"host": "db", "credentials": {"default": {"user": "u"}}}},
     "state: several nodes ([state]) need gateway.workers = 1"),
])
def test_feature_combinations_and_keys_refused_with_their_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(doc)
    assert str(e.value).startswith(message)


def test_activity_counts_per_minute_and_fills_an_hour() -> None:
    from hoopd.control.activity import Activity
    clock = Clock()
    clock.advance(6000 * 60)
    live = [0]
    a = Activity(clock, lambda: live[0])
    a.statement("allow")
    live[0] = 2
    a.session_started(_info())
    clock.advance(120)
    a.statement("deny")
    got = a.series()
    assert len(got["t"]) == 60 and got["t"][-1] == 6002 * 60
    assert got["statements"]["allow"][-3:] == [1, 0, 0] and got["statements"]["deny"][-1] == 1
    assert got["sessions"][-3:] == [2, 2, 2]
