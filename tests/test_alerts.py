"""Webhook delivery on an injected clock: back-off, giving up after max_attempts, the
bounded queue, event filters, and config errors naming their key."""
from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from hoopd import alerts
from hoopd.alerts import Alerts, Webhook
from hoopd.config import parse
from hoopd.confkit import ConfigError


class Refusing:
    """An Agent whose every request fails: the connection is refused."""

    def __init__(self) -> None:
        self.calls = 0

    def request(self, *args: object) -> Deferred:
        self.calls += 1
        return fail(ConnectionRefusedError("refused"))


def test_back_off_then_give_up_and_go_on():
    clock, agent = Clock(), Refusing()
    a = Alerts((Webhook("h", "http://127.0.0.1:1/", b"k" * 16, max_attempts=3, events=("review.*",)),), clock, "n",
               agent)
    a.event("grant.approved", {})  # filtered out
    a.event("review.requested", {"id": "1"})
    a.event("review.denied", {"id": "1"})
    assert agent.calls == 1
    clock.advance(1)
    assert agent.calls == 2
    clock.advance(2)
    assert agent.calls == 4 and a.failed == 1  # given up on the first; the second is tried at once
    assert len(a._queues["h"]) == 1


def test_the_queue_is_bounded(monkeypatch):
    monkeypatch.setattr(alerts, "QUEUE_LIMIT", 5)
    clock, agent = Clock(), Refusing()
    a = Alerts((Webhook("h", "http://127.0.0.1:1/", b"k" * 16),), clock, "n", agent)
    for i in range(20):
        a.event("tripwire", {"i": i})
    assert len(a._queues["h"]) == 5


@pytest.mark.parametrize("hook, key", [
    ({"name": "a", "url": "ftp://x"}, "alerts.webhooks[0].url"),
    ({"name": "a", "url": "http://x"}, "alerts.webhooks[0].secret_file"),
    ({"name": "a", "url": "http://x", "format": "slack", "events": ["nope.*"]}, "alerts.webhooks[0].events"),
])
def test_config_errors_name_the_key(hook, key):
    with pytest.raises(ConfigError) as e:
        parse({"alerts": {"webhooks": [hook]}})
    assert str(e.value).startswith(key)


def test_bursts_of_denials_and_failed_logins():
    from hoopd.alerts import BurstSettings
    from hoopd.identity.base import Identity
    from hoopd.session import Deny, SessionInfo

    clock = Clock()
    a = Alerts((), clock, "n", Refusing(), BurstSettings(denials=3, logins=2, window=10))
    seen: list[tuple[str, dict]] = []
    a.event = lambda name, data: seen.append((name, data))  # type: ignore[method-assign]
    info = SessionInfo("s", "1.2.3.4:5", 0.0, identity=Identity("bob"), connection="shop", level="read_only")
    for _ in range(2):
        a.message_denied(info, None, Deny("no"))
    clock.advance(11)  # the window passed: counting starts again
    for _ in range(3):
        a.message_denied(info, None, Deny("no"))
    assert [n for n, _ in seen] == ["denials.burst"] and seen[0][1]["user"] == "bob"
    a.login_failed("10.0.0.1:1000", "eve", "bad password")
    a.login_failed("10.0.0.1:1001", "mallory", "bad password")  # same host, another port
    assert seen[-1][0] == "logins.burst" and seen[-1][1]["peer"] == "10.0.0.1"
