"""Rules: ordered, first match wins; a rule matches when every match key it has matches.

Globs (``relations``, ``functions``, ``groups``, ``users``, ``applications``) use
fnmatch syntax, case-sensitively (PostgreSQL folds unquoted names to lower case, so
write patterns in lower case); ``users`` compares names and patterns by
hoopd.names.name_key (case, spaces and control characters do not count). A statement matches ``relations`` / ``functions`` when
any name it uses matches any pattern. The gateway cannot know the search_path, so an
unqualified name in the statement matches a qualified pattern on its last part alone
(``customer`` matches ``public.customer*``), and an unqualified pattern matches names in
any schema.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Iterable

from hoopd.names import name_key
from hoopd.policy.statement import StatementInfo

ACTIONS = ("allow", "deny", "review")


@dataclass(frozen=True)
class Context:
    """Who sends a statement, where."""

    connection: str
    level: str | None
    user: str | None = None
    groups: frozenset[str] = frozenset()
    application: str = ""


@dataclass(frozen=True)
class ReviewSettings:
    """How a ``review`` rule's statements are decided (hoopd.review)."""

    reviewers: tuple[str, ...]  # groups (globs) whose members may decide
    min_approvals: int = 1
    allow_self_approval: bool = False
    timeout: float = 900.0  # seconds a held statement waits before it is denied as expired
    in_transaction: str = "hold"  # hold | refuse: inside an open transaction (holding keeps its locks)
    break_glass: tuple[str, ...] = ()  # groups (globs) whose statements pass at once, flagged and alerted


@dataclass(frozen=True)
class Rule:
    name: str
    action: str  # allow | deny | review
    message: str = ""
    kinds: frozenset[str] | None = None
    relations: tuple[str, ...] | None = None
    functions: tuple[str, ...] | None = None
    levels: frozenset[str] | None = None
    groups: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None
    applications: tuple[str, ...] | None = None
    text_regex: re.Pattern[str] | None = None
    without_where: bool | None = None
    review: "ReviewSettings | None" = None  # action "review": who decides, how long a statement waits
    _globs: dict[str, "_Globs"] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for key in ("relations", "functions", "groups", "users", "applications"):
            patterns = getattr(self, key)
            if patterns is not None:
                if key == "users":  # user names compare by name_key, as everywhere
                    patterns = tuple(name_key(p) for p in patterns)
                self._globs[key] = _Globs(patterns, names=key in ("relations", "functions"))

    def matches(self, info: StatementInfo, ctx: Context) -> bool:
        if self.levels is not None and ctx.level not in self.levels:
            return False
        if self.kinds is not None and not (self.kinds & info.kinds):
            return False
        g = self._globs
        if "users" in g and not (ctx.user is not None and g["users"].any((name_key(ctx.user),))):
            return False
        if "groups" in g and not g["groups"].any(ctx.groups):
            return False
        if "applications" in g and not g["applications"].any((ctx.application,)):
            return False
        if "relations" in g and not g["relations"].any(info.relations):
            return False
        if "functions" in g and not g["functions"].any(info.functions):
            return False
        if self.without_where is not None and self.without_where != (info.has_where is False):
            return False
        return self.text_regex is None or self.text_regex.search(info.text) is not None


def first_match(rules: Iterable[Rule], info: StatementInfo, ctx: Context) -> Rule | None:
    for r in rules:
        if r.matches(info, ctx):
            return r
    return None


def _alternation(patterns: Iterable[str]) -> re.Pattern[str] | None:
    patterns = list(patterns)
    return re.compile("|".join(f"(?:{translate(p)})" for p in patterns)) if patterns else None


class _Globs:
    """Patterns compiled once. With ``names``, the relation/function rules of the module
    docstring: a qualified pattern also matches an unqualified name on its last part, an
    unqualified pattern matches the last part of any name."""

    __slots__ = ("whole", "last_part", "names")

    def __init__(self, patterns: Iterable[str], names: bool = False) -> None:
        patterns = list(patterns)
        self.names = names
        self.whole = _alternation(patterns)
        # names: patterns matched against the last part of a name (see above)
        self.last_part = _alternation(p.rpartition(".")[2] for p in patterns) if names else None

    def any(self, values: Iterable[str]) -> bool:
        for v in values:
            if self.whole is not None and self.whole.match(v):
                return True
            if self.names and self._by_last_part(v):
                return True
        return False

    def _by_last_part(self, name: str) -> bool:
        schema, _, bare = name.rpartition(".")
        assert self.whole is not None and self.last_part is not None
        if not schema:  # unqualified name: any pattern's last part
            return self.last_part.match(bare) is not None
        return self.whole.match(bare) is not None  # qualified name: unqualified patterns on its last part


def name_matches(name: str, pattern: str) -> bool:
    """A relation or function name as written against one pattern (see module docstring)."""
    return _Globs((pattern,), names=True).any((name,))
