"""What a session is, as data, and the stage seam that journal, policy and masking plug into.

A Stage is a factory: ``open(session, conversation)`` returns the SessionStage that lives for that one
session (or None when it has nothing to do there) (its typed state lives on it) and is dead after ``close(reason)``. The relay
calls, for the message types the stage declared:

* ``client(msg)`` for each client message *before* it is forwarded. It returns None
  (allow), a Deny (the gateway answers an ErrorResponse in protocol order and the session
  stays usable), or a Deferred of either (the relay holds the client's stream until it
  fires; approvals). Several stages may each hold the same message, one after another.
* ``server(msg)`` for each server message before it is forwarded; a stage that declared
  the type in ``rewrites`` may return a replacement body (masking), others return None.
* ``denied(msg, deny)`` when another stage refused a client message it saw.

Messages come decoded once, from the session's Conversation (hoopd.pgwire.conversation):
``msg.answers`` links a server message to the client message it responds to, a DataRow
to its columns. Observers (tracker, metrics) hear only of sessions and denials.

The order of stages is declared here, per direction (CLIENT_ORDER, SERVER_ORDER).
Stages never see the upstream credential. Nothing here imports hoopd.proxy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from hoopd.identity.base import Identity
from hoopd.pgwire.conversation import ClientMessage, Conversation, ServerMessage
from hoopd.pgwire.encodings import Decoder, sql_decoder

_utf8 = sql_decoder("UTF8", "UTF8")


@dataclass
class SessionInfo:
    """The registry's and the stages' view of one client session."""

    id: str
    peer: str
    started: float  # epoch seconds
    identity: Identity | None = None
    connection: str | None = None
    level: str | None = None
    tls: str | None = None  # TLS version string, or None for plaintext
    protocol: tuple[int, int] = (3, 0)
    application_name: str = ""
    statements: int = 0
    bytes_in: int = 0  # client -> gateway
    bytes_out: int = 0  # gateway -> client
    transaction_status: str = "I"  # last ReadyForQuery status from upstream: I, T or E
    settings: dict[str, str] = field(default_factory=dict)  # as the server last reported them (ParameterStatus)
    sql_text: Decoder | None = _utf8  # statement bytes -> the text the server lexes; None: cannot be read
    database: str | None = None  # the upstream database
    grant: str | None = None  # the access grant that gave the session its level (hoopd.review.grants)
    worker: int | None = None  # the worker process serving it ([gateway] workers > 1)

    def report(self, name: str, value: str) -> None:
        """A setting the server reported (at login or later); keeps ``sql_text`` in step."""
        self.settings[name] = value
        if name in ("client_encoding", "server_encoding"):
            self.sql_text = sql_decoder(self.settings.get("client_encoding", "UTF8"),
                                        self.settings.get("server_encoding", "UTF8"))

    def summary(self) -> dict[str, Any]:
        """A JSON-friendly view (no secrets live here)."""
        ident = self.identity
        return {
            "id": self.id,
            "user": ident.name if ident else None,
            "groups": sorted(ident.groups) if ident else [],
            "source": ident.source if ident else None,
            "connection": self.connection,
            "level": self.level,
            "peer": self.peer,
            "tls": self.tls,
            "protocol": "%d.%d" % self.protocol,
            "application_name": self.application_name,
            "started": self.started,
            "statements": self.statements,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "transaction_status": self.transaction_status,
            "grant": self.grant,
            **({"worker": self.worker} if self.worker is not None else {}),
        }

    @classmethod
    def from_summary(cls, s: dict[str, Any]) -> "SessionInfo":
        """A session as ``summary()`` described it (a worker's session, in the supervisor)."""
        ident = Identity(s["user"], frozenset(s["groups"]), s["source"] or "") if s.get("user") is not None else None
        major, minor = (int(x) for x in s["protocol"].split("."))
        return cls(id=s["id"], peer=s["peer"], started=s["started"], identity=ident, connection=s["connection"],
                   level=s["level"], tls=s["tls"], protocol=(major, minor), application_name=s["application_name"],
                   statements=s["statements"], bytes_in=s["bytes_in"], bytes_out=s["bytes_out"],
                   transaction_status=s["transaction_status"], grant=s["grant"], worker=s.get("worker"))


@dataclass(frozen=True)
class Deny:
    """Refuse one client message. Sent to the client as an ErrorResponse."""

    message: str
    sqlstate: str = "42501"
    detail: str | None = None
    hint: str | None = None


Verdict = Deny | None


class Hold(Deferred):  # type: ignore[type-arg]
    """A verdict that takes a human (an approval): the relay holds the client's stream
    until it fires, and sends ``notice`` to the client at once so it can tell its user
    what it waits for. Cancelled when the client leaves or cancels: the canceller
    withdraws whatever waits for the decision."""

    def __init__(self, notice: str | None = None, canceller: Any = None) -> None:
        super().__init__(canceller)
        self.notice = notice


class EndSession(Exception):
    """Raised while relaying (by a stage's server_message, the relay's buffer budget or the
    proxy's tripwire) to end the session at once: the client gets a FATAL ErrorResponse
    with this SQLSTATE and message, nothing more of the session is forwarded either way."""

    def __init__(self, message: str, sqlstate: str = "42501", reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.reason = reason or message  # for the session_end record and the log


CLIENT_ORDER = ("policy", "review", "masking", "journal")
"""Stages that see client messages, first to last: the journal records what passed the
others (and what they refused, by ``denied``); masking reads the relation catalog a
statement's results need, after review so a held statement does not hold a stale one."""
SERVER_ORDER = ("masking", "journal")
"""Stages that see server messages, first to last: the journal records results as the
client receives them."""


class SessionStage(Protocol):
    """A stage's life for one session."""

    def client(self, msg: ClientMessage) -> Verdict | Deferred[Verdict]: ...

    def server(self, msg: ServerMessage) -> bytes | None: ...

    # Optional: ``server_rows(run: RowRun) -> bytes | None``. When every stage that takes DataRows
    # has it, consecutive DataRows come as one run (their framed bytes; a replacement is
    # framed bytes too) instead of one ``server`` call per row.

    def denied(self, msg: ClientMessage, deny: Deny) -> None:
        """Another stage refused this client message (it will not reach the server)."""

    def oversize(self, from_client: bool, mtype: int, length: int) -> None:
        """A message larger than STAGE_BODY_LIMIT streamed through without being buffered."""

    def close(self, reason: str) -> None:
        """The session ended; nothing more is called on this object."""


class Stage(Protocol):
    """One processing stage (journal, policy, masking, review): a factory of SessionStages."""

    name: str  # its place in CLIENT_ORDER / SERVER_ORDER
    client_types: frozenset[int]  # client message types it wants (hoopd.pgwire.types.FE)
    server_types: frozenset[int]  # server message types it wants (hoopd.pgwire.types.BE)
    rewrites: frozenset[int]  # of server_types, those whose body it may replace (buffered whole)

    def open(self, session: SessionInfo, conversation: Conversation) -> SessionStage | None:
        """The session's object; None: nothing to do in this session (the relay then frames
        nothing for this stage: a masking stage with no rule for the session costs nothing)."""


class Observer(Protocol):
    """Hears of sessions and denials only (the control plane's tracker, metrics)."""

    def session_started(self, session: SessionInfo) -> None: ...

    def session_ended(self, session: SessionInfo, reason: str) -> None: ...

    def message_denied(self, session: SessionInfo, msg: ClientMessage, deny: Deny) -> None: ...


STAGE_BODY_LIMIT = 1 << 20
"""Server messages larger than this stream through in chunks; stages hear of them by
``oversize`` only, except ErrorResponses and the types a stage rewrites, which are
buffered whole up to [gateway] max_rewrite_bytes (hoopd.proxy.relay). Client
messages a stage asked for are buffered whole (up to PostgreSQL's own 1 GiB cap) so
policy and journal see all of a statement."""
