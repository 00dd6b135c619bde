"""Cancel keys: the real backend pid with a secret the gateway mints, unique as a pair."""
from __future__ import annotations

from hoopd.proxy.registry import SessionRegistry
from hoopd.session import SessionInfo


class S:
    def __init__(self, sid: str) -> None:
        self.info = SessionInfo(sid, "peer", 0.0)


def test_same_pid_on_two_servers_gets_two_keys_and_cancels_reach_the_right_one():
    reg = SessionRegistry()
    a, b = S("a"), S("b")
    ka = reg.mint_key(a, 4242)
    kb = reg.mint_key(b, 4242)  # another server's backend with the same pid
    assert ka != kb and len(ka) == 4
    assert reg.by_cancel_key(4242, ka) is a and reg.by_cancel_key(4242, kb) is b
    assert reg.by_cancel_key(4243, ka) is None and reg.by_cancel_key(4242, b"\0" * 4) is None
    reg.remove(a)
    assert reg.by_cancel_key(4242, ka) is None and reg.by_cancel_key(4242, kb) is b


def test_a_colliding_secret_is_minted_again(monkeypatch):
    import hoopd.proxy.registry as registry
    draws = iter([b"\1\2\3\4", b"\1\2\3\4", b"\5\6\7\x08"])
    monkeypatch.setattr(registry.os, "urandom", lambda n: next(draws))
    reg = SessionRegistry()
    assert reg.mint_key(S("a"), 7) == b"\1\2\3\4"
    assert reg.mint_key(S("b"), 7) == b"\5\6\7\x08"


def test_protocol_3_2_secrets_are_long():
    assert len(SessionRegistry().mint_key(S("a"), 1, 32)) == 32
