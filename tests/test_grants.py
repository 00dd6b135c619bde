"""Access grants on an injected clock and a real SQLite file: limits, who approves,
expiry ending the sessions that use a grant, and what a restart keeps."""
from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from hoopd.review.grants import Grants, GrantStore
from hoopd.review.requests import Reviewer, ReviewError

DBA = Reviewer("ssh:dev", "dev", frozenset({"dba"}))
SETTINGS = {"shop": (("dba",), 3600.0), "closed": ((), 3600.0)}


def make(tmp_path, clock):
    ended: list[tuple[str, str]] = []
    grants = Grants(GrantStore(tmp_path / "grants.sqlite"), clock, SETTINGS.get,
                    lambda g, why: ended.append((g.id, why)))
    return grants, ended


def test_limits_and_who_approves(tmp_path):
    grants, _ = make(tmp_path, Clock())
    for args, status in ((("nope", "read_write", 60, "x"), 404), (("closed", "read_write", 60, "x"), 403),
                         (("shop", "root", 60, "x"), 400), (("shop", "read_write", 7200, "x"), 400),
                         (("shop", "read_write", 60, " "), 400)):
        with pytest.raises(ReviewError) as e:
            grants.request("bob", *args)
        assert e.value.status == status, args
    g = grants.request("dev", "shop", "admin", 600, "incident 42")
    with pytest.raises(ReviewError, match="their own"):
        grants.approve(g.id, DBA)  # dev is a reviewer, but not of its own grant
    with pytest.raises(ReviewError, match="grant_reviewers"):
        grants.approve(g.id, Reviewer("api:x", "x", frozenset({"apps"})))
    assert grants.level("dev", "shop") is None


def test_expiry_ends_sessions_and_a_restart_keeps_what_is_active(tmp_path):
    clock = Clock()
    grants, ended = make(tmp_path, clock)
    g = grants.request("Bob", "shop", "read_write", 600, "fix")
    grants.approve(g.id, DBA, "ok")
    assert grants.level("bob", "shop") == ("read_write", g.id)  # names compare by name_key
    clock.advance(300)
    again, _ = make(tmp_path, clock)  # a restart half-way: still active, its timer set again
    assert again.level("bob", "shop") == ("read_write", g.id)
    clock.advance(300)
    assert ended and ended[0][0] == g.id and "expired" in ended[0][1]
    assert grants.level("bob", "shop") is None and again.get(g.id).status == "expired"
    g2 = grants.request("bob", "shop", "admin", 60, "again")
    grants.approve(g2.id, DBA)
    later = Clock()
    later.advance(clock.seconds() + 3600)  # the gateway was down past its end
    restarted, _ = make(tmp_path, later)
    assert restarted.get(g2.id).status == "expired" and restarted.level("bob", "shop") is None


def test_ended_grants_are_trimmed_from_memory_not_from_the_store(tmp_path, monkeypatch) -> None:
    from hoopd.review import grants as mod
    monkeypatch.setattr(mod, "KEEP_ENDED", 3)
    clock = Clock()
    store = mod.GrantStore(tmp_path / "g.sqlite")
    g = mod.Grants(store, clock, lambda c: (("dba",), 3600.0))
    boss = Reviewer("ssh:boss", "boss", frozenset({"dba"}))
    ids = []
    for i in range(6):
        ids.append(g.request("ann", "shop", "read_write", 60, f"r{i}").id)
        g.deny(ids[-1], boss, "no")
    pending = g.request("ann", "shop", "read_write", 60, "keep me")
    assert [x.id for x in g.list("denied")] == ids[-3:] and g.get(pending.id) is not None
    assert len(store.all()) == 7
