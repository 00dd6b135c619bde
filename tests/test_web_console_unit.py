"""The web console's sessions without a browser: sign-in by token, idle expiry, CSRF."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.task import Clock

from hoopd.config import parse
from hoopd.control.tokens import hash_token
from hoopd.control.web import COOKIE, IDLE, Page, WebConsole
from hoopd.identity.base import Identity


@dataclass
class _Plane:
    config: Any
    reactor: Clock = field(default_factory=Clock)

    def identity_of(self, who: Any) -> Identity:
        return Identity(who.user, frozenset({"dba"}), "token")


class _Request:
    def __init__(self, cookie: str | None, args: dict[str, str] | None = None) -> None:
        self.cookie = cookie
        self.args = {k.encode(): [v.encode()] for k, v in (args or {}).items()}

    def getCookie(self, name: bytes) -> bytes | None:
        return self.cookie.encode() if name == COOKIE.encode() and self.cookie else None


def _console() -> WebConsole:
    tokens = [{"name": "ops", "role": "admin", "token_hash": hash_token("ops-token-0123456789"), "user": "dev"},
              {"name": "agent", "role": "caller", "token_hash": hash_token("agent-token-0123456789"), "user": "a"}]
    return WebConsole(_Plane(parse({"control": {"tokens": tokens}})))


def test_sign_in_idle_expiry_and_csrf() -> None:
    web = _console()
    with pytest.raises(Page) as e:
        web.sign_in("agent-token-0123456789")  # a caller token is for MCP only
    assert e.value.status == 401
    sid = web.sign_in("ops-token-0123456789")
    s = web.session(_Request(sid))
    assert s.principal.name == "web:ops" and s.principal.groups == {"dba"}
    with pytest.raises(Page) as e:
        web.form(_Request(sid, {"comment": "x"}), s)
    assert e.value.status == 403
    assert web.form(_Request(sid, {"csrf": s.csrf, "comment": "x"}), s)["comment"] == "x"
    web.plane.reactor.advance(IDLE - 1)
    web.session(_Request(sid))  # a request keeps it alive
    web.plane.reactor.advance(IDLE + 1)
    with pytest.raises(Page) as e:
        web.session(_Request(sid))
    assert (e.value.status, e.value.location) == (303, "/ui/login")
    with pytest.raises(Page):
        web.session(_Request("forged"))
