"""Settings the server reports about a session that the gateway's guarantees rest on.

PostgreSQL reports ``standard_conforming_strings``, ``client_encoding``,
``default_transaction_read_only`` and ``in_hot_standby`` (among others) in ParameterStatus
messages, at login and whenever they change. Below admin the gateway needs
standard_conforming_strings on (its parser always reads strings that way) and, for
read_only, default_transaction_read_only on (the upstream's own second line of defence);
client_encoding and session_authorization stay what they were at login.
The policy stage refuses every statement that would change them; if the server still
reports one changed (a function that sets it, a configuration reload), the session is
ended before anything more of it reaches PostgreSQL: the tripwire.
"""
from __future__ import annotations

from hoopd.session import SessionInfo


def problem(session: SessionInfo, name: str, value: str, login_value: str | None) -> str | None:
    """Why the session cannot go on now that the server reports ``name = value``, or None.
    ``login_value`` is what the server reported for it at login (None: at login now)."""
    if session.level == "admin":
        return None
    if name == "standard_conforming_strings" and value != "on":
        return "the server reports standard_conforming_strings = off"
    if name == "default_transaction_read_only" and session.level == "read_only" and value != "on":
        return "the server reports default_transaction_read_only = off for a read_only session"
    if name in ("client_encoding", "session_authorization") and login_value is not None and value != login_value:
        return f"the server reports {name} changed from {login_value} to {value}"
    return None


def login_problems(session: SessionInfo) -> list[str]:
    """Everything wrong with the settings the server reported at login."""
    return [p for name, value in session.settings.items()
            if (p := problem(session, name, value, None)) is not None]
