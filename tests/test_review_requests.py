"""Review requests without a network: decisions, groups, self-approval, two approvals,
expiry on an injected clock, withdrawal by cancel, records and listeners."""
from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from hoopd.identity.base import Identity
from hoopd.policy.rules import ReviewSettings
from hoopd.review.requests import KEEP_DECIDED, Reviewer, ReviewError, Reviews
from hoopd.session import Deny, SessionInfo

DBA = Reviewer("ssh:dev", "dev", frozenset({"dba"}))
OPS = Reviewer("oidc:ops", "ops", frozenset({"sre-oncall"}))
BOB = Reviewer("api:bob", "Bob", frozenset({"dba"}))


def opened(settings: ReviewSettings, clock: Clock | None = None, user: str = "bob"):
    clock = clock or Clock()
    records: list[tuple[str, dict]] = []
    events: list[str] = []
    reviews = Reviews(clock, lambda info, kind, fields: records.append((kind, fields)), where="`approve {id}`")
    reviews.listeners.append(lambda event, req: events.append(event))
    info = SessionInfo("s1", "127.0.0.1:5", 0.0, identity=Identity(user, frozenset({"apps"})), connection="shop",
                       level="read_write", application_name="cursor")
    req, hold = reviews.open(info, "delete from orders", "deletes", "ask", settings)
    got: list = []
    hold.addBoth(got.append)
    return reviews, req, hold, got, records, events, clock


def test_an_approval_releases_the_statement_and_everything_is_recorded():
    reviews, req, hold, got, records, events, _ = opened(ReviewSettings(("dba",)))
    assert hold.notice.startswith(f"hoopd: waiting for approval of request #{req.id} by dba")
    assert f"`approve {req.id}`" in hold.notice
    reviews.approve(req.id, DBA, "fine")
    assert got == [None] and req.status == "approved" and req.decided_by == "ssh:dev" and req.why == "fine"
    assert events == ["requested", "approved"]
    assert [f["event"] for k, f in records if k == "review"] == ["requested", "approved"]
    assert records[0][1]["statement"] == "delete from orders" and records[0][1]["application"] == "cursor"
    with pytest.raises(ReviewError) as e:
        reviews.deny(req.id, DBA, "too late")
    assert e.value.status == 409


def test_who_may_decide():
    reviews, req, _, got, *_ = opened(ReviewSettings(("dba", "sre-*")))
    for who, status in ((Reviewer("api:x", None, frozenset({"apps"})), 403), (BOB, 403)):  # not a reviewer; own
        with pytest.raises(ReviewError) as e:
            reviews.approve(req.id, who)
        assert e.value.status == status
    with pytest.raises(ReviewError) as e:
        reviews.approve("nope", DBA)
    assert e.value.status == 404
    reviews.approve(req.id, OPS)  # a glob of the rule's groups
    assert got == [None]
    reviews2, req2, _, got2, *_ = opened(ReviewSettings(("dba",), allow_self_approval=True))
    reviews2.approve(req2.id, BOB)
    assert got2 == [None]


def test_two_approvals_and_a_denial():
    reviews, req, _, got, _, events, _ = opened(ReviewSettings(("dba", "sre-oncall"), min_approvals=2))
    reviews.approve(req.id, DBA)
    assert got == [] and req.status == "pending"
    with pytest.raises(ReviewError):
        reviews.approve(req.id, DBA)  # not twice by the same reviewer
    reviews.deny(req.id, OPS, "not now")
    (deny,) = got
    assert isinstance(deny, Deny) and deny.sqlstate == "42501" and "denied by oidc:ops: not now" in deny.message
    assert events == ["requested", "approval", "denied"]


def test_expiry_on_the_clock_and_withdrawal():
    reviews, req, _, got, _, events, clock = opened(ReviewSettings(("dba",), timeout=60))
    clock.advance(59)
    assert got == []
    clock.advance(1)
    (deny,) = got
    assert isinstance(deny, Deny) and "expired" in deny.message and req.status == "expired"
    assert not clock.getDelayedCalls()
    reviews, req, hold, got, _, events, clock = opened(ReviewSettings(("dba",), timeout=60))
    hold.cancel()  # the client cancelled or left
    assert req.status == "withdrawn" and events[-1] == "withdrawn" and not clock.getDelayedCalls()
    assert got[0].check(Exception)  # (the hold fails with CancelledError; the relay answers 57014)
    with pytest.raises(ReviewError):
        reviews.approve(req.id, DBA)


def test_decided_requests_are_trimmed_pending_ones_kept():
    clock = Clock()
    reviews = Reviews(clock)
    info = SessionInfo("s", "p", 0.0)
    first, _ = reviews.open(info, "x", "r", "", ReviewSettings(("dba",)))
    for _ in range(KEEP_DECIDED + 5):
        req, _ = reviews.open(info, "y", "r", "", ReviewSettings(("dba",)))
        reviews.deny(req.id, DBA, "no")
    assert reviews.get(first.id) is first and len(reviews.list("denied")) == KEEP_DECIDED


def test_statements_are_redacted_for_reviewers():
    reviews = Reviews(Clock(), redact=lambda info, text: text.replace("ada@example.com", "****"))
    req, _ = reviews.open(SessionInfo("s", "p", 0.0), "delete from t where email = 'ada@example.com'", "r", "",
                          ReviewSettings(("dba",)))
    assert req.statement == "delete from t where email = '****'"
