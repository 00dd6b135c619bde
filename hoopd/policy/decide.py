"""Access levels, then rules: one Decision per statement.

Order: the access level decides first; a statement the level refuses is refused (rules
cannot widen a level). When the level allows it, the rules are tried in order, the
connection's own before the global ones, and the first that matches decides
(allow / deny / review). Statements whose effects cannot be seen (``DO``, ``CALL``,
EXECUTE of an unknown prepared statement) pass below admin only when a rule allows them.

Levels:

* ``read_only``: SELECT (no FOR UPDATE/SHARE), LOCK ... IN ACCESS SHARE MODE (pg_dump),
  COPY TO STDOUT, SHOW, SET/RESET of
  settings that are not privilege changes, transaction control (no READ WRITE), DISCARD,
  DEALLOCATE, CLOSE, DECLARE/FETCH, LISTEN/UNLISTEN, EXPLAIN, PREPARE/EXECUTE of the
  same; only functions and operators known to have no effect (hoopd.policy.functions),
  no writes.
* ``read_write``: plus INSERT, UPDATE, DELETE, MERGE, COPY FROM STDIN, any LOCK, row locks,
  NOTIFY, DDL that only creates temporary objects, sequences (nextval/setval), advisory
  locks, large objects, READ WRITE transactions; no other DDL, no DCL, no SET ROLE or
  SESSION AUTHORIZATION, no server files or programs, no admin-only functions, no
  FunctionCall messages.
* ``admin``: everything (still recorded).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

from hoopd.config import Config
from hoopd.levels import LEVEL_RANK, LEVELS
from hoopd.policy.catalog import side_effect_level
from hoopd.policy.statement import StatementInfo
from hoopd.policy.config import DEFAULT_UNPARSEABLE
from hoopd.policy.functions import EMPTY, UserFunctions, read_only_refusal
from hoopd.policy.rules import Context, ReviewSettings, Rule, first_match

READ_ONLY_KINDS = frozenset({
    "select", "copy_to", "show", "set", "transaction", "discard", "deallocate", "close",
    "declare", "fetch", "listen_notify", "explain", "prepare", "execute", "lock",
})
READ_WRITE_KINDS = READ_ONLY_KINDS | {"insert", "update", "delete", "merge", "copy_from"}
_ALLOWED_KINDS = {"read_only": READ_ONLY_KINDS, "read_write": READ_WRITE_KINDS}
_OPAQUE_KINDS = frozenset({"do", "call"})
_SETTING = {"role": "role", "session_authorization": "session_authorization",
            "read_write": "transaction_read_only", "unknown": "a computed setting name"}


def upstream_settings(level: str) -> dict[str, str]:
    """Settings the upstream session starts with for a level (for the startup ``options``).

    A read_only session runs with default_transaction_read_only=on: a second line of
    defence behind classification. The classifier refuses every way a read_only client
    could turn it off (SET / SET SESSION CHARACTERISTICS / SET TRANSACTION / BEGIN READ
    WRITE / set_config / RESET of it), and the proxy drops it from client ``options``."""
    return {"default_transaction_read_only": "on"} if level == "read_only" else {}


class Decision(NamedTuple):
    """The verdict on one statement."""

    allowed: bool
    action: str           # allow | deny | review
    rule: str | None      # the rule that decided; None when the access level did
    reason: str           # what decided, e.g. "insert", "rule no-drop", "level read_only"
    message: str          # the client's error message when not allowed ("" when allowed)
    statement: StatementInfo
    review: ReviewSettings | None = None  # action review: how it is decided (None: no reviewers, refused)

    def record(self) -> dict[str, Any]:
        """A JSON-friendly view for the journal (next to the statement)."""
        out: dict[str, Any] = {"action": self.action, "allowed": self.allowed, "reason": self.reason}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.message:
            out["message"] = self.message
        out["statement"] = self.statement.summary()
        return out


def level_denial(info: StatementInfo, level: str, functions: UserFunctions | None = EMPTY,
                 vetted: frozenset[str] = frozenset()) -> str | None:
    """Why ``level`` may not run ``info`` (a phrase for "does not allow ..."), or None.
    Opaque statements pass here; Policy.decide then wants a rule for them. ``functions``
    and ``vetted``: what read_only calls resolve to (see functions.read_only_refusal)."""
    if level == "admin":
        return None
    if level not in _ALLOWED_KINDS:
        return "any statement (unknown access level)"
    if info.privilege_change and not (level == "read_write" and info.privilege_change == "read_write"):
        if info.kind in ("set", "transaction"):
            return f"privilege changes ({info.command})"
        return f"privilege changes (set_config of {_SETTING[info.privilege_change]} inside {info.command})"
    if info.server_files:
        return f"server-side files or programs ({info.command})"
    if level == "read_only":
        why = read_only_refusal(info.calls, info.operators, functions, vetted, info.relations, info.types)
        if why is not None:
            return why
    for f in info.side_effect_functions:
        if side_effect_level(f.rpartition(".")[2].lower()) == "admin":
            return f"function {f}()"
    allowed = _ALLOWED_KINDS[level]
    kinds = info.kinds
    for k in (info.kind,) if len(kinds) == 1 else sorted(kinds, key=lambda k: (k != info.kind, k)):
        if k in allowed or k in _OPAQUE_KINDS or (k == "ddl" and level == "read_write" and info.temp_only):
            continue
        if k != info.kind:
            return f"{k} (inside {info.command})"
        return k if info.command.lower() == k else f"{k} ({info.command})"
    if level == "read_only" and not info.opaque:
        if info.locks and info.kind == "lock":
            return "LOCK stronger than ACCESS SHARE MODE"
        if info.locks:
            return "row locks (" + ("SELECT ... FOR UPDATE/SHARE)" if info.kind == "select"
                                    else f"FOR UPDATE/SHARE inside {info.command})")
        if info.writes:
            return f"writes ({info.command})"
    return None


@dataclass(frozen=True)
class _ConnPolicy:
    rules: tuple[Rule, ...]
    unparseable: str


class Policy:
    """Decides statements for sessions; built from the config (rebuild it on reload)."""

    def __init__(self, rules: Sequence[Rule] = (), unparseable: str = DEFAULT_UNPARSEABLE,
                 connections: Mapping[str, tuple[Sequence[Rule], str | None]] | None = None,
                 read_only_functions: frozenset[str] = frozenset()) -> None:
        self.read_only_functions = read_only_functions  # "schema.name" of volatile functions vetted
        self._global = _ConnPolicy(tuple(rules), unparseable)
        self._conns = {
            name: _ConnPolicy(tuple(crules) + self._global.rules, cunparseable or unparseable)
            for name, (crules, cunparseable) in (connections or {}).items()
        }

    @classmethod
    def from_config(cls, cfg: Config) -> "Policy":
        return cls(cfg.rules, cfg.unparseable,
                   {name: (c.rules, c.unparseable) for name, c in cfg.connections.items()},
                   cfg.functions.read_only_functions)

    def decide(self, info: StatementInfo, ctx: Context, functions: UserFunctions | None = EMPTY) -> Decision:
        """``functions``: the session database's own functions (None: not readable)."""
        cp = self._conns.get(ctx.connection, self._global)
        level = ctx.level
        if level not in LEVEL_RANK:
            return self._deny_level(info, ctx, "any statement (no access level)")
        needs_rule = False
        if info.kind == "unparseable":
            floor = cp.unparseable
            if floor == "none" or LEVEL_RANK[level] < LEVEL_RANK[floor]:
                return self._deny_level(info, ctx, f"statements the parser cannot parse ({info.error})")
        else:
            why = level_denial(info, level, functions, self.read_only_functions)
            if why is not None:
                return self._deny_level(info, ctx, why)
            needs_rule = info.opaque and level != "admin"
        rule = first_match(cp.rules, info, ctx)
        if rule is not None:
            return _by_rule(rule, info)
        if needs_rule:
            return self._deny_level(info, ctx, f"{info.kind} ({info.command}): its effects cannot be checked; "
                                               "a rule can allow it")
        return Decision(True, "allow", None, f"level {level}", "", info)

    def decide_all(self, infos: Sequence[StatementInfo], ctx: Context,
                   functions: UserFunctions | None = EMPTY) -> list[Decision]:
        return [self.decide(i, ctx, functions) for i in infos]

    @staticmethod
    def _deny_level(info: StatementInfo, ctx: Context, why: str) -> Decision:
        level = ctx.level if ctx.level in LEVELS else "no"
        msg = f'hoopd: {level} access to connection "{ctx.connection}" does not allow {why}'
        return Decision(False, "deny", None, why, msg, info)


def _by_rule(rule: Rule, info: StatementInfo) -> Decision:
    if rule.action == "allow":
        return Decision(True, "allow", rule.name, f"rule {rule.name}", "", info)
    tail = f": {rule.message}" if rule.message else ""
    if rule.action == "review":
        why = "" if rule.review is not None else ", and the rule names no reviewers"
        msg = f'hoopd: statement needs approval by rule "{rule.name}" ({info.command}){why}{tail}'
        return Decision(False, "review", rule.name, f"rule {rule.name}", msg, info, rule.review)
    else:
        msg = f'hoopd: statement denied by rule "{rule.name}" ({info.command}){tail}'
    return Decision(False, rule.action, rule.name, f"rule {rule.name}", msg, info)
